"""API keys with scopes: with a key configured, every route but /health needs one, and a key's scope bounds it."""

import json
import stat

import httpx
import pytest

from ember.api.app import create_app
from ember.api.routes import flat_routes
from ember.cli.serve import refuse_open_bind
from ember.core.errors import BadRequest
from ember.ops.keys import PUBLIC, ROUTE_ACCESS, Access, KeysFile
from tests.helpers import settings

pytestmark = pytest.mark.anyio

KEYS = ("user-key:use", "manager-key:manage", "root-key")  # no scope: admin
CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": False}
SAMPLE_PARAMS = {"{digest}": "sha256:" + "0" * 64, "{job_id}": "pull-1", "{name:path}": "a", "{name}": "notes"}


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:11434")


def keyed_app(make_runtime, **overrides):
    runtime = make_runtime(api_keys=KEYS, **overrides)
    return create_app(runtime.settings, runtime=runtime)


def every_route(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app has, read from the app itself."""
    found = []
    for route in flat_routes(app.routes):
        path = route.path
        for template, value in SAMPLE_PARAMS.items():
            path = path.replace(template, value)
        assert "{" not in path, f"add a sample value for {route.path} to SAMPLE_PARAMS"
        found += [(method, path, route.path) for method in sorted(route.methods or ())]
    return found


async def test_every_route_but_health_refuses_a_missing_or_wrong_key(make_runtime):
    app = keyed_app(make_runtime)
    routes = every_route(app)
    assert len(routes) > 25 and ("POST", "/api/chat", "/api/chat") in routes
    async with client(app) as http:
        for method, path, template in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"},
                            {"Authorization": "Basic dXNlcjpwYXNz"}):
                r = await http.request(method, path, headers=headers)
                if (method, template) in PUBLIC:
                    assert r.status_code in (200, 503), (method, path)  # 503: this app was never started
                    continue
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
                if method != "HEAD":
                    assert "API key" in json.dumps(r.json())
        # Even what no route serves is for key holders only: nothing about the server leaks.
        assert (await http.get("/no/such/thing")).status_code == 401


def test_every_route_has_an_explicit_scope(make_runtime):
    """A new route must be placed in ROUTE_ACCESS (or PUBLIC); unplaced, it would need admin."""
    app = keyed_app(make_runtime)
    missing = [(m, t) for m, _, t in every_route(app) if (m, t) not in ROUTE_ACCESS and (m, t) not in PUBLIC]
    assert missing == []


async def test_scopes_bound_what_a_key_may_do(make_runtime, models):
    app = keyed_app(make_runtime)
    gguf = models.get("a").model_path
    changes = [("POST", "/api/copy", {"source": "a", "destination": "copied"}),
               ("POST", "/api/create", {"model": "made", "modelfile": f"FROM {gguf}", "stream": False}),
               ("POST", "/api/pull", {"model": "smollm2", "stream": False}),
               ("DELETE", "/api/delete", {"model": "b"})]
    async with client(app) as http:
        use = {"Authorization": "Bearer user-key"}
        for method, path, body in changes:
            r = await http.request(method, path, json=body, headers=use)
            assert r.status_code == 403, (path, r.text)
            assert "'use'" in r.json()["error"] and "--scope manage" in r.json()["error"]
        r = await http.post("/api/blobs/sha256:" + "0" * 64, content=b"x", headers=use)
        assert r.status_code == 403
        assert sorted(m.name for m in models.list()) == ["a:latest", "b:latest", "c:latest"]
        # What a use key may do: run models, list, show.
        assert (await http.post("/api/chat", json=CHAT, headers=use)).status_code == 200
        assert (await http.post("/v1/chat/completions", json={"model": "a", "messages": CHAT["messages"]},
                                headers={"X-Api-Key": "user-key"})).status_code == 200
        assert (await http.get("/api/tags", headers=use)).status_code == 200
        assert (await http.post("/api/show", json={"model": "a"}, headers=use)).status_code == 200
        # A manage key (and an admin key) may change the store.
        manage = {"Authorization": "Bearer manager-key"}
        assert (await http.post("/api/copy", json=changes[0][2], headers=manage)).status_code == 200
        assert (await http.request("DELETE", "/api/delete", json={"model": "copied"},
                                   headers={"Authorization": "Bearer root-key"})).status_code == 200


async def test_keys_file_keys_count_without_a_restart(make_runtime, tmp_path):
    runtime = make_runtime()  # no EMBER_API_KEYS: open until a key exists
    app = create_app(runtime.settings, runtime=runtime)
    keys = KeysFile(runtime.settings.keys_file)
    async with client(app) as http:
        assert (await http.get("/api/tags")).status_code == 200
        key = keys.add("webui", Access.USE)
        assert (await http.get("/api/tags")).status_code == 401
        assert (await http.get("/api/tags", headers={"Authorization": f"Bearer {key}"})).status_code == 200
        keys.remove("webui")
        assert (await http.get("/api/tags")).status_code == 200


def test_the_keys_file_keeps_hashes_only_and_is_private(tmp_path):
    keys = KeysFile(tmp_path / "home" / "keys.json")
    key = keys.add("agent", Access.MANAGE)
    assert key.startswith("ember-") and len(key) > 40
    text = keys.path.read_text()
    assert key not in text and "agent" in text
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    with pytest.raises(BadRequest, match="exists"):
        keys.add("agent", Access.USE)
    with pytest.raises(BadRequest, match="invalid key name"):
        keys.add("../x", Access.USE)
    keys.path.write_text("{not json")
    with pytest.raises(BadRequest, match="damaged"):
        keys.read()


def test_serve_refuses_an_open_address_without_keys(tmp_path):
    assert refuse_open_bind(settings(tmp_path), insecure=False) is None  # loopback: fine
    open_bind = settings(tmp_path, host="0.0.0.0")
    assert "--insecure" in refuse_open_bind(open_bind, insecure=False)
    assert refuse_open_bind(open_bind, insecure=True) is None
    assert refuse_open_bind(settings(tmp_path, host="0.0.0.0", api_keys=("k",)), insecure=False) is None


@pytest.mark.parametrize("text", ["{}", "[]", '{"keys": "x"}', '{"keys": [1]}', '{"keys": [{"name": "a"}]}',
                                  '{"keys": [{"name": "a", "scope": "root", "sha256": "00"}]}'])
def test_a_damaged_keys_file_stops_the_server_from_starting(make_runtime, text):
    runtime = make_runtime()
    runtime.settings.keys_file.parent.mkdir(parents=True, exist_ok=True)
    runtime.settings.keys_file.write_text(text)
    with pytest.raises(BadRequest, match="keys file .* is damaged"):
        create_app(runtime.settings, runtime=runtime)


async def test_keys_damaged_while_serving_keep_the_last_good_ones(make_runtime):
    runtime = make_runtime()
    keys = KeysFile(runtime.settings.keys_file)
    key = keys.add("webui", Access.USE)
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        keys.path.write_text("{damaged")
        assert (await http.get("/api/tags")).status_code == 401
        assert (await http.get("/api/tags", headers={"Authorization": f"Bearer {key}"})).status_code == 200


async def test_backups_over_http_need_an_admin_key(make_runtime, tmp_path):
    app = keyed_app(make_runtime)
    async with client(app) as http:
        for key in ("user-key", "manager-key"):
            r = await http.post("/api/backup", json={"stream": False}, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 403 and "'admin'" in r.json()["error"]
        root = {"Authorization": "Bearer root-key"}
        r = await http.post("/api/backup", json={"stream": False}, headers=root)
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
        made = r.json()["name"]
        assert sorted(r.json()["models"]) == ["a:latest", "b:latest", "c:latest"]
        listed = (await http.get("/api/backups", headers=root)).json()["backups"]
        assert [b["name"] for b in listed] == [made] and listed[0]["with_models"] is False
