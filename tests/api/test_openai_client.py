"""The official `openai` Python client, unchanged, against a real `ember serve`."""

import json

import jsonschema
import openai
import pytest

QUICK = {"temperature": 0, "max_tokens": 24, "seed": 7}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"]}}}]
# A ChatML template with a place for tools (Hermes style), for a model made to test tool calls with.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou can call these tools:\n{{ tools | tojson }}\n"
    "Reply with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call> to call one.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert "smollm2:latest" in ids
    assert client.models.retrieve("smollm2").id == "smollm2:latest"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert "ember pull nope" in e.value.message


def test_chat(client):
    reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi."}], **QUICK)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 24


def test_chat_streamed_with_usage(client):
    messages = [{"role": "user", "content": "Name three fruits."}]
    whole = client.chat.completions.create(model="smollm2", messages=messages, **QUICK).choices[0].message.content
    chunks = list(client.chat.completions.create(model="smollm2", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **QUICK))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_completions(client):
    reply = client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", **QUICK)
    assert reply.choices[0].text and reply.usage.completion_tokens > 0
    parts = list(client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", stream=True, **QUICK))
    assert "".join(p.choices[0].text for p in parts if p.choices) == reply.choices[0].text


def test_embeddings_float_and_base64(client):
    floats = client.embeddings.create(model="smollm2", input=["hello", "мир"], encoding_format="float")
    default = client.embeddings.create(model="smollm2", input=["hello", "мир"])  # the client asks for base64
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 576
    assert default.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
    assert floats.usage.prompt_tokens > 0


def test_json_object(client):
    # A mild repeat penalty keeps the 135M model from looping inside a string until max_tokens.
    reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "A cat as JSON."}],
                                           response_format={"type": "json_object"}, temperature=0, max_tokens=200,
                                           extra_body={"repeat_penalty": 1.1})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_json_schema_validates(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a big city and its population."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        temperature=0, max_tokens=100)
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_ember_options_in_the_body(client, api):
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        extra_body={"num_ctx": 1024, "top_k": 1, "keep_alive": "1m", "preset": "factual"})
    assert reply.usage.completion_tokens <= 4
    contexts = {m["context_length"] for m in api.get("/api/ps").json()["models"] if m["name"] == "smollm2:latest"}
    assert 1024 in contexts
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                       extra_body={"num_ctx": "big"})
    assert "num_ctx" in e.value.message


def test_tools_required_gives_a_valid_call(client, api):
    api.post("/api/create", json={"model": "smol-tools", "from": "smollm2", "template": TOOL_TEMPLATE}).raise_for_status()
    reply = client.chat.completions.create(
        model="smol-tools", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS, tool_choice="required", temperature=0, max_tokens=60)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])
    # The call goes back into the conversation with its result.
    follow = client.chat.completions.create(
        model="smol-tools", tools=TOOLS, temperature=0, max_tokens=20, tool_choice="none",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}, choice.message.model_dump(),
                  {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}])
    assert follow.choices[0].message.content is not None
