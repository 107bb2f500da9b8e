"""Loading, keep-alive, the loaded-model limit, the queue limit, disconnects, the context window, crash safety."""

import contextlib
import json
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from ember.fsutil import TMP_PREFIX
from ember.store.store import ModelStore

# A schema that forces a long answer: the grammar will not let the model stop early.
LONG = {"type": "array", "items": {"type": "integer"}, "minItems": 2000}


def loaded(api) -> dict:
    """The models loaded for generation (a model loaded for embeddings is listed apart)."""
    return {m["name"]: m for m in api.get("/api/ps").json()["models"] if "generate" in m["loaded_for"]}


def test_empty_prompt_loads_and_keep_alive_zero_unloads(make_server):
    srv = make_server()
    api = httpx.Client(base_url=srv.url, timeout=60)
    r = api.post("/api/generate", json={"model": "smollm2", "keep_alive": -1}).json()
    assert r["done"] and r["done_reason"] == "load"
    assert loaded(api)["smollm2:latest"]["expires_at"] == "forever"
    r = api.post("/api/generate", json={"model": "smollm2", "keep_alive": 0}).json()
    assert r["done_reason"] == "unload" and "smollm2:latest" not in loaded(api)
    api.post("/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                                "options": {"num_predict": 2}, "keep_alive": 0, "stream": False})
    assert "smollm2:latest" not in loaded(api)


def test_keep_alive_expiry(make_server):
    """The scheduler's clock-driven tests check the timing; this checks that a real server unloads at all."""
    srv = make_server()
    api = httpx.Client(base_url=srv.url, timeout=60)
    api.post("/api/generate", json={"model": "smollm2", "keep_alive": "1s"})
    assert "smollm2:latest" in loaded(api)
    deadline = time.monotonic() + 10
    while "smollm2:latest" in loaded(api) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "smollm2:latest" not in loaded(api)


def test_least_recently_used_model_goes_first(make_server):
    srv = make_server(EMBER_MAX_LOADED_MODELS="1")
    api = httpx.Client(base_url=srv.url, timeout=60)
    api.post("/api/create", json={"model": "other", "from": "smollm2", "system": "You are another model."})
    api.post("/api/generate", json={"model": "smollm2"})
    assert set(loaded(api)) == {"smollm2:latest"}
    api.post("/api/generate", json={"model": "other"})
    assert set(loaded(api)) == {"other:latest"}
    api.request("DELETE", "/api/delete", json={"model": "other"})


def test_queue_limit_gives_503_with_retry_after(make_server):
    srv = make_server(EMBER_MAX_QUEUE="1")
    body = {"model": "smollm2", "prompt": "numbers", "format": LONG, "options": {"num_predict": 400}}
    with httpx.Client(base_url=srv.url, timeout=60) as api, api.stream("POST", "/api/generate", json=body) as first:
        lines = first.iter_lines()  # kept referenced: a dropped iterator closes the stream
        assert "response" in next(lines)  # the first request is generating
        r = api.post("/api/generate", json={"model": "smollm2", "prompt": "hi"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", srv.log_text()
        assert "EMBER_MAX_QUEUE" in r.json()["error"]
        r = api.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and "retry" in r.json()["error"]["message"]


def test_disconnect_stops_generation(make_server):
    srv = make_server()
    body = {"model": "smollm2", "prompt": "numbers", "format": LONG, "options": {"num_predict": 3000}}
    with httpx.Client(base_url=srv.url, timeout=60) as api:
        with api.stream("POST", "/api/generate", json=body) as r:
            lines = r.iter_lines()
            for _ in range(5):
                next(lines)
        # The server notices at its next token; the model is free again almost at once.
        started = time.time()
        quick = api.post("/api/generate", json={"model": "smollm2", "prompt": "hi", "stream": False,
                                                "options": {"num_predict": 1}})
        assert quick.status_code == 200 and time.time() - started < 5
        model = loaded(api)["smollm2:latest"]
        assert model["active_requests"] == 0 and model["slots_busy"] == 0


def test_chat_that_does_not_fit_drops_oldest_turns_and_says_so(api):
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Question {i}: " + "tell me more about the weather. " * 8},
                    {"role": "assistant", "content": "It is sunny and warm today. " * 8}]
    messages = [{"role": "system", "content": "You are brief."}, *history, {"role": "user", "content": "Last one?"}]
    r = api.post("/api/chat", json={"model": "smollm2", "messages": messages, "stream": False,
                                    "options": {"num_ctx": 512, "num_predict": 16, "temperature": 0}}).json()
    assert r["truncated"] is True and r["truncated_messages"] > 0 and r["truncated_tokens"] > 0
    assert r["prompt_eval_count"] <= 512 - 16
    r = api.post("/v1/chat/completions", json={"model": "smollm2", "messages": messages, "num_ctx": 512,
                                               "max_tokens": 16}).json()
    assert r["truncated"] is True and r["usage"]["prompt_tokens"] <= 512 - 16


def test_prompt_that_can_never_fit_is_400_with_sizes(api):
    r = api.post("/api/chat", json={"model": "smollm2", "options": {"num_ctx": 256},
                                    "messages": [{"role": "user", "content": "word " * 400}]})
    assert r.status_code == 400
    message = r.json()["error"]
    assert "num_ctx=256" in message and "tokens" in message and "8192" in message


def test_num_ctx_is_capped_at_the_trained_length(api):
    api.post("/api/generate", json={"model": "smollm2", "prompt": "hi", "options": {"num_ctx": 100000,
                                                                                   "num_predict": 1}})
    assert loaded(api)["smollm2:latest"]["context_length"] == 8192


def _store_is_whole(models_dir) -> None:
    """Every manifest names blobs that exist and match their digests; no temp file is left."""
    store = ModelStore(models_dir)
    store.cleanup_partials()
    for path in models_dir.rglob("*"):
        assert not path.name.startswith(TMP_PREFIX), path
    for model in store.list():
        manifest = json.loads((models_dir / "manifests" / model.name.split(":")[0] / model.name.split(":")[1]).read_text())
        for layer in manifest["layers"]:
            assert store.blobs.has(layer["digest"]), layer


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_server_killed_during_create_leaves_no_half_model(make_server, tmp_path, ember_home, delay):
    home = tmp_path / "home"
    shutil.copytree(ember_home, home)
    gguf = tmp_path / "big.gguf"
    shutil.copy(ModelStore(home / "models").get("smollm2").model_path, gguf)
    with open(gguf, "ab") as f:  # a different file, so that it must be copied in full
        f.write(b"\0" * 32)
    srv = make_server(home=home)

    def create():
        with contextlib.suppress(httpx.HTTPError):  # the server is killed mid-request
            httpx.post(f"{srv.url}/api/create", json={"model": "killed", "modelfile": f"FROM {gguf}"}, timeout=30)

    t = threading.Thread(target=create)
    t.start()
    time.sleep(delay)
    os.kill(srv.proc.pid, signal.SIGKILL)
    t.join()
    srv.proc.wait()
    _store_is_whole(home / "models")
    after = make_server(home=home)
    names = {m["name"] for m in httpx.get(f"{after.url}/api/tags").json()["models"]}
    assert "smollm2:latest" in names
    if "killed:latest" in names:  # the create finished before the kill: then it must work
        assert httpx.post(f"{after.url}/api/show", json={"model": "killed"}).status_code == 200
