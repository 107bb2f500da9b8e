import math

import pytest

from ember.core.context import fit_after, fit_messages, too_long
from ember.core.durations import parse_keep_alive
from ember.core.errors import BadRequest
from ember.core.tools import forced_call_schema, parse_tool_calls
from ember.core.types import Message

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.mark.parametrize("raw, seconds", [
    ("5m", 300), ("1h30m", 5400), ("10s", 10), (300, 300), ("0", 0), (0, 0), ("-1", math.inf), (-1, math.inf),
    ("-1m", math.inf), ("1.5h", 5400), (None, None)])
def test_keep_alive(raw, seconds):
    assert parse_keep_alive(raw) == seconds


@pytest.mark.parametrize("raw", ["5 minutes", "m5", "abc", True])
def test_bad_keep_alive(raw):
    with pytest.raises(BadRequest, match="keep_alive"):
        parse_keep_alive(raw)


def encode_words(messages):
    return [0] * sum(len(m.content.split()) + 1 for m in messages)


def refuse(n):
    return too_long(n, 100, 25, 8192)


def test_fit_keeps_system_and_last_and_drops_oldest():
    messages = [Message("system", "be brief"), Message("user", "a " * 30), Message("assistant", "b " * 30),
                Message("user", "c " * 10), Message("assistant", "d"), Message("user", "last question")]
    fitted = fit_messages(messages, encode_words, 20, refuse)
    assert fitted.dropped_messages == 2 and len(fitted.tokens) <= 20
    assert fitted.dropped_tokens == len(encode_words(messages)) - len(fitted.tokens)


def test_fit_refuses_with_sizes_when_even_the_last_message_is_too_long():
    messages = [Message("system", "x"), Message("user", "word " * 200)]
    with pytest.raises(BadRequest) as e:
        fit_messages(messages, encode_words, 75, refuse)
    assert "203 tokens" in e.value.message and "num_ctx=100" in e.value.message


def test_fit_after_context_drops_its_oldest_tokens_but_keeps_the_pinned_bos():
    context, new = [1] + list(range(100, 130)), [7, 8, 9]
    assert fit_after(context, new, 40, refuse, pinned=1).tokens == context + new
    fitted = fit_after(context, new, 10, refuse, pinned=1)
    assert fitted.tokens == [1, 124, 125, 126, 127, 128, 129, 7, 8, 9] and fitted.dropped_tokens == 24
    with pytest.raises(BadRequest) as e:
        fit_after(context, new, 3, refuse, pinned=1)
    assert "4 tokens" in e.value.message


def test_parse_hermes_tool_call():
    content, calls = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', TOOLS)
    assert content == "" and calls[0].name == "get_weather" and calls[0].arguments == {"city": "Paris"}


def test_parse_bare_json_tool_call_and_ignore_prose():
    assert parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Oslo"}}', TOOLS)[1][0].arguments == {"city": "Oslo"}
    assert parse_tool_calls("It is sunny.", TOOLS) == ("It is sunny.", [])
    assert parse_tool_calls('{"name": "unknown_tool", "arguments": {}}', TOOLS)[1] == []


def test_forced_call_schema_refuses_unknown_choice():
    with pytest.raises(BadRequest, match="not among"):
        forced_call_schema(TOOLS, "nope")
