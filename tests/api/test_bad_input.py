"""Every kind of bad input gets a 4xx JSON error that names the problem; none gets a 500."""

import pytest

CHAT = "/api/chat"


def error_of(response) -> str:
    body = response.json()
    err = body["error"]
    return err["message"] if isinstance(err, dict) else err


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/create", "/v1/chat/completions", "/v1/embeddings"])
def test_malformed_json(api, path):
    r = api.post(path, content=b'{"model": "smollm2", "messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in error_of(r)


@pytest.mark.parametrize("path, body, field", [
    ("/api/chat", {"model": "smollm2", "messages": "hello"}, "messages"),
    ("/api/chat", {"model": "smollm2", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/api/generate", {"model": "smollm2", "prompt": "x", "stream": "yes please"}, "stream"),
    ("/api/generate", {"prompt": "x"}, "model"),
    ("/api/embed", {"model": "smollm2", "input": 42}, "input"),
    ("/api/generate", {"model": "smollm2", "prompt": "x", "context": ["a"]}, "context"),
    ("/v1/chat/completions", {"model": "smollm2", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "temperature": "warm"}, "temperature"),
    ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
])
def test_wrong_types_name_the_field(api, path, body, field):
    r = api.post(path, json=body)
    assert r.status_code == 400 and field in error_of(r)


@pytest.mark.parametrize("path, body", [
    ("/api/chat", {"model": "nosuch", "messages": [{"role": "user", "content": "x"}]}),
    ("/api/generate", {"model": "nosuch", "prompt": "x"}),
    ("/api/embed", {"model": "nosuch", "input": "x"}),
    ("/api/show", {"model": "nosuch"}),
    ("/v1/chat/completions", {"model": "nosuch", "messages": [{"role": "user", "content": "x"}]}),
])
def test_unknown_model_is_404_with_pull_hint(api, path, body):
    r = api.post(path, json=body)
    assert r.status_code == 404 and "ember pull nosuch" in error_of(r)


def test_unknown_model_on_delete(api):
    r = api.request("DELETE", "/api/delete", json={"model": "nosuch"})
    assert r.status_code == 404 and "nosuch" in error_of(r)


@pytest.mark.parametrize("options, words", [
    ({"temperature": -1}, ["temperature", "greater than or equal to 0"]),
    ({"top_p": "high"}, ["top_p"]),
    ({"num_ctx": 5}, ["num_ctx"]),
    ({"bogus": 1}, ["unknown option 'bogus'"]),
])
def test_invalid_option_values(api, options, words):
    r = api.post(CHAT, json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "options": options})
    assert r.status_code == 400
    for word in words:
        assert word in error_of(r)


def test_context_of_another_vocabulary(api):
    r = api.post("/api/generate", json={"model": "smollm2", "prompt": "x", "context": [1, 2, 10**6]})
    assert r.status_code == 400 and "outside this model's vocabulary" in error_of(r) and "1000000" in error_of(r)


def test_invalid_preset_and_keep_alive(api):
    r = api.post("/api/generate", json={"model": "smollm2", "prompt": "x", "preset": "wild"})
    assert r.status_code == 400 and "unknown preset 'wild'" in error_of(r)
    r = api.post("/api/generate", json={"model": "smollm2", "prompt": "x", "keep_alive": "forever-ish"})
    assert r.status_code == 400 and "keep_alive" in error_of(r)


def test_body_over_the_limit_is_413(api):
    big = b'{"model": "smollm2", "prompt": "' + b"a" * (33 * 1024 * 1024) + b'"}'
    r = api.post("/api/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in error_of(r)


def test_chunked_body_over_the_limit_is_413(api):
    def chunks():
        yield b'{"model": "smollm2", "prompt": "'
        for _ in range(40):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    r = api.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in error_of(r)


@pytest.mark.parametrize("modelfile, line, words", [
    ("FROM smollm2\nPARAMETER temprature 0.5\n", 2, "unknown parameter"),
    ("FROM smollm2\nPARAMETER temperature hot\n", 2, "temperature"),
    ("# comment\nFROM smollm2\nBOGUS x\n", 3, "BOGUS"),
    ('FROM smollm2\nSYSTEM """never closed\n', 2, '"""'),
    ("PARAMETER top_k 3\n", 1, "FROM"),
])
def test_invalid_modelfile_names_the_line(api, modelfile, line, words):
    r = api.post("/api/create", json={"model": "bad", "modelfile": modelfile})
    assert r.status_code == 400
    message = error_of(r)
    assert f"line {line}" in message and words.lower() in message.lower()


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "a\\b", "..", "x:y:z", "sp ace", ""])
def test_bad_model_names(api, name):
    for path, body in [("/api/create", {"model": name, "from": "smollm2"}), ("/api/show", {"model": name}),
                       ("/api/copy", {"source": "smollm2", "destination": name})]:
        r = api.post(path, json=body)
        assert r.status_code == 400, (path, name, r.text)
        assert "name" in error_of(r) or "required" in error_of(r)


@pytest.mark.parametrize("digest", ["sha256:xyz", "md5:" + "0" * 32, "sha256-" + "0" * 10, "nothex"])
def test_bad_digest(api, digest):
    assert api.head(f"/api/blobs/{digest}").status_code == 400
    r = api.post(f"/api/blobs/{digest}", content=b"data")
    assert r.status_code == 400 and "digest" in error_of(r)


def test_mismatched_upload_leaves_nothing(api, ember_home):
    digest = "sha256:" + "0" * 64
    r = api.post(f"/api/blobs/{digest}", content=b"not what the digest says")
    assert r.status_code == 400 and "digest" in error_of(r)
    assert api.head(f"/api/blobs/{digest}").status_code == 404
    assert not [p for p in (ember_home / "models" / "blobs").iterdir() if p.name.startswith(".tmp-")]


def test_create_from_unknown_digest(api):
    r = api.post("/api/create", json={"model": "x", "files": {"m.gguf": "sha256:" + "1" * 64}})
    assert r.status_code in (400, 404) and "sha256:" in error_of(r)


def test_unknown_route_and_method(api):
    assert api.get("/api/nothing").status_code == 404
    assert api.get("/api/chat").status_code == 405


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/api/copy", "/api/create",
                                  "/api/pull", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
@pytest.mark.parametrize("body", [[], "string", 12, None, {"model": 5}, {"model": ["a"]}, {"model": {"x": 1}}])
def test_garbage_never_500(api, path, body):
    r = api.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert error_of(r)
