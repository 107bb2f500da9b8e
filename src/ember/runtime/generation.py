"""One generation, start to finish, on a loaded runner: prompt, context policy, grammar, decode, stop strings.

Runs on the runner's worker thread and hands events to `emit`; knows nothing of HTTP.
"""

import json
import time
from typing import Any, Callable

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from ember.core import templates
from ember.core.context import Fitted, answer_reserve, fit_messages, too_long
from ember.core.errors import BadRequest
from ember.core.options import Options
from ember.core.textstream import TextStream
from ember.core.tools import forced_call_schema, parse_tool_calls, tool_names
from ember.core.types import Done, Event, GenerateRequest, Message, Token
from ember.engines.base import Runner, Sampling
from ember.store.store import Model


def chat_template(model: Model, request: GenerateRequest) -> str:
    return request.template or model.template or model.info.chat_template or templates.CHATML


def conversation(model: Model, request: GenerateRequest) -> list[Message]:
    """The messages the template sees: a system prompt, the Modelfile's MESSAGEs, then the request's own."""
    if request.is_chat:
        messages = list(request.messages)
    else:
        messages = [Message("user", request.prompt or "")]
    has_system = any(m.role == "system" for m in messages)
    system = request.system or (None if has_system else model.system)
    head = ([Message("system", system)] if system else []) + list(model.messages)
    return head + messages


def build_prompt(runner: Runner, model: Model, request: GenerateRequest, options: Options) -> Fitted:
    reserve = answer_reserve(runner.n_ctx, options.num_predict)
    budget = runner.n_ctx - reserve

    def refuse(n: int) -> BadRequest:
        return too_long(n, runner.n_ctx, reserve, runner.n_ctx_train)

    if request.raw and not request.is_chat:
        tokens = runner.tokenize(request.prompt or "")
        if len(tokens) > budget:
            raise refuse(len(tokens))
        return Fitted(tokens)
    source = chat_template(model, request)
    if request.tools and not templates.supports_tools(source):
        raise BadRequest(f"{model.name} does not support tools: its chat template has no place for them")
    info = model.info

    def encode(messages: list[Message]) -> list[int]:
        text = templates.render(source, [m.for_template() for m in messages], tools=request.tools,
                                bos_token=info.bos_token or "", eos_token=info.eos_token or "")
        return runner.tokenize(text)

    return fit_messages(conversation(model, request), encode, budget, refuse)


def grammar_for(request: GenerateRequest) -> str | None:
    """GBNF that enforces the requested output shape; the model cannot produce anything else."""
    choice = request.tool_choice
    if request.tools and (choice == "required" or isinstance(choice, dict)):
        only = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        return _schema_grammar(forced_call_schema(request.tools, only))
    fmt = request.format
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return JSON_GBNF
    if isinstance(fmt, dict):
        return _schema_grammar(fmt)
    raise BadRequest(f"invalid format {fmt!r}: use \"json\" or a JSON schema object")


def _schema_grammar(schema: dict[str, Any]) -> str:
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises bare exceptions of several kinds for unsupported schemas
        raise BadRequest(f"invalid or unsupported JSON schema in format: {e}") from None


def run(runner: Runner, model: Model, request: GenerateRequest, options: Options, sampling: Sampling,
        emit: Callable[[Event], None], load_ns: int = 0) -> Done:
    started = time.perf_counter_ns()
    prompt = build_prompt(runner, model, request, options)
    sampling.grammar = grammar_for(request)
    room = runner.n_ctx - len(prompt.tokens)
    sampling.max_tokens = min(options.num_predict, room) if options.num_predict > 0 else room
    cached = runner.cached_prefix(prompt.tokens)
    # With tools the answer is held until it is complete: only then can a tool call be told from prose.
    hold = bool(request.tools) and request.tool_choice != "none"
    stream = TextStream(options.stop or [])
    count, first_token_ns = 0, None
    for token in runner.generate(prompt.tokens, sampling):
        if first_token_ns is None:
            first_token_ns = time.perf_counter_ns()
        count += 1
        text = stream.feed(runner.token_bytes(token))
        if text and not hold:
            emit(Token(text))
        if stream.stopped:
            break
    tail = stream.finish()
    if tail and not hold:
        emit(Token(tail))
    end = time.perf_counter_ns()
    first_token_ns = first_token_ns or end
    if sampling.cancel.is_set():
        reason = "cancelled"
    elif not stream.stopped and count >= sampling.max_tokens:
        reason = "length"
    else:
        reason = "stop"
    content, calls = stream.text, []
    if hold:
        content, calls = parse_tool_calls(stream.text, request.tools)
        if content:
            emit(Token(content))
        if calls:
            reason = "tool_calls"
    return Done(
        reason=reason, text=content, tool_calls=calls, prompt_tokens=len(prompt.tokens),
        completion_tokens=count, cached_tokens=cached, load_ns=load_ns,
        prompt_ns=first_token_ns - started, eval_ns=end - first_token_ns, total_ns=end - started + load_ns,
        truncated_messages=prompt.dropped_messages, truncated_tokens=prompt.dropped_tokens,
    )


def check_tools(request: GenerateRequest) -> None:
    if request.tools:
        tool_names(request.tools)
