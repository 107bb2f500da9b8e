"""Hostile input through the app: each is answered with the 4xx that names it, and nothing changes on disk."""

import hashlib
import json
import struct

import httpx
import numpy as np
import pytest
from gguf import GGUFWriter

from ember.api.app import create_app

pytestmark = pytest.mark.anyio

CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:11434")


def disk(root) -> dict[str, str]:
    """Every file under the store with its hash: what 'nothing changed' is checked against."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def hostile_gguf(tmp_path, name: str, n_tensors: int = 1 << 62) -> str:
    path = tmp_path / name
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, 0) + b"\0" * 64)
    return str(path)


async def test_hostile_requests_get_4xx_and_change_nothing(make_runtime, models, tmp_path):
    runtime = make_runtime(max_body_bytes=1 << 20)
    app = create_app(runtime.settings, runtime=runtime)
    before = disk(models.root)
    evil_gguf = hostile_gguf(tmp_path, "evil.gguf")
    cases = [
        # traversal in names and digests
        ("POST", "/api/copy", {"source": "a", "destination": "../../escaped"}, 400),
        ("POST", "/api/copy", {"source": "a", "destination": "x/../../y"}, 400),
        ("POST", "/api/create", {"model": "..", "modelfile": "FROM a"}, 400),
        ("POST", "/api/create", {"model": "ok", "files": {"m.gguf": "sha256:../../etc/passwd"}}, 400),
        ("DELETE", "/api/delete", {"model": "../manifests"}, 400),
        ("POST", "/api/show", {"model": "a:../../b"}, 400),
        ("HEAD", "/api/blobs/sha256:..%2F..%2Fetc%2Fpasswd", None, 404),  # no route takes a '/' in a digest
        ("POST", "/api/blobs/..%2F..%2Fescaped", b"data", 404),
        ("POST", "/api/blobs/sha256-..", b"data", 400),
        ("POST", "/api/create", {"model": "rel", "modelfile": "FROM ../../models/blobs/x.gguf"}, 400),
        # hostile model files
        ("POST", "/api/create", {"model": "evil", "modelfile": f"FROM {evil_gguf}"}, 400),
        ("POST", "/api/create", {"model": "evil", "modelfile": f"FROM a\nADAPTER {evil_gguf}"}, 400),
        # huge numbers
        ("POST", "/api/chat", {**CHAT, "options": {"num_ctx": 1 << 62}}, 400),
        ("POST", "/api/chat", {**CHAT, "options": {"num_predict": 1 << 62}}, 400),
        ("POST", "/v1/chat/completions", {"model": "a", "messages": CHAT["messages"], "n": 1 << 40}, 400),
        ("POST", "/api/generate", {"model": "a", "prompt": "x", "context": [1 << 62]}, 400),
        ("POST", "/api/chat", {**CHAT, "keep_alive": "1e400h"}, 400),
    ]
    async with client(app) as http:
        for method, path, body, status in cases:
            content = body if isinstance(body, bytes) else (json.dumps(body) if body is not None else None)
            r = await http.request(method, path, content=content)
            assert r.status_code == status, (method, path, body, r.status_code, r.text)
            if method != "HEAD":
                assert r.json()["error"], (path, r.text)
        # Bodies no parser should choke on: oversized, invalid UTF-8, deeply nested, not JSON at all.
        r = await http.post("/api/chat", content=b"{" + b" " * (2 << 20) + b"}")
        assert r.status_code == 413 and "EMBER_MAX_BODY_BYTES" in r.json()["error"]
        r = await http.post("/api/chat", content=b'{"model": "a", "messages": [{"role": "user", "content": "\xff\xfe"}]}')
        assert r.status_code == 400
        r = await http.post("/api/chat", content=b"[" * 100_000 + b"]" * 100_000)
        assert r.status_code == 400
        r = await http.post("/api/chat", content=json.dumps({**CHAT, "messages": [{"role": "user", "content": {
            "a": [[[[[[[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]]]]]]]}}]}))
        assert r.status_code == 400
        r = await http.post("/api/chat", content=b"\x00\x01 not json")
        assert r.status_code == 400
    assert disk(models.root) == before
    await runtime.close()


async def test_a_model_whose_metadata_holds_nan_or_inf_still_shows(make_runtime, models, tmp_path):
    writer = GGUFWriter(str(tmp_path / "odd.gguf"), "llama")
    writer.add_context_length(256)
    writer.add_float32("llama.rope.freq_base", float("nan"))
    writer.add_float64("general.odd", float("inf"))
    writer.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    runtime = make_runtime()
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        r = await http.post("/api/create", json={"model": "odd", "modelfile": f"FROM {tmp_path / 'odd.gguf'}",
                                                 "stream": False})
        assert r.status_code == 200, r.text
        r = await http.post("/api/show", json={"model": "odd"})
        assert r.status_code == 200, r.text
        assert r.json()["model_info"]["general.odd"] is None
    await runtime.close()
