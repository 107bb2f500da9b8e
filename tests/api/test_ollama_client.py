"""The official `ollama` Python client, unchanged, against a real `ember serve`."""

import json

import jsonschema
import ollama
import pytest

QUICK = {"temperature": 0, "num_predict": 24, "seed": 7}


@pytest.fixture
def client(server):
    return ollama.Client(host=server.url)


def test_list_and_show(client):
    names = [m.model for m in client.list().models]
    assert "smollm2:latest" in names
    shown = client.show("smollm2")
    assert shown.details.family == "llama" and shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert "im_start" in shown.template


def test_chat_non_streamed(client):
    reply = client.chat(model="smollm2", messages=[{"role": "user", "content": "Say hello."}], options=QUICK)
    assert reply.message.role == "assistant" and reply.message.content.strip()
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.prompt_eval_count > 5 and 0 < reply.eval_count <= 24
    assert reply.eval_duration > 0 and reply.total_duration >= reply.eval_duration


def test_chat_streamed_matches_non_streamed(client):
    messages = [{"role": "user", "content": "Name three colors."}]
    whole = client.chat(model="smollm2", messages=messages, options=QUICK).message.content
    parts = list(client.chat(model="smollm2", messages=messages, options=QUICK, stream=True))
    assert len(parts) > 2 and parts[-1].done and not parts[0].done
    assert "".join(p.message.content for p in parts) == whole


def test_chat_in_russian(client):
    reply = client.chat(model="smollm2", messages=[{"role": "user", "content": "Привет! Как тебя зовут?"}],
                        options=QUICK)
    assert reply.message.content.strip() and "\ufffd" not in reply.message.content


def test_generate_streamed_and_not(client):
    whole = client.generate(model="smollm2", prompt="The capital of France is", options=QUICK)
    assert whole.response.strip() and whole.done_reason in ("stop", "length")
    parts = list(client.generate(model="smollm2", prompt="The capital of France is", options=QUICK, stream=True))
    assert "".join(p.response for p in parts) == whole.response


def test_generate_context_continues_like_the_same_chat(client):
    """`context` (Ollama's deprecated generate memory) is the chat's tokens so far: the next turn answers exactly as
    /api/chat does given the same conversation as messages."""
    first = client.generate(model="smollm2", prompt="My name is Alice.", options=QUICK)
    second = client.generate(model="smollm2", prompt="What is my name?", context=first.context, options=QUICK)
    assert second.context[:len(first.context)] == first.context
    assert len(second.context) == second.prompt_eval_count + second.eval_count
    chat = client.chat(model="smollm2", options=QUICK, messages=[
        {"role": "user", "content": "My name is Alice."}, {"role": "assistant", "content": first.response},
        {"role": "user", "content": "What is my name?"}])
    assert second.prompt_eval_count == chat.prompt_eval_count and second.response == chat.message.content
    assert chat.get("context") is None


def test_context_that_does_not_fit_drops_its_oldest_tokens_and_says_so(api):
    first = api.post("/api/generate", json={"model": "smollm2", "prompt": "weather " * 300, "stream": False,
                                            "options": {**QUICK, "num_ctx": 1024}}).json()
    r = api.post("/api/generate", json={"model": "smollm2", "prompt": "Go on.", "context": first["context"],
                                        "stream": False, "options": {**QUICK, "num_ctx": 256, "num_predict": 16}})
    body = r.json()
    assert r.status_code == 200 and body["truncated"] is True and body["truncated_messages"] == 0
    assert body["prompt_eval_count"] == 256 - 16  # the window less the answer's room, filled from the newest end
    assert len(first["context"]) - 240 < body["truncated_tokens"] < len(first["context"])


def test_stop_strings_are_honoured(client):
    reply = client.generate(model="smollm2", prompt="Count: 1, 2, 3,", raw=True,
                            options={**QUICK, "num_predict": 40, "stop": ["7"]})
    assert "7" not in reply.response and reply.done_reason == "stop"


def test_seed_gives_the_same_answer(client):
    opts = {"temperature": 1.0, "seed": 42, "num_predict": 20}
    first = client.generate(model="smollm2", prompt="Tell me a joke.", options=opts).response
    second = client.generate(model="smollm2", prompt="Tell me a joke.", options=opts).response
    assert first == second


def test_json_format_is_enforced(client):
    reply = client.chat(model="smollm2", messages=[{"role": "user", "content": "Describe a cat."}], format="json",
                        options={"temperature": 0, "num_predict": 80})
    assert isinstance(json.loads(reply.message.content), (dict, list))


def test_json_schema_is_enforced(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}}, "required": ["name", "age"]}
    reply = client.chat(model="smollm2", messages=[{"role": "user", "content": "Invent a person."}], format=schema,
                        options={"temperature": 0, "num_predict": 100})
    jsonschema.validate(json.loads(reply.message.content), schema)


def test_embed_batch_is_normalized(client):
    result = client.embed(model="smollm2", input=["hello world", "привет мир", "hello world"])
    vectors = result.embeddings
    assert len(vectors) == 3 and len(vectors[0]) == 576
    for v in vectors:
        assert abs(sum(x * x for x in v) - 1) < 1e-4
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5)
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)


def test_embedding_models_rank_by_meaning_on_onnxruntime(client, server):
    import httpx

    question = "When does the museum open again?"
    docs = ["The museum reopens on Monday after the repairs.", "The bakery sells rye bread.",
            "Музей снова откроется в понедельник после ремонта.", "В пекарне продают ржаной хлеб."]
    for model, prefixes in (("minilm", ("", "")), ("multilingual-e5", ("query: ", "passage: "))):
        vectors = client.embed(model=model, input=[prefixes[0] + question, *(prefixes[1] + d for d in docs)]).embeddings
        assert len(vectors[0]) == 384
        scores = [sum(a * b for a, b in zip(vectors[0], v)) for v in vectors[1:]]
        assert scores[0] > scores[1]
        if model == "multilingual-e5":  # the Russian sentence is about the museum too
            assert scores[2] > scores[1] and scores[2] > scores[3]
    loaded = {m["name"]: m for m in httpx.get(f"{server.url}/api/ps").json()["models"]}
    assert loaded["minilm:latest"]["engines"][0]["runner"] == "onnxruntime"
    assert loaded["minilm:latest"]["size_vram"] == 0


def test_legacy_embeddings_not_normalized(client):
    vector = client.embeddings(model="smollm2", prompt="hello world").embedding
    assert abs(sum(x * x for x in vector) - 1) > 1e-3
    normalized = client.embed(model="smollm2", input="hello world").embeddings[0]
    norm = sum(x * x for x in vector) ** 0.5
    assert [x / norm for x in vector] == pytest.approx(normalized, abs=1e-4)


def test_create_copy_delete(client):
    client.create(model="terse", from_="smollm2", system="Answer in one word.",
                  parameters={"temperature": 0, "num_predict": 8})
    shown = client.show("terse")
    assert "Answer in one word." in shown.modelfile and "num_predict" in shown.parameters
    reply = client.chat(model="terse", messages=[{"role": "user", "content": "Color of the sky?"}])
    assert reply.eval_count <= 8
    client.copy("terse", "terse-copy")
    assert {"terse:latest", "terse-copy:latest"} <= {m.model for m in client.list().models}
    client.delete("terse")
    client.delete("terse-copy")
    assert not {"terse:latest", "terse-copy:latest"} & {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        client.show("terse")
    assert e.value.status_code == 404


def test_create_from_uploaded_blob(client, ember_home, tmp_path):
    from ember.store.store import ModelStore

    gguf = ModelStore(ember_home / "models").get("smollm2").model_path
    digest = client.create_blob(gguf)
    client.create(model="from-blob", files={"model.gguf": digest})
    assert client.show("from-blob").details.family == "llama"
    client.delete("from-blob")


def test_pull_streams_progress(client):
    statuses = [p.status for p in client.pull("smollm2:135m", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "smollm2:135m" in {m.model for m in client.list().models}
    client.delete("smollm2:135m")


def test_ps_shows_loaded_model(client):
    client.generate(model="smollm2", prompt="hi", options=QUICK)
    loaded = {m.model: m for m in client.ps().models}
    assert "smollm2:latest" in loaded and loaded["smollm2:latest"].size > 0
