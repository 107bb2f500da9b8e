"""Residency with fake engines and a clock the test moves: keep-alive, eviction, the memory budget, the queue, reloads,
one load for many requests, loads that do not block other models, and cancels. Milliseconds each, no sleeps."""

import asyncio

import httpx
import pytest

from ember.api.app import create_app
from ember.core.errors import Busy, EmberError
from ember.core.options import Options
from ember.core.types import Done, EmbedRequest, GenerateRequest, Message, Token

pytestmark = pytest.mark.anyio


def chat(model: str, text: str = "hi", **fields) -> GenerateRequest:
    return GenerateRequest(model=model, messages=[Message("user", text)], **fields)


async def answer(runtime, request: GenerateRequest) -> Done:
    events = [event async for event in runtime.generate(request)]
    assert isinstance(events[-1], Done)
    return events[-1]


def loaded_names(runtime) -> list[str]:
    return [loaded.name for loaded in runtime.loaded()]


async def test_a_model_stays_loaded_for_its_keep_alive_then_unloads(make_runtime, engines, clock):
    runtime = make_runtime()
    done = await answer(runtime, chat("a", keep_alive=10))
    assert done.text == "Hello from the fake engine." and done.load_ns > 0
    assert loaded_names(runtime) == ["a:latest"]
    clock.advance(9)
    runtime.scheduler.reap()
    assert loaded_names(runtime) == ["a:latest"]
    again = await answer(runtime, chat("a", keep_alive=10))  # used again: the ten seconds start over
    assert again.load_ns == 0 and len(engines.loads) == 1
    clock.advance(9.5)
    runtime.scheduler.reap()
    assert loaded_names(runtime) == ["a:latest"]
    clock.advance(1)
    runtime.scheduler.reap()
    assert loaded_names(runtime) == []
    await runtime.close()
    assert engines.engines[0].closed.is_set()


async def test_keep_alive_zero_unloads_after_the_answer_and_negative_keeps_forever(make_runtime, clock):
    runtime = make_runtime()
    await answer(runtime, chat("a", keep_alive=0))
    assert loaded_names(runtime) == []
    await answer(runtime, chat("a", keep_alive=float("inf")))
    clock.advance(10**9)
    runtime.scheduler.reap()
    assert loaded_names(runtime) == ["a:latest"]
    assert await runtime.unload("a") and loaded_names(runtime) == []
    await runtime.close()


async def test_least_recently_used_idle_model_goes_first(make_runtime, engines):
    runtime = make_runtime(max_loaded_models=2)
    for name in ("a", "b", "a", "c"):
        await answer(runtime, chat(name))
    assert sorted(loaded_names(runtime)) == ["a:latest", "c:latest"]  # b was used least recently
    b_engine = next(e for e, spec in zip(engines.engines, engines.loads) if spec.model_path.name ==
                    runtime.store.get("b").model_path.name)
    await runtime.close()
    assert b_engine.closed.is_set()


async def test_memory_budget_evicts_idle_models(make_runtime, engines, models):
    runtime = make_runtime(budget=250)  # each model holds 100
    for name in ("a", "b", "c"):
        await answer(runtime, chat(name))
    assert sorted(loaded_names(runtime)) == ["b:latest", "c:latest"]
    engines.memory_of[models.get("a").model_path.name] = 300
    with pytest.raises(EmberError) as refused:  # more than the whole budget: refused with the sizes
        await answer(runtime, chat("a"))
    assert refused.value.status == 400 and "more than the 0.0 GB available" in refused.value.message
    assert "EMBER_MAX_MEMORY" in refused.value.message
    assert sorted(loaded_names(runtime)) == ["b:latest", "c:latest"]  # refused before anything was evicted
    await runtime.close()


async def test_a_model_waits_for_room_while_every_loaded_model_is_busy(make_runtime, engines):
    engines.answer = None  # endless answers: each request holds its model until it is closed
    runtime = make_runtime(max_loaded_models=1)
    busy = runtime.generate(chat("a"))
    assert isinstance(await anext(busy), Token)
    waiting = asyncio.ensure_future(anext(runtime.generate(chat("b"))))
    await asyncio.sleep(0)  # let it start waiting (no time passes)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done() and loaded_names(runtime) == ["a:latest"]
    await busy.aclose()  # a's request ends: a is idle, so it goes and b loads
    assert isinstance(await asyncio.wait_for(waiting, 5), Token)
    assert loaded_names(runtime) == ["b:latest"]
    await runtime.close()


async def test_a_full_queue_answers_503_with_retry_after(make_runtime, engines):
    engines.answer = None
    runtime = make_runtime(max_queue=1)
    holding = runtime.generate(chat("a"))
    assert isinstance(await anext(holding), Token)
    with pytest.raises(Busy):
        await anext(runtime.generate(chat("a")))
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as http:
        r = await http.post("/api/chat", json={"model": "a", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "EMBER_MAX_QUEUE" in r.json()["error"]
        r = await http.post("/v1/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_busy"
        await holding.aclose()
        r = await http.post("/api/chat", json={"model": "a", "stream": False, "options": {"num_predict": 3},
                                               "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200 and r.json()["message"]["content"] == "xxx"
    await runtime.close()


async def test_a_different_num_ctx_reloads_and_the_old_engine_closes_when_idle(make_runtime, engines):
    runtime = make_runtime()
    await answer(runtime, chat("a", options=Options(num_ctx=1024)))
    await answer(runtime, chat("a", options=Options(num_ctx=1024)))
    assert [spec.num_ctx for spec in engines.loads] == [1024]
    await answer(runtime, chat("a", options=Options(num_ctx=2048)))
    assert [spec.num_ctx for spec in engines.loads] == [1024, 2048]
    await asyncio.sleep(0)
    assert engines.engines[0].closed.wait(2) and not engines.engines[1].closed.is_set()
    assert [loaded.status().context for loaded in runtime.loaded()] == [2048]
    await runtime.close()


async def test_concurrent_requests_for_an_unloaded_model_load_it_once(make_runtime, engines, models):
    gate = engines.hold(models.get("a").model_path.name)
    runtime = make_runtime()
    pending = [asyncio.ensure_future(answer(runtime, chat("a", text=f"q{i}"))) for i in range(4)]
    await asyncio.to_thread(engines.loading.wait, 2)
    gate.set()
    done = await asyncio.gather(*pending)
    assert len(engines.loads) == 1 and all(d.text == "Hello from the fake engine." for d in done)
    await runtime.close()


async def test_loading_one_model_never_delays_a_loaded_one(make_runtime, engines, models):
    """B's load takes up to 2 s; a request for loaded A gets its answer while B is still loading."""
    runtime = make_runtime()
    await answer(runtime, chat("a"))
    gate = engines.hold(models.get("b").model_path.name)
    b = asyncio.ensure_future(answer(runtime, chat("b")))
    await asyncio.to_thread(engines.loading.wait, 2)  # B's load has begun, on the loader thread
    a = runtime.generate(chat("a"))
    first = await asyncio.wait_for(anext(a), 1)
    assert isinstance(first, Token) and not gate.is_set() and not b.done()
    await a.aclose()
    gate.set()
    assert (await b).text and len(engines.loads) == 2
    await runtime.close()


async def test_closing_the_stream_cancels_the_generation(make_runtime, engines):
    engines.answer = None
    runtime = make_runtime()
    events = runtime.generate(chat("a"))
    for _ in range(3):
        assert isinstance(await anext(events), Token)
    await events.aclose()  # what the API does when the client hangs up
    engine = engines.engines[0]
    assert await asyncio.to_thread(engine.ended.wait, 2)
    assert engine.endings == ["cancelled"]
    assert [loaded.active for loaded in runtime.loaded()] == [0]
    await runtime.close()


async def test_a_failing_load_is_an_error_for_its_requests_and_leaves_nothing_loaded(make_runtime, engines):
    runtime = make_runtime()

    def broken(spec):
        raise EmberError("cannot load this one", status=400)

    engines.load = broken
    with pytest.raises(EmberError, match="cannot load this one"):
        await answer(runtime, chat("a"))
    assert loaded_names(runtime) == []
    await runtime.close()


async def test_embedding_and_generation_load_apart_and_ps_shows_the_engine_status(make_runtime, engines):
    runtime = make_runtime()
    result = await runtime.embed(EmbedRequest(model="a", inputs=["one", "three"]))
    assert len(result.vectors) == 2 and result.prompt_tokens == 8
    assert abs(sum(x * x for x in result.vectors[0]) - 1) < 1e-9  # normalised
    await answer(runtime, chat("a"))
    assert [spec.role for spec in engines.loads] == ["embed", "generate"]
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as http:
        ps = (await http.get("/api/ps")).json()["models"]
    # One entry for the model (as Ollama lists it), with what it is loaded for and each engine under it.
    assert [(m["name"], m["loaded_for"], m["size"], m["device"], m["slots"]) for m in ps] == [
        ("a:latest", ["generate", "embed"], 200, "fake", 5)]
    assert [(e["for"], e["size"], e["slots"]) for e in ps[0]["engines"]] == [("generate", 100, 4), ("embed", 100, 1)]
    await runtime.close()
