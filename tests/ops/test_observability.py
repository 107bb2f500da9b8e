"""Metrics, health, request ids and JSON logs, through the app over fake engines; and the limits that say their
number."""

import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ember.api.app import create_app
from ember.ops.requests import JsonFormatter, _WithRequestId, request_id

pytestmark = pytest.mark.anyio

CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:11434")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_with_traffic(make_runtime):
    runtime = make_runtime()
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        before = samples((await http.get("/metrics")).text)
        for _ in range(3):
            assert (await http.post("/api/chat", json=CHAT)).status_code == 200
        assert (await http.post("/v1/embeddings", json={"model": "b", "input": ["x", "yz"]})).status_code == 200
        assert (await http.post("/api/chat", json={**CHAT, "model": "missing"})).status_code == 404
        r = await http.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        after = samples(r.text)
    route = dict(method="POST", route="/api/chat")
    assert value(after, "ember_http_requests_total", **route, status="200") == 3
    assert value(before, "ember_http_requests_total", **route, status="200") == 0
    assert value(after, "ember_http_requests_total", **route, status="404") == 1
    assert value(after, "ember_errors_total", route="/api/chat", kind="4xx") == 1
    assert value(after, "ember_generated_tokens_total", model="a") == 3 * len("Hello from the fake engine.")
    assert value(after, "ember_prompt_tokens_total", model="a") > 0
    assert value(after, "ember_time_to_first_token_seconds_count", model="a") == 3
    assert value(after, "ember_time_per_output_token_seconds_count", model="a") == 3
    assert value(after, "ember_generations_total", model="a", reason="stop") == 3
    assert value(after, "ember_embedded_inputs_total", model="b") == 2
    assert value(after, "ember_loaded_models") == 2
    assert value(after, "ember_model_memory_bytes", model="a:latest", part="weights") == 100
    assert value(after, "ember_slots", model="a:latest") == 4
    assert ("ember_requests_in_flight", ()) in after and ("ember_busy_slots", (("model", "a:latest"),)) in after
    await runtime.close()


async def test_health_is_503_until_started_and_while_draining(make_runtime):
    runtime = make_runtime()
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        r = await http.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        runtime.start()
        r = await http.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        runtime.drain()
        r = await http.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "draining"
    await runtime.close()


async def test_every_answer_carries_a_request_id(make_runtime):
    runtime = make_runtime()
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        ids = {(await http.get("/api/tags")).headers["x-request-id"] for _ in range(3)}
        assert len(ids) == 3 and all(len(i) == 16 for i in ids)
        assert (await http.get("/api/tags", headers={"X-Request-Id": "trace-42"})).headers["x-request-id"] == "trace-42"
        # A header that could forge log lines is replaced, not echoed.
        assert (await http.get("/api/tags", headers={"X-Request-Id": "a b\tc"})).headers["x-request-id"] != "a b\tc"
        refused = await http.get("/api/tags", headers={"Origin": "http://evil.example.com"})
        assert refused.status_code == 403 and refused.headers["x-request-id"]


def test_json_logs_are_one_object_a_line_with_the_request_id():
    record = logging.LogRecord("ember.access", logging.INFO, __file__, 1, "%s %s %d", ("GET", "/api/tags", 200), None)
    record.status = 200
    token = request_id.set("abc123")
    try:
        _WithRequestId().filter(record)
    finally:
        request_id.reset(token)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "GET /api/tags 200" and entry["request_id"] == "abc123"
    assert entry["status"] == 200 and entry["level"] == "info" and entry["logger"] == "ember.access"


# -- limits ---------------------------------------------------------------------------------------------------------


async def test_limits_name_their_number_and_setting(make_runtime, engines):
    runtime = make_runtime(max_predict=5, max_prompt_tokens=200)
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        r = await http.post("/api/chat", json={**CHAT, "options": {"num_predict": 6}})
        assert r.status_code == 400 and "EMBER_MAX_PREDICT" in r.json()["error"] and "5" in r.json()["error"]
        # Unbounded (the default) is capped to the limit rather than refused: clients that set nothing still work.
        r = await http.post("/api/chat", json=CHAT)
        assert r.status_code == 200 and r.json()["eval_count"] == 5 and r.json()["done_reason"] == "length"
        long = {**CHAT, "messages": [{"role": "user", "content": "word " * 100}]}
        r = await http.post("/api/chat", json=long)
        assert r.status_code == 400 and "EMBER_MAX_PROMPT_TOKENS" in r.json()["error"]
        r = await http.post("/v1/chat/completions", json={"model": "a", "messages": long["messages"]})
        assert r.status_code == 400 and "EMBER_MAX_PROMPT_TOKENS" in r.json()["error"]["message"]
    await runtime.close()


async def test_a_generation_past_the_request_time_limit_is_stopped(make_runtime, engines):
    engines.answer = None  # endless
    runtime = make_runtime(request_timeout=0.3)
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        r = await http.post("/api/chat", json=CHAT)
        assert r.status_code == 408 and "EMBER_REQUEST_TIMEOUT" in r.json()["error"]
        r = await http.post("/api/chat", json={**CHAT, "stream": True})
        last = json.loads(r.text.strip().splitlines()[-1])
        assert r.status_code == 200 and "EMBER_REQUEST_TIMEOUT" in last["error"]  # mid-stream: in the stream
    engines.engines[0].ended.wait(2)
    assert engines.engines[0].endings[-1] == "cancelled"  # the engine stopped too, not only the answer
    await runtime.close()


async def test_absurd_numbers_are_400s(make_runtime):
    runtime = make_runtime()
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        for options in ({"num_ctx": 1 << 40}, {"num_predict": 1 << 40}, {"seed": 1 << 70}, {"top_k": -1},
                        {"num_ctx": "lots"}):
            r = await http.post("/api/chat", json={**CHAT, "options": options})
            assert r.status_code == 400, (options, r.text)
        r = await http.post("/v1/chat/completions", json={"model": "a", "messages": CHAT["messages"], "n": 1000})
        assert r.status_code == 400
        r = await http.post("/v1/chat/completions", json={"model": "a", "messages": CHAT["messages"],
                                                         "max_tokens": 1 << 40})
        assert r.status_code == 400
    await runtime.close()


async def test_a_context_too_big_for_memory_is_a_400_with_sizes(make_runtime, engines, models):
    engines.memory_of[models.get("a").model_path.name] = 10_000
    runtime = make_runtime(budget=5_000)
    app = create_app(runtime.settings, runtime=runtime)
    async with client(app) as http:
        r = await http.post("/api/chat", json={**CHAT, "options": {"num_ctx": 8192}})
        assert r.status_code == 400
        assert "needs about" in r.json()["error"] and "8192 tokens" in r.json()["error"]
    await runtime.close()
