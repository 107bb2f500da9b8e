"""Tool calls: finding them in a model's answer, and forcing one with a grammar when the client requires it."""

import json
import re
import uuid
from typing import Any

from ember.core.errors import BadRequest
from ember.core.types import ToolCall

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


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


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> tuple[str, list[ToolCall]]:
    """Split an answer into remaining content and the tool calls it makes (Hermes <tool_call> tags or bare JSON)."""
    names = set(tool_names(tools))
    calls: list[ToolCall] = []
    for block in _TAGGED.findall(text):
        try:
            call = _as_call(json.loads(block), names)
        except json.JSONDecodeError:
            call = None
        if call:
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
