"""Tools on a model whose chat template has no place for them (the bundled SmolLM2), through the official `openai` and
`ollama` clients as they are, streamed and not: real `tool_calls` whose arguments match the tool's schema."""

import json

import jsonschema
import ollama
import openai
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"]}}}
# Open WebUI's page sends tools like these with every message (function calling defaults to native).
OPEN_WEBUI_TOOLS = [
    {"type": "function", "function": {"name": "get_current_timestamp", "description": "Get the current Unix timestamp",
                                      "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "search_knowledge_bases", "description": "Search the knowledge bases",
                                      "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                     "required": ["query"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME, *OPEN_WEBUI_TOOLS)}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def valid(name: str, arguments: dict) -> dict:
    jsonschema.validate(arguments, SCHEMAS[name])
    return arguments


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def oll(server):
    return ollama.Client(host=server.url)


def test_show_lists_tools_for_a_model_whose_template_has_none(oll):
    shown = oll.show("smollm2")
    assert "tools" not in shown.template
    assert "tools" in shown.capabilities


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_openai_forced_call_not_streamed(oai, choice):
    reply = oai.chat.completions.create(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER, TIME],
                                        tool_choice=choice, temperature=0, max_tokens=120)
    out = reply.choices[0]
    assert out.finish_reason == "tool_calls" and out.message.content is None
    for call in out.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        valid(call.function.name, json.loads(call.function.arguments))
    if isinstance(choice, dict):
        assert {c.function.name for c in out.message.tool_calls} == {"get_time"}


def test_openai_forced_call_streamed(oai):
    chunks = list(oai.chat.completions.create(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER],
                                              tool_choice="required", temperature=0, max_tokens=120, stream=True))
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or []) if chunk.choices]
    assert calls and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert valid(calls[0].function.name, json.loads(calls[0].function.arguments)) == {"city": "Paris"}


def test_openai_tool_choice_none_gives_plain_text(oai):
    reply = oai.chat.completions.create(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER],
                                        tool_choice="none", temperature=0, max_tokens=30)
    out = reply.choices[0]
    assert out.finish_reason in ("stop", "length") and out.message.tool_calls is None
    assert out.message.content.strip() and "<tool_call>" not in out.message.content


def test_ollama_auto_call_not_streamed_and_streamed(oll):
    """Ollama's API has no tool_choice: the model decides (for a template without tools, by ember's yes/no
    question), and the bundled model calls the weather tool for a weather question."""
    reply = oll.chat(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER, TIME], options={"temperature": 0})
    assert reply.done_reason == "tool_calls" and reply.message.content == ""
    assert [(c.function.name, valid(c.function.name, dict(c.function.arguments)))
            for c in reply.message.tool_calls] == [("get_weather", {"city": "Paris"})]
    parts = list(oll.chat(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER, TIME], options={"temperature": 0},
                          stream=True))
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert parts[-1].done and [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]


def test_ollama_chat_with_open_webui_tools_streams_a_plain_answer(oll):
    """What Open WebUI's page sends with each message: before, a 400 on every model without a tools template."""
    parts = list(oll.chat(model="smollm2", messages=[{"role": "user", "content": "Write a short poem about the sea."}],
                          tools=OPEN_WEBUI_TOOLS, options={"temperature": 0, "num_predict": 40}, stream=True))
    text = [p.message.content for p in parts if p.message.content]
    assert len(text) > 2, "the answer arrives in pieces, not held to the end"
    assert "<tool_call>" not in "".join(text) and not any(p.message.tool_calls for p in parts)


def test_a_call_cut_off_by_the_token_limit_leaves_no_tag_in_the_content(oll):
    reply = oll.chat(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER], options={"temperature": 0,
                                                                                      "num_predict": 6})
    assert reply.done_reason == "length" and reply.message.content == "" and not reply.message.tool_calls


def test_results_go_back_and_the_model_answers_from_them(oll, oai):
    """A call and its result in the conversation: the model answers in text (a repeat of the answered call is never
    made again), in both dialects."""
    history = [*ASK_WEATHER,
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "tool_name": "get_weather", "content": "sunny, 21 C"}]
    reply = oll.chat(model="smollm2", messages=history, tools=[WEATHER], options={"temperature": 0,
                                                                                  "num_predict": 40})
    assert reply.done_reason != "tool_calls" and "21" in reply.message.content
    first = oai.chat.completions.create(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER],
                                        tool_choice="required", temperature=0, max_tokens=120).choices[0].message
    follow = oai.chat.completions.create(
        model="smollm2", tools=[WEATHER], temperature=0, max_tokens=40,
        messages=[*ASK_WEATHER, first.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"}])
    assert follow.choices[0].finish_reason != "tool_calls" and "21" in follow.choices[0].message.content


def test_a_malformed_tool_or_unknown_named_choice_is_a_400(oai):
    with pytest.raises(openai.BadRequestError, match="tools\\[0\\]"):
        oai.chat.completions.create(model="smollm2", messages=ASK_WEATHER, tools=[{"type": "function"}])
    with pytest.raises(openai.BadRequestError, match="not among"):
        oai.chat.completions.create(model="smollm2", messages=ASK_WEATHER, tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "nope"}})


def test_push_explains_there_is_no_registry(api):
    answer = api.post("/api/push", json={"model": "smollm2"})
    assert answer.status_code == 400 and "ember export smollm2" in answer.json()["error"]
    assert api.post("/api/push", json={"model": "nope"}).status_code == 404
    with pytest.raises(ollama.ResponseError, match="no registry"):
        ollama.Client(host=str(api.base_url)).push("smollm2")


def test_ps_lists_a_model_once_with_what_it_is_loaded_for(api, oll):
    oll.embed(model="smollm2", input="hello")
    oll.generate(model="smollm2", prompt="Hi", options={"num_predict": 2})
    entries = [m for m in api.get("/api/ps").json()["models"] if m["name"] == "smollm2:latest"]
    assert len(entries) == 1
    entry = entries[0]
    assert sorted(entry["loaded_for"]) == ["embed", "generate"]
    assert entry["size"] == sum(e["size"] for e in entry["engines"])
    assert [e["for"] for e in entry["engines"]] == entry["loaded_for"]
