"""The Ollama dialect (/api/*): translates to and from the core request and events, nothing more."""

import asyncio
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ember import __version__
from ember.api import common
from ember.api.jobs import job_response
from ember.config import Settings
from ember.core.durations import parse_keep_alive
from ember.core.errors import BadRequest, TooLarge
from ember.core.options import parse_options
from ember.core.types import Done, EmbedRequest, GenerateRequest, Message, Token, ToolCall
from ember.engines import registry
from ember.engines.base import Role
from ember.runtime.jobs import Job
from ember.store.blobs import BlobWriter, normalize_digest
from ember.store.modelfile import CreateSpec
from ember.store.store import details

router = APIRouter()

KeepAlive = str | int | float | None


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateBody(Body):
    model: common.ModelNameField
    prompt: str | None = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    images: list[str] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    preset: str | None = None
    stream: bool = True
    raw: bool = False
    keep_alive: KeepAlive = None
    context: list[int] | None = None
    collections: common.CollectionsField = None


class ToolFunction(Body):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(Body):
    function: ToolFunction


class ChatMessage(Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None


class ChatBody(Body):
    model: common.ModelNameField
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    preset: str | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    collections: common.CollectionsField = None


class EmbedBody(Body):
    model: common.ModelNameField
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class LegacyEmbedBody(Body):
    model: common.ModelNameField
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class NameBody(Body):
    model: common.OptionalModelName = None
    name: common.OptionalModelName = None  # older clients send `name`

    @property
    def target(self) -> str:
        if not (self.model or self.name):
            raise BadRequest("'model' is required")
        return self.model or self.name


class ShowBody(NameBody):
    verbose: bool = False


class CopyBody(Body):
    source: common.ModelNameField
    destination: common.ModelNameField


class PullBody(NameBody):
    stream: bool = True
    insecure: bool = False


class CreateBody(NameBody):
    from_: str | None = Field(None, alias="from")
    modelfile: str | None = None
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[ChatMessage] | None = None
    quantize: str | None = None
    # ember's own, with quantize: measure what it cost (False: faster, no report); quantize a quantized model
    report: bool = True
    allow_requantize: bool = False
    stream: bool = True


# -- inference -------------------------------------------------------------------------------------------------------


def _timings(done: Done) -> dict[str, Any]:
    out = {
        "done_reason": done.reason, "total_duration": done.total_ns, "load_duration": done.load_ns,
        "prompt_eval_count": done.prompt_tokens, "prompt_eval_duration": done.prompt_ns,
        "eval_count": done.completion_tokens, "eval_duration": done.eval_ns,
    }
    if done.truncated:
        out.update(truncated=True, truncated_messages=done.truncated_messages, truncated_tokens=done.truncated_tokens)
    if done.citations is not None:
        out["citations"] = done.citations
    if done.images_read_by_ocr:
        out["image_input"] = done.image_input
    return out


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]


async def _load_only(request: Request, model: str, options, keep_alive, key: str, empty: Any):
    """An empty prompt loads the model (or, with keep_alive 0, unloads it), as Ollama does."""
    runtime = common.runtime(request)
    if keep_alive == 0:
        await runtime.unload(model)
        reason = "unload"
    else:
        await runtime.load(model, options, keep_alive)
        reason = "load"
    return {"model": model, "created_at": common.iso(), key: empty, "done": True, "done_reason": reason}


@router.post("/api/generate", responses=common.NDJSON_OK)
async def generate(body: GenerateBody, request: Request):
    if body.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported yet; send the text before it as the prompt")
    options = parse_options(body.options)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.prompt and not body.system:
        return await _load_only(request, body.model, options, keep_alive, "response", "")
    core = GenerateRequest(model=body.model, prompt=body.prompt, system=body.system, template=body.template,
                           raw=body.raw, options=options, preset=body.preset, format=body.format or None,
                           keep_alive=keep_alive, stream=body.stream, context=body.context,
                           collections=common.collection_names(body.collections), images=body.images or [])
    first, events = await common.start(common.runtime(request).generate(core), request)

    def chunk(event) -> dict[str, Any]:
        head = {"model": body.model, "created_at": common.iso()}
        if isinstance(event, Token):
            return {**head, "response": event.text, "done": False}
        done = {**head, "response": "", "done": True, **_timings(event)}
        return done if event.context is None else {**done, "context": event.context}

    if body.stream:
        return common.stream(first, events, lambda e: [common.ndjson(chunk(e))], "application/x-ndjson")
    collected = await common.collect(first, events, request)
    done = collected[-1]
    return {**chunk(done), "response": done.text}


def _message(m: ChatMessage) -> Message:
    calls = [ToolCall(c.function.name, c.function.arguments) for c in m.tool_calls or []]
    return Message(m.role, m.content or "", tool_calls=calls, tool_name=m.tool_name, images=m.images or [])


@router.post("/api/chat", responses=common.NDJSON_OK)
async def chat(body: ChatBody, request: Request):
    options = parse_options(body.options)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.messages:
        return await _load_only(request, body.model, options, keep_alive, "message",
                                {"role": "assistant", "content": ""})
    core = GenerateRequest(model=body.model, messages=[_message(m) for m in body.messages],
                           tools=body.tools or None, options=options, preset=body.preset, format=body.format or None,
                           keep_alive=keep_alive, stream=body.stream,
                           collections=common.collection_names(body.collections))
    first, events = await common.start(common.runtime(request).generate(core), request)

    def chunk(event) -> dict[str, Any]:
        head = {"model": body.model, "created_at": common.iso()}
        if isinstance(event, Token):
            return {**head, "message": {"role": "assistant", "content": event.text}, "done": False}
        message = {"role": "assistant", "content": ""}
        if event.tool_calls:
            message["tool_calls"] = _tool_calls(event.tool_calls)
        return {**head, "message": message, "done": True, **_timings(event)}

    if body.stream:
        return common.stream(first, events, lambda e: [common.ndjson(chunk(e))], "application/x-ndjson")
    collected = await common.collect(first, events, request)
    done = collected[-1]
    final = chunk(done)
    final["message"]["content"] = done.text
    return final


@router.post("/api/embed")
async def embed(body: EmbedBody, request: Request):
    inputs = [body.input] if isinstance(body.input, str) else body.input
    result = await common.unless_gone(request, common.runtime(request).embed(EmbedRequest(
        model=body.model, inputs=inputs, options=parse_options(body.options),
        keep_alive=parse_keep_alive(body.keep_alive), truncate=body.truncate)))
    return {"model": body.model, "embeddings": result.vectors, "total_duration": result.total_ns,
            "load_duration": result.load_ns, "prompt_eval_count": result.prompt_tokens}


@router.post("/api/embeddings")
async def embeddings(body: LegacyEmbedBody, request: Request):
    """The legacy route: one prompt, vector not normalised (as Ollama's)."""
    result = await common.unless_gone(request, common.runtime(request).embed(EmbedRequest(
        model=body.model, inputs=[body.prompt], options=parse_options(body.options),
        keep_alive=parse_keep_alive(body.keep_alive), normalize=False)))
    return {"embedding": result.vectors[0]}


# -- models ----------------------------------------------------------------------------------------------------------


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def root():
    # Tools that probe for a local Ollama look for exactly this text.
    return "Ollama is running"


@router.get("/api/version")
async def version():
    return {"version": __version__}


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request):
    models = await asyncio.to_thread(common.store(request).list)
    return {"models": [{"name": m.name, "model": m.name, "modified_at": common.iso(m.modified_at), "size": m.size,
                        "digest": m.digest, "details": details(m)} for m in models]}


def _expires(at: float) -> str:
    return "forever" if at == math.inf else common.iso_time(at)


@router.get("/api/ps")
async def ps(request: Request):
    """One entry per loaded model (as Ollama lists them); a model loaded both to generate and to embed holds two
    engines, listed under `engines` with what each is for."""
    by_model: dict[str, list] = {}
    for loaded in common.runtime(request).loaded():
        by_model.setdefault(loaded.model.digest, []).append(loaded)
    out = []
    for engines in by_model.values():
        engines.sort(key=lambda e: e.spec.role is not Role.GENERATE)  # the generating engine first: its context
        m, statuses = engines[0].model, [e.status() for e in engines]
        size = sum(s.memory_bytes for s in statuses)
        out.append({
            "name": m.name, "model": m.name, "size": size, "digest": m.digest, "details": details(m),
            "size_vram": sum(s.memory_bytes for s in statuses if s.device != "cpu"),
            "context_length": statuses[0].context, "expires_at": _expires(max(e.expires_at for e in engines)),
            # ember's own: what it is loaded for, and each engine's size and load
            "loaded_for": [str(e.spec.role) for e in engines],
            "active_requests": sum(e.active for e in engines), "slots": sum(s.slots for s in statuses),
            "slots_busy": sum(s.busy_slots for s in statuses), "threads": statuses[0].threads,
            "device": statuses[0].device,
            "engines": [{"for": str(e.spec.role), "size": s.memory_bytes, "context_length": s.context,
                         "slots": s.slots, "slots_busy": s.busy_slots, "active_requests": e.active,
                         "threads": s.threads, "device": s.device, "runner": s.runner,
                         "expires_at": _expires(e.expires_at)}
                        for e, s in zip(engines, statuses)],
        })
    return {"models": out}


@router.post("/api/push")
async def push(body: PullBody, request: Request):
    """Ollama's push uploads to a registry; ember has none, so it says how to move a model instead."""
    name = body.target
    await asyncio.to_thread(common.store(request).get, name)  # an unknown model is a 404 that names it
    raise BadRequest(f"ember has no registry to push {name} to. To move it to another machine: `ember export {name} "
                     "DIR` writes its GGUF and a Modelfile; copy DIR there and run `ember create NAME -f "
                     "DIR/Modelfile`")


@router.post("/api/show")
async def show(body: ShowBody, request: Request):
    store = common.store(request)
    return await asyncio.to_thread(lambda: registry.show(store.get(body.target)))


@router.post("/api/copy")
async def copy(body: CopyBody, request: Request):
    await asyncio.to_thread(common.store(request).copy, body.source, body.destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(body: NameBody, request: Request):
    name, runtime = body.target, common.runtime(request)
    if await asyncio.to_thread(runtime.store.exists, name):
        await runtime.unload(name)
    await asyncio.to_thread(runtime.store.delete, name)
    return Response(status_code=200)


def _progress(progress) -> dict[str, Any]:
    """A job's progress as Ollama's pull and create stream it."""
    out: dict[str, Any] = {"status": progress.status}
    if progress.item:
        out["digest"] = progress.item
    if progress.total is not None:
        out.update(total=progress.total, completed=progress.completed or 0)
    return out


@router.post("/api/pull", responses=common.NDJSON_OK)
async def pull(body: PullBody, request: Request):
    name, store = body.target, common.store(request)
    job = Job("pull", f"pull {name}", lambda report: store.pull(name, report))
    return await job_response(request, job, _progress, body.stream)


@router.post("/api/create", responses=common.NDJSON_OK)
async def create(body: CreateBody, request: Request):
    name, store = body.target, common.store(request)
    if body.quantize:
        return await _create_quantized(body, request)
    if body.modelfile is not None:
        text = body.modelfile
        job = Job("create", f"create {name}",
                  lambda report: store.create_from_modelfile(name, text, Path.cwd(), report))
    else:
        spec = _create_spec(body)
        job = Job("create", f"create {name}", lambda report: store.create(name, spec, report))
    return await job_response(request, job, _progress, body.stream)


async def _create_quantized(body: CreateBody, request: Request):
    """As Ollama: the FROM model's weights quantized, streamed as "quantizing F16 model to Q4_K_M", …; ember adds a
    quality report (perplexity, KL divergence, top-token agreement on held-out text) as the status before success."""
    from ember.quantize.create import QuantizeJob, run
    from ember.store.modelfile import parse_modelfile

    name, store = body.target, common.store(request)
    spec = parse_modelfile(body.modelfile, Path.cwd()) if body.modelfile is not None else _create_spec(body)
    job = QuantizeJob(name=name, spec=spec, type=body.quantize, report=body.report,
                      allow_requantize=body.allow_requantize,
                      reports_dir=common.runtime(request).settings.home / "quantize")
    work = Job("create", f"create {name} ({body.quantize})", lambda report: run(store, job, report))
    return await job_response(request, work, _progress, body.stream)


def _create_spec(body: CreateBody) -> CreateSpec:
    files = list((body.files or {}).values())
    if len(files) > 1:
        raise BadRequest("files: ember takes one GGUF file per model (sharded GGUF is not supported yet)")
    source = files[0] if files else body.from_
    if not source:
        raise BadRequest("either 'from' (a model name) or 'files' (a GGUF blob digest) is required")
    license = "\n\n".join(body.license) if isinstance(body.license, list) else body.license
    params = dict(body.parameters or {})
    if "stop" in params and isinstance(params["stop"], str):
        params["stop"] = [params["stop"]]
    return CreateSpec(
        from_=source, parameters=params, template=body.template, system=body.system, license=license,
        adapters=list((body.adapters or {}).values()),
        messages=[Message(m.role, m.content or "") for m in body.messages or []],
    )


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: common.DigestField, request: Request):
    found = common.store(request).blobs.has(normalize_digest(digest))
    return Response(status_code=200 if found else 404, media_type="application/json")


@dataclass
class UploadLimit:
    bytes: int
    message: str


# Left free on the disk after an upload, so that the store can still write manifests and the system keeps working.
DISK_RESERVE = 256 * 1024 * 1024


def upload_limit(settings: Settings, folder: Path, declared: str | None) -> UploadLimit:
    """The most an upload may hold: EMBER_MAX_UPLOAD_BYTES, and what the disk has free; a Content-Length above it is
    refused before a byte is written."""
    room = max(shutil.disk_usage(folder).free - DISK_RESERVE, 0)
    if settings.max_upload_bytes and settings.max_upload_bytes <= room:
        limit = UploadLimit(settings.max_upload_bytes, f"the upload is larger than this server's limit of "
                            f"{settings.max_upload_bytes} bytes (EMBER_MAX_UPLOAD_BYTES)")
    else:
        limit = UploadLimit(room, f"the upload does not fit on the disk: {room} bytes are free for it; free some "
                            "space (`ember rm` removes models) or put the models elsewhere (EMBER_MODELS)")
    if declared and declared.isdigit() and int(declared) > limit.bytes:
        raise TooLarge(f"{limit.message} (the upload declares {declared} bytes)")
    return limit


@router.post("/api/blobs/{digest}", status_code=201)
async def blob_upload(digest: common.DigestField, request: Request):
    expected = normalize_digest(digest)
    blobs = common.store(request).blobs
    if blobs.has(expected):
        return Response(status_code=200)
    # Hashed as it arrives and written once; stored under its digest (fsync and rename off the event loop) only if
    # it matches.
    limit = upload_limit(common.runtime(request).settings, blobs.root, request.headers.get("content-length"))
    blob = BlobWriter(blobs, expected)
    try:
        async for chunk in request.stream():
            blob.write(chunk)
            if blob.size > limit.bytes:
                raise TooLarge(limit.message)
        await asyncio.to_thread(blob.finish)
    finally:
        blob.close()
    return Response(status_code=201)
