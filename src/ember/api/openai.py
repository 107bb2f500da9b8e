"""The OpenAI dialect (/v1/*): translates to and from the core request and events, nothing more.

ember's own options (num_ctx, top_k, repeat_penalty, keep_alive, preset, or a whole `options` object) may travel in
the request body, which Ollama's OpenAI routes do not allow.
"""

import asyncio
import base64
import json
import struct
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ember.api import common
from ember.core.durations import parse_keep_alive
from ember.core.errors import BadRequest
from ember.core.options import OPTION_NAMES, parse_options
from ember.core.types import Done, EmbedRequest, GenerateRequest, Message, Token, ToolCall
from ember.runtime.embedding import normalize

router = APIRouter(prefix="/v1")

FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "cancelled": "stop"}


class Body(BaseModel):
    # Unknown fields are kept so that ember options can ride along with the OpenAI ones.
    model_config = ConfigDict(extra="allow")

    model: common.ModelNameField
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    options: dict[str, Any] | None = None
    preset: str | None = None
    keep_alive: str | int | float | None = None

    def core_options(self):
        """OpenAI fields, then ember options in the body, then an `options` object: the later wins."""
        raw: dict[str, Any] = {}
        for field in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            if getattr(self, field) is not None:
                raw[field] = getattr(self, field)
        if self.max_completion_tokens or self.max_tokens:
            raw["num_predict"] = self.max_completion_tokens or self.max_tokens
        if self.stop is not None:
            raw["stop"] = self.stop
        raw.update({k: v for k, v in (self.model_extra or {}).items() if k in OPTION_NAMES})
        raw.update(self.options or {})
        return parse_options(raw)


class ChatBody(Body):
    messages: list[dict[str, Any]] = Field(min_length=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    collections: common.CollectionsField = None  # ember's: answer from these document collections (extra_body)


class CompletionBody(Body):
    prompt: str | list[str]
    suffix: str | None = None
    echo: bool = False


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: common.ModelNameField
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    keep_alive: str | int | float | None = None


def _format(response_format: dict[str, Any] | None) -> str | dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise BadRequest(f"response_format.type {kind!r} is not one of 'text', 'json_object', 'json_schema'")


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's text, and its images as base64 (from data: URLs: a remote image is never fetched)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise BadRequest(f"{where}: content must be a string or a list of text and image_url parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(_data_url(url, f"{where}.content[{j}].image_url"))
        else:
            raise BadRequest(f"{where}: content part of type {kind!r} is not supported (only 'text' and 'image_url')")
    return "".join(texts), images


def _data_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url.startswith("data:"):
        shown = url[:60] if isinstance(url, str) else repr(url)
        raise BadRequest(f"{where}: {shown!r} is not a data: URL; ember never fetches an image from the network: "
                         "send it inline as data:image/png;base64,…")
    head, _, payload = url.partition(",")
    if not head.endswith(";base64") or not payload:
        raise BadRequest(f"{where}: the data: URL must be base64 (data:image/png;base64,…)")
    return payload


def _message(raw: dict[str, Any], i: int) -> Message:
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise BadRequest(f"messages[{i}].role must be one of system, developer, user, assistant, tool (got {role!r})")
    calls = []
    for call in raw.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            raise BadRequest(f"messages[{i}].tool_calls: arguments are not valid JSON") from None
        calls.append(ToolCall(fn.get("name", ""), args, call.get("id", "")))
    text, images = _content(raw.get("content"), f"messages[{i}]")
    return Message(role, text, tool_calls=calls, tool_name=raw.get("name") or raw.get("tool_call_id"), images=images)


def _usage(done: Done) -> dict[str, Any]:
    usage = {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
             "total_tokens": done.prompt_tokens + done.completion_tokens,
             "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}
    return usage


def _truncation(done: Done) -> dict[str, Any]:
    if not done.truncated:
        return {}
    return {"truncated": True, "truncated_messages": done.truncated_messages, "truncated_tokens": done.truncated_tokens}


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in calls]


def _extras(done: Done) -> dict[str, Any]:
    """ember's fields of an answer: the sources it cites ([1] is citations[0]) and how its images were read; in
    the last chunk, or the body."""
    out = {} if done.citations is None else {"citations": done.citations}
    if done.images_read_by_ocr:
        out["image_input"] = done.image_input
    return out


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _core(body: Body, **fields) -> GenerateRequest:
    return GenerateRequest(model=body.model, options=body.core_options(), preset=body.preset,
                           keep_alive=parse_keep_alive(body.keep_alive), stream=body.stream, **fields)


@router.post("/chat/completions", responses=common.SSE_OK)
async def chat_completions(body: ChatBody, request: Request):
    if body.tool_choice not in (None, "auto", "none", "required") and not isinstance(body.tool_choice, dict):
        raise BadRequest("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {...}}")
    core = _core(body, messages=[_message(m, i) for i, m in enumerate(body.messages)],
                 format=_format(body.response_format), tools=body.tools or None, tool_choice=body.tool_choice,
                 collections=common.collection_names(body.collections))
    first, events = await common.start(common.runtime(request).generate(core), request)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model,
            "system_fingerprint": "fp_ember"}

    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        started = [False]

        def render(event) -> list[str]:
            delta: dict[str, Any] = {}
            if not started[0]:
                delta["role"] = "assistant"
                started[0] = True
            if isinstance(event, Token):
                delta["content"] = event.text
                return [_sse({**head, "object": "chat.completion.chunk",
                              "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})]
            if event.tool_calls:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(_tool_calls(event.tool_calls))]
            chunks = [_sse({**head, "object": "chat.completion.chunk", **_truncation(event), **_extras(event),
                            "choices": [{"index": 0, "delta": delta, "finish_reason": FINISH[event.reason]}]})]
            if include_usage:
                chunks.append(_sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(event)}))
            return chunks

        return common.stream(first, events, render, "text/event-stream", tail=lambda: ["data: [DONE]\n\n"])

    done = (await common.collect(first, events, request))[-1]
    message: dict[str, Any] = {"role": "assistant", "content": done.text or (None if done.tool_calls else "")}
    if done.tool_calls:
        message["tool_calls"] = _tool_calls(done.tool_calls)
    return {**head, "object": "chat.completion", **_truncation(done), **_extras(done),
            "choices": [{"index": 0, "message": message, "finish_reason": FINISH[done.reason], "logprobs": None}],
            "usage": _usage(done)}


@router.post("/completions", responses=common.SSE_OK)
async def completions(body: CompletionBody, request: Request):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise BadRequest("prompt: ember completes one prompt per request (send a string or a list of one)")
    if body.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported yet")
    core = _core(body, prompt=prompts[0], raw=True)
    first, events = await common.start(common.runtime(request).generate(core), request)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": "fp_ember"}
    echo = prompts[0] if body.echo else ""

    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def render(event) -> list[str]:
            if isinstance(event, Token):
                return [_sse({**head, "choices": [{"index": 0, "text": event.text, "finish_reason": None,
                                                   "logprobs": None}]})]
            chunks = [_sse({**head, "choices": [{"index": 0, "text": "", "finish_reason": FINISH[event.reason],
                                                 "logprobs": None}]})]
            if include_usage:
                chunks.append(_sse({**head, "choices": [], "usage": _usage(event)}))
            return chunks

        return common.stream(first, events, render, "text/event-stream", tail=lambda: ["data: [DONE]\n\n"])

    done = (await common.collect(first, events, request))[-1]
    return {**head, **_truncation(done), "usage": _usage(done),
            "choices": [{"index": 0, "text": echo + done.text, "finish_reason": FINISH[done.reason], "logprobs": None}]}


@router.post("/embeddings")
async def embeddings(body: EmbeddingsBody, request: Request):
    inputs = [body.input] if isinstance(body.input, str) else body.input
    result = await common.unless_gone(request, common.runtime(request).embed(EmbedRequest(
        model=body.model, inputs=inputs, keep_alive=parse_keep_alive(body.keep_alive))))
    vectors = result.vectors
    if body.dimensions:
        if body.dimensions > len(vectors[0] if vectors else []):
            raise BadRequest(f"dimensions {body.dimensions} is more than the model gives ({len(vectors[0])})")
        vectors = [normalize(v[: body.dimensions]) for v in vectors]  # Matryoshka-style, as OpenAI's `dimensions`

    def encode(v: list[float]):
        if body.encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v

    return {"object": "list", "model": body.model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}


def _model_entry(name: str, modified) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(modified.timestamp()), "owned_by": "ember"}


@router.get("/models")
async def list_models(request: Request):
    models = await asyncio.to_thread(common.store(request).list)
    return {"object": "list", "data": [_model_entry(m.name, m.modified_at) for m in models]}


@router.get("/models/{name:path}")
async def get_model(name: common.ModelNameField, request: Request):
    model = await asyncio.to_thread(common.store(request).get, name)
    return _model_entry(model.name, model.modified_at)
