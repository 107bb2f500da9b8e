"""Tool calls: finding them in a model's answer, forcing one with a grammar when the client requires it, and offering
tools to a model whose chat template has no place for them."""

import json
import re
import uuid
from dataclasses import replace
from typing import Any

from ember.core.errors import BadRequest
from ember.core.types import Message, ToolCall

# Calls in the Hermes form: what models with a tools template write, and what ember's generic form asks for.
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_TAGGED = re.compile(rf"{CALL_OPEN}\s*(.*?)\s*(?:{CALL_CLOSE}|$)", re.S)


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    names = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"tools[{i}]: expected {{'type': 'function', "
                             "'function': {'name': ..., 'parameters': ...}}")
        names.append(fn["name"])
    return names


def forced_call_schema(tools: list[dict[str, Any]], only: str | None = None) -> dict[str, Any]:
    """A JSON schema that admits exactly one call of one of the tools (or of `only`)."""
    choices = []
    for tool in tools:
        fn = tool["function"]
        if only and fn["name"] != only:
            continue
        choices.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]},
                           "arguments": fn.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
        })
    if not choices:
        raise BadRequest(f"tool_choice names '{only}', which is not among the request's tools")
    return choices[0] if len(choices) == 1 else {"anyOf": choices}


def _as_call(obj: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name, args = obj.get("name"), obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if name not in names or not isinstance(args, dict):
        return None
    return ToolCall(name=name, arguments=args, id=f"call_{uuid.uuid4().hex[:12]}")


def _call_key(call: ToolCall) -> tuple[str, str]:
    """What makes two calls the same call: the tool and its arguments, whatever their order."""
    return call.name, json.dumps(call.arguments, sort_keys=True)


def _last_request(messages: list[Message]) -> int | None:
    """Index of the user's latest message: what came after it is this turn's calls and results."""
    return max((i for i, m in enumerate(messages) if m.role == "user"), default=None)


def _about(fn: dict[str, Any]) -> str:
    """A tool's description on one line, without its closing period."""
    return " ".join((fn.get("description") or "").split()).rstrip(".")


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> tuple[str, list[ToolCall]]:
    """Split an answer into remaining content and the tool calls it makes (Hermes <tool_call> tags or bare JSON)."""
    names = set(tool_names(tools))
    calls: list[ToolCall] = []
    seen = set()
    for block in _TAGGED.findall(text):
        try:
            call = _as_call(json.loads(block), names)
        except json.JSONDecodeError:
            call = None
        if call and _call_key(call) not in seen:  # the same call twice in one answer is made once
            seen.add(_call_key(call))
            calls.append(call)
    if calls:
        return _TAGGED.sub("", text).strip(), calls
    try:
        parsed = json.loads(text.strip())
    except json.JSONDecodeError:
        return text, []
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = [c for c in (_as_call(item, names) for item in items) if c]
    return ("", calls) if calls and len(calls) == len(items) else (text, [])


# -- tools for a model whose chat template has no place for them ----------------------------------------------------
#
# ember describes the tools in the system prompt and asks for calls in one documented form (a Hermes-style tag, which
# `parse_tool_calls` reads); a grammar makes a forced call well-formed and its arguments match the tool's schema.
# Earlier calls and results are shown as ordinary turns, which a template without tools can render.


def _signature(parameters: dict[str, Any]) -> str:
    """`city: string, days?: integer` from a parameter schema: compact, because clients send dozens of tools (Open
    WebUI 36, 26 KB of JSON) and the grammar, not the prompt, holds the model to the full schema."""
    props = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    parts = []
    for name, schema in props.items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(schema, dict) and "enum" in schema:
            kind = "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
        parts.append(f"{name}{'' if name in required else '?'}: {kind or 'any'}")
    return ", ".join(parts)


def describe_tools(tools: list[dict[str, Any]]) -> str:
    """The instructions a generic-tools prompt carries (documented in the README's "Tools for every model")."""
    lines = ["You can call these tools:"]
    for tool in tools:
        fn = tool["function"]
        about = _about(fn)[:200].rstrip(".")
        lines.append(f"- {fn['name']}({_signature(fn.get('parameters') or {})}){': ' + about if about else ''}")
    lines += ["", "To call a tool, reply with only:",
              f'{CALL_OPEN}{{"name": "TOOL NAME", "arguments": {{ARGUMENTS}}}}{CALL_CLOSE}',
              "When no tool fits, or the results of earlier calls answer the request, reply in plain text."]
    return "\n".join(lines)


def with_instructions(messages: list[Message], text: str) -> list[Message]:
    """`text` at the head of the system prompt (one is added when there is none)."""
    if messages and messages[0].role == "system":
        return [replace(messages[0], content=f"{text}\n\n{messages[0].content}".strip()), *messages[1:]]
    return [Message("system", text), *messages]


def _call_names(messages: list[Message]) -> dict[str, str]:
    """Tool call id → tool name: OpenAI's tool results name their call's id, not the tool."""
    return {c.id: c.name for m in messages for c in m.tool_calls if c.id}


def _result_of(m: Message, names: dict[str, str]) -> str:
    name = names.get(m.tool_name or "", m.tool_name) or "the tool"
    return f"{name} returned: {m.content}"


def plain_history(messages: list[Message]) -> list[Message]:
    """Tool calls and their results as plain assistant and user turns. Consecutive user turns are merged, because
    templates that demand alternating roles refuse two in a row."""
    names = _call_names(messages)
    out: list[Message] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            said = [m.content] if m.content else []
            said += [f"I called {c.name} with {json.dumps(c.arguments, ensure_ascii=False)}." for c in m.tool_calls]
            m = Message("assistant", "\n".join(said))
        elif m.role == "tool":
            m = Message("user", _result_of(m, names))
        if out and out[-1].role == m.role == "user":
            out[-1] = replace(out[-1], content=f"{out[-1].content}\n\n{m.content}",
                              images=out[-1].images + m.images)
        else:
            out.append(m)
    return out


def _summary(tools: list[dict[str, Any]]) -> str:
    """Each tool's name and the first sentence of its description: a small model answers the yes/no question worse
    the longer the list (Open WebUI's 36 tools carry paragraphs)."""
    parts = []
    for tool in tools:
        fn = tool["function"]
        about = _about(fn).split(". ")[0][:80].rstrip(".")
        parts.append(f"{fn['name']} ({about})" if about else fn["name"])
    return "Tools: " + "; ".join(parts)


def _done_so_far(turn: list[Message]) -> list[str]:
    """The calls made since the user's request and what each returned: `name(arg="v") returned: result`."""
    calls = [c for m in turn if m.role == "assistant" for c in m.tool_calls]
    by_id = {c.id: c for c in calls if c.id}
    results = [m for m in turn if m.role == "tool"]
    lines = []
    for i, m in enumerate(results):
        call = by_id.get(m.tool_name or "") or (calls[i] if i < len(calls) else None)
        if call:
            args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call.arguments.items())
            lines.append(f"{call.name}({args}) returned: {m.content}"[:500])
        else:
            lines.append(f"{m.tool_name or 'a tool'} returned: {m.content}"[:500])
    return lines[-8:]


def decision_question(messages: list[Message], tools: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The yes/no question that decides `tool_choice: auto` for a model without a tools template, and the answer that
    means "call a tool"; None when there is no user request to decide on.

    Asked apart from the conversation: a small model answers a short yes/no question far more reliably than it starts a
    call on its own (measured with SmolLM2-135M; see the README). Bounded, so that it fits any context window: the
    request's end and the latest results' starts."""
    last = _last_request(messages)
    if last is None:
        return None
    request = messages[last].content.strip()[-2000:]
    done = _done_so_far(messages[last + 1:])
    if not done:
        return (f"{_summary(tools)}\n\nRequest: {request}\n\n"
                "Does this request need one of these tools? Answer yes or no."), "yes"
    results = "\n".join(done)
    return (f"{_summary(tools)}\n\nRequest: {request}\n\nDone so far:\n{results}\n\n"
            "Do these results fully answer the request? Answer yes or no."), "no"


def tagged_call_grammar(call_gbnf: str) -> str:
    """A grammar for one or more tagged calls (parallel calls, as OpenAI's API allows), from the GBNF of one call's
    JSON, whose `root` becomes a rule of its own."""
    rules = re.sub(r"^root ::=", "ember-tool-call ::=", call_gbnf, count=1, flags=re.M)
    return (f'root ::= ember-tagged-call ("\\n"? ember-tagged-call)*\n'
            f'ember-tagged-call ::= "{CALL_OPEN}" ember-tool-call "{CALL_CLOSE}"\n{rules}')


def repeats_a_call(text: str) -> bool:
    """Whether the last tagged call in `text` is one it already made: a small model, once it has called, tends to
    call the same again until it runs out of tokens, so a repeat ends the answer."""
    if not text.rstrip().endswith(CALL_CLOSE):
        return False
    blocks = [_canonical(b) for b in _TAGGED.findall(text)]
    return len(blocks) > 1 and blocks[-1] in blocks[:-1]


def _canonical(block: str) -> str:
    try:
        return json.dumps(json.loads(block), sort_keys=True)
    except json.JSONDecodeError:
        return "".join(block.split())


def answered(calls: list[ToolCall], messages: list[Message]) -> bool:
    """Whether every one of `calls` was already made, with the same arguments, since the user's last request (and so
    its result is in the conversation)."""
    last = _last_request(messages)
    turn = messages if last is None else messages[last + 1:]
    made = {_call_key(c) for m in turn if m.role == "assistant" for c in m.tool_calls}
    return bool(calls) and all(_call_key(c) in made for c in calls)
