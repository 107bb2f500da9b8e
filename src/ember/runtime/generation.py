"""One generation, start to finish: prompt, context policy, grammar, then the tokens turned into text and events.

Knows nothing of HTTP: `generate` yields events for one request, on a generator engine the scheduler holds for it.
"""

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from ember.config import Settings
from ember.core import templates
from ember.core import tools as toolkit
from ember.core.context import Fitted, answer_reserve, fit_after, fit_messages, too_long
from ember.core.errors import BadRequest, EmberError
from ember.core.options import Options
from ember.core.textstream import TextStream
from ember.core.tools import forced_call_schema, parse_tool_calls, tool_names
from ember.core.types import Done, Event, GenerateRequest, Message, Token
from ember.engines.base import Generator, Role
from ember.runtime.plan import plan
from ember.runtime.scheduler import Scheduler
from ember.store.store import Model, ModelStore

log = logging.getLogger("ember.generation")


def chat_template(model: Model, request: GenerateRequest) -> str:
    return request.template or model.chat_template or templates.CHATML


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


def render_chat(model: Model, request: GenerateRequest, messages: list[dict[str, Any]],
                tools: list[dict[str, Any]] | None = None) -> str:
    """Messages through the request's chat template, with the model's own BOS and EOS text."""
    info = model.info
    return templates.render(chat_template(model, request), messages, tools=tools, bos_token=info.bos_token or "",
                            eos_token=info.eos_token or "")


def build_prompt(engine: Generator, model: Model, request: GenerateRequest, options: Options) -> Fitted:
    reserve = answer_reserve(engine.n_ctx, options.num_predict)
    budget = engine.n_ctx - reserve

    def refuse(n: int) -> BadRequest:
        return too_long(n, engine.n_ctx, reserve, engine.n_ctx_train)

    context = checked_context(engine, request.context)
    if request.raw and not request.is_chat:
        tokens = engine.tokenize(request.prompt or "")
        if context:
            return after_context(engine, context, tokens, budget, refuse)
        if len(tokens) > budget:
            raise refuse(len(tokens))
        return Fitted(tokens)
    generic = generic_tools(model, request)

    def render(messages: list[Message]) -> str:
        tools = request.tools
        if generic:  # the template cannot show tools: ember's own instructions, and calls as plain turns
            messages = toolkit.plain_history(messages)
            if request.tool_choice != "none":
                messages = toolkit.with_instructions(messages, toolkit.describe_tools(tools))
            tools = None
        return render_chat(model, request, [m.for_template() for m in messages], tools)

    if context:
        return after_context(engine, context, engine.tokenize(next_turn(render, request.prompt or "")), budget, refuse)
    return fit_messages(conversation(model, request), lambda messages: engine.tokenize(render(messages)), budget,
                        refuse)


def generic_tools(model: Model, request: GenerateRequest) -> bool:
    """Whether this request's tools go through ember's generic form: its template has no place for them."""
    return bool(request.tools) and not templates.renders_tools(chat_template(model, request))


def checked_context(engine: Generator, context: list[int] | None) -> list[int]:
    bad = [t for t in context or [] if not 0 <= t < engine.n_vocab]
    if bad:
        raise BadRequest(f"context holds {len(bad)} token ids outside this model's vocabulary (0 to "
                         f"{engine.n_vocab - 1}), e.g. {bad[0]}: send back the context that this model's last "
                         "/api/generate reply returned, or none to start over")
    return list(context or [])


def after_context(engine: Generator, context: list[int], tokens: list[int], budget: int, refuse) -> Fitted:
    bos = engine.tokenize("")  # [BOS] when this model's tokenizer starts every text with one
    if bos and tokens[:1] == bos:
        tokens = tokens[1:]
    return fit_after(context, tokens, budget, refuse, pinned=int(bool(bos) and context[:1] == bos))


# A `context` already holds the system prompt and the earlier turns, so only the text that follows an answer when the
# user speaks again is added: cut from a rendered exchange just after the answer. A template that does not keep the
# answer verbatim gets the new turn rendered alone. (Ollama renders the whole template again after the context,
# system prompt included, every turn.)
_ANSWER_MARK = "ember-answer-mark"


def next_turn(render: Callable[[list[Message]], str], prompt: str) -> str:
    text = render([Message("user", "?"), Message("assistant", _ANSWER_MARK), Message("user", prompt)])
    at = text.find(_ANSWER_MARK)
    return text[at + len(_ANSWER_MARK):] if at >= 0 else render([Message("user", prompt)])


def grammar_for(request: GenerateRequest, generic: bool = False) -> str | None:
    """GBNF that enforces the requested output shape; the model cannot produce anything else."""
    choice = request.tool_choice
    if request.tools and (choice == "required" or isinstance(choice, dict)):
        only = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        call = _schema_grammar(forced_call_schema(request.tools, only))
        return toolkit.tagged_call_grammar(call) if generic else call
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


@dataclass
class Failed:
    error: BaseException


class Generation:
    """One request's generation as an engine sequence: holds its prompt and turns its tokens into events.

    Built (template, context policy, grammar) on a worker thread, then driven by the engine's decode thread.
    """

    def __init__(self, engine: Generator, model: Model, request: GenerateRequest, options: Options,
                 emit: Callable[[Event | Failed], None], load_ns: int = 0, max_prompt_tokens: int = 0):
        self.created_ns = time.perf_counter_ns() - load_ns
        self.engine, self.request, self.emit, self.load_ns = engine, request, emit, load_ns
        self.model_name = model.name
        self.options = options
        self.prompt = build_prompt(engine, model, request, options)
        self.tokens = self.prompt.tokens
        if max_prompt_tokens and len(self.tokens) > max_prompt_tokens:
            raise BadRequest(f"the prompt is {len(self.tokens)} tokens, more than this server's limit of "
                             f"{max_prompt_tokens} (EMBER_MAX_PROMPT_TOKENS); shorten it or raise the limit")
        generic = generic_tools(model, request)
        self.grammar = grammar_for(request, generic)
        self.calls_only = generic and self.grammar is not None  # a forced call in ember's generic form
        room = engine.n_ctx - len(self.tokens)
        self.max_tokens = min(options.num_predict, room) if options.num_predict > 0 else room
        self.cancel = threading.Event()
        # With tools the answer is held until it is complete: only then can a tool call be told from prose.
        self.hold = bool(request.tools) and request.tool_choice != "none"
        self.stream = TextStream(options.stop or [])
        self.cached = 0
        self.answer: list[int] = []  # the tokens sampled so far
        self.started_ns = self.first_token_ns = 0

    def started(self, cached: int) -> None:
        self.cached = cached
        self.started_ns = time.perf_counter_ns()

    def token(self, token: int) -> bool:
        if not self.answer:
            self.first_token_ns = time.perf_counter_ns()
        self.answer.append(token)
        text = self.stream.feed(self.engine.token_bytes(token))
        if text and not self.hold:
            self.emit(Token(text))
        if self.calls_only and text and toolkit.repeats_a_call(self.stream.text):
            return False
        return not self.stream.stopped

    def ended(self, reason: str, error: BaseException | None = None) -> None:
        if reason == "error":
            self.emit(Failed(error))
            return
        tail = self.stream.finish()
        if tail and not self.hold:
            self.emit(Token(tail))
        end = time.perf_counter_ns()
        first = self.first_token_ns or end
        content, calls = self.stream.text, []
        if self.hold:
            content, calls = parse_tool_calls(self.stream.text, self.request.tools)
            if self.calls_only:  # nothing but calls was admitted: what is left is a call cut off by the token limit
                content = ""
            if content:
                self.emit(Token(content))
            if calls:
                reason = "tool_calls"
        done = Done(
            reason=reason, text=content, tool_calls=calls, prompt_tokens=len(self.tokens),
            completion_tokens=len(self.answer), cached_tokens=self.cached, load_ns=self.load_ns,
            prompt_ns=first - (self.started_ns or first), eval_ns=end - first, total_ns=end - self.created_ns,
            truncated_messages=self.prompt.dropped_messages, truncated_tokens=self.prompt.dropped_tokens,
            context=None if self.request.is_chat or self.request.raw else self.tokens + self.answer,
        )
        log.info("%s: reason=%s prompt=%d (cached %d) answer=%d tokens, %.1f tok/s%s", self.model_name, done.reason,
                 done.prompt_tokens, done.cached_tokens, done.completion_tokens,
                 done.completion_tokens / max(done.eval_ns / 1e9, 1e-9),
                 f", dropped {done.truncated_messages} messages, {done.truncated_tokens} tokens"
                 if done.truncated else "")
        self.emit(done)


class ToolDecision:
    """The engine sequence that answers `decision_question` with yes or no, greedily; `tool_choice: auto` on a model
    without a tools template becomes "required" or "none" by it."""

    grammar = 'root ::= "yes" | "no"'
    max_tokens = 4

    def __init__(self, engine: Generator, model: Model, request: GenerateRequest, options: Options, question: str,
                 done: Callable[[str], None]):
        prompt = render_chat(model, request, [{"role": "user", "content": question}])
        self.tokens = engine.tokenize(prompt)[-(engine.n_ctx - self.max_tokens):]
        self.options = options.model_copy(update={"temperature": 0.0, "repeat_penalty": 1.0})
        self.engine, self.done = engine, done
        self.cancel = threading.Event()
        self.answer = b""

    def started(self, cached: int) -> None:
        pass

    def token(self, token: int) -> bool:
        self.answer += self.engine.token_bytes(token)
        return True

    def ended(self, reason: str, error: BaseException | None = None) -> None:
        self.done(self.answer.decode(errors="replace") if reason != "error" else "")


async def decide_tools(engine: Generator, model: Model, request: GenerateRequest, options: Options) -> str:
    """"required" or "none" for a request whose `tool_choice` is auto and whose model has no tools template."""
    asked = toolkit.decision_question(request.messages or [], request.tools or [])
    if asked is None:
        return "none"
    question, call_answer = asked
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def done(text: str) -> None:
        loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result(text))

    decision = await asyncio.to_thread(ToolDecision, engine, model, request, options, question, done)
    engine.submit(decision)
    try:
        said = await answer
    finally:
        decision.cancel.set()
    choice = "required" if said.strip() == call_answer else "none"
    log.info("%s: tools offered in ember's generic form; the model %s", model.name,
             "calls one" if choice == "required" else "answers in text")
    return choice


class TimedOut(EmberError):
    status = 408


def limited_options(settings: Settings, options: Options) -> Options:
    """`num_predict` within EMBER_MAX_PREDICT: a larger one asked for is refused, an unbounded one is capped."""
    cap = settings.max_predict
    if not cap:
        return options
    if options.num_predict is not None and options.num_predict > cap:
        raise BadRequest(f"num_predict {options.num_predict} is more than this server's limit of {cap} tokens "
                         "(EMBER_MAX_PREDICT); ask for fewer or raise the limit")
    if options.num_predict is None or options.num_predict < 0:
        return options.model_copy(update={"num_predict": cap})
    return options


async def generate(scheduler: Scheduler, store: ModelStore, settings: Settings,
                   request: GenerateRequest) -> AsyncIterator[Event]:
    """Events for one request, ending with Done. Closing the iterator early cancels the generation."""
    if request.tools:
        tool_names(request.tools)  # a malformed tool is a 400 before anything loads
    p = await asyncio.to_thread(plan, store, settings, request.model, request.options, request.preset, Role.GENERATE)
    options = limited_options(settings, p.options)
    deadline = time.monotonic() + settings.request_timeout if settings.request_timeout else None
    async with scheduler.admitted(), scheduler.using(p.model, p.spec, request.keep_alive) as lease:
        engine = lease.engine
        if not isinstance(engine, Generator):
            raise BadRequest(f"{p.model.name} cannot generate text: it is an embedding model; use /api/embed")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job: Generation | None = None

        def emit(event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed: the server is shutting down
                if job:
                    job.cancel.set()

        try:
            decided = request.tools and request.tool_choice in (None, "auto") and generic_tools(p.model, request)
            if decided:
                request = replace(request, tool_choice=await decide_tools(engine, p.model, request, options))
            while True:  # twice at most: a decided call that only repeats answered ones gives way to a text answer
                try:
                    job = await asyncio.to_thread(Generation, engine, p.model, request, options, emit,
                                                  lease.load_ns, settings.max_prompt_tokens)
                except BadRequest as e:
                    if not (decided and request.tool_choice == "required"):
                        raise
                    # The model chose to call, but the tools' description does not fit beside the conversation.
                    log.info("%s: %s; the model answers in text instead", p.model.name, e.message)
                    request, decided = replace(request, tool_choice="none"), False
                    continue
                engine.submit(job)
                while True:
                    try:
                        event = await asyncio.wait_for(events.get(),
                                                       deadline - time.monotonic() if deadline else None)
                    except TimeoutError:
                        raise TimedOut(f"the generation ran past this server's limit of "
                                       f"{settings.request_timeout:g} s (EMBER_REQUEST_TIMEOUT) and was stopped; ask "
                                       "for fewer tokens (num_predict) or raise the limit") from None
                    if isinstance(event, Failed):
                        raise event.error
                    if (decided and isinstance(event, Done) and request.tool_choice == "required"
                            and toolkit.answered(event.tool_calls, request.messages or [])):
                        log.info("%s: the call repeats one already answered; the model answers in text instead",
                                 p.model.name)
                        request, decided = replace(request, tool_choice="none"), False
                        break
                    yield event
                    if isinstance(event, Done):
                        return
        finally:
            if job:
                job.cancel.set()
