"""Browser safety: a foreign web page cannot make ember act or read its answers; a rebinding Host is refused."""

import json

import httpx
import pytest

from ember.api.app import create_app
from ember.ops.guards import host_allowed, origin_allowed

pytestmark = pytest.mark.anyio

EVIL = "http://evil.example.com"
CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:11434")


def store_state(models) -> tuple:
    return tuple(sorted(m.name for m in models.list())), tuple(sorted(models.blobs.all_digests()))


async def test_a_foreign_page_cannot_act_whatever_the_content_type(make_runtime, models, engines, tmp_path):
    runtime = make_runtime()
    before = store_state(models)
    gguf = models.get("a").model_path
    attacks = [("POST", "/api/copy", {"source": "a", "destination": "stolen"}),
               ("POST", "/api/create", {"model": "planted", "modelfile": f"FROM {gguf}"}),
               ("POST", "/api/pull", {"model": "smollm2"}),
               ("POST", "/api/chat", CHAT),
               ("DELETE", "/api/delete", {"model": "a"}),
               ("GET", "/api/tags", None),
               ("POST", "/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "hi"}]})]
    async with client(create_app(runtime.settings, runtime=runtime)) as http:
        for method, path, body in attacks:
            # What a page's fetch() sends without a preflight: text/plain, its own Origin.
            r = await http.request(method, path, content=None if body is None else json.dumps(body),
                                   headers={"Origin": EVIL, "Content-Type": "text/plain"})
            assert r.status_code == 403, (path, r.text)
            assert "EMBER_ORIGINS" in r.text and "access-control-allow-origin" not in r.headers
        preflight = await http.options("/api/chat", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 403
        null = await http.post("/api/chat", json=CHAT, headers={"Origin": "null"})  # a sandboxed frame
        assert null.status_code == 403
    assert store_state(models) == before and engines.loads == []  # nothing written, nothing ran
    await runtime.close()


async def test_a_rebinding_host_is_refused_while_on_loopback(make_runtime, models, engines):
    runtime = make_runtime()
    async with client(create_app(runtime.settings, runtime=runtime)) as http:
        r = await http.post("/api/chat", json=CHAT, headers={"Host": "evil.example.com"})
        assert r.status_code == 403 and "EMBER_ALLOWED_HOSTS" in r.json()["error"]
        r = await http.get("/v1/models", headers={"Host": "evil.example.com:11434"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        for host in ("localhost:11434", "127.0.0.1", "[::1]:11434", "app.localhost"):
            assert (await http.get("/api/version", headers={"Host": host})).status_code == 200, host
    assert engines.loads == []
    await runtime.close()


async def test_loopback_pages_and_listed_origins_work_with_cors(make_runtime):
    runtime = make_runtime(origins=("https://chat.example.org", "http://*.lan.example:*"),
                           allowed_hosts=("ember.home.arpa",))
    async with client(create_app(runtime.settings, runtime=runtime)) as http:
        for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "https://chat.example.org",
                       "http://box.lan.example:8080"):
            preflight = await http.options("/api/chat", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,authorization"})
            assert preflight.status_code == 200, (origin, preflight.text)
            assert preflight.headers["access-control-allow-origin"] == origin
            assert "POST" in preflight.headers["access-control-allow-methods"]
            r = await http.post("/api/chat", json=CHAT, headers={"Origin": origin})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
            assert r.json()["message"]["content"]
        assert (await http.post("/api/chat", json=CHAT, headers={"Origin": "https://other.example.org"})
                ).status_code == 403
        assert (await http.get("/api/version", headers={"Host": "ember.home.arpa:11434"})).status_code == 200
        assert (await http.post("/api/chat", json=CHAT)).status_code == 200  # no Origin: SDKs, curl, server-side
    await runtime.close()


async def test_any_origin_when_asked_for_and_no_host_check_off_loopback(make_runtime):
    runtime = make_runtime(origins=("*",), host="0.0.0.0")
    async with client(create_app(runtime.settings, runtime=runtime)) as http:
        r = await http.post("/api/chat", json=CHAT, headers={"Origin": EVIL, "Host": "ember.example.net"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", EVIL)
    await runtime.close()


def test_the_rules():
    assert origin_allowed("http://localhost", ()) and origin_allowed("https://[::1]:8443", ())
    assert not origin_allowed("http://localhost.evil.com", ()) and not origin_allowed("file://", ())
    assert not origin_allowed("http://127.0.0.1.nip.io", ()) and not origin_allowed("garbage", ())
    assert origin_allowed("null", ("null",))
    assert host_allowed("127.0.0.2:11434", ()) and host_allowed("", ()) and not host_allowed("10.0.0.5", ())
    assert not host_allowed("localhost.evil.com", ()) and host_allowed("x.internal", ("*.internal",))
