"""Several requests share one loaded model: same answers alone or batched, from the prefix cache or not."""

import concurrent.futures as cf
import math
import time

import httpx
import pytest

PROMPTS = ["Tell me about the sea.", "What is 2+2?", "Write a poem about cats.", "Explain gravity.",
           "Name five fruits.", "Why is the sky blue?", "Describe Paris.", "How do birds fly?"]
SYSTEM = "You are a careful assistant for a library. " * 20  # a long shared prefix, ~200 tokens


def generate(url: str, prompt: str, **options) -> dict:
    body = {"model": "smollm2", "prompt": prompt, "stream": False,
            "options": {"temperature": 0, "num_predict": 40, **options}}
    r = httpx.post(f"{url}/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def chat(url: str, question: str, system: str = SYSTEM) -> dict:
    body = {"model": "smollm2", "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def cached(reply: dict) -> int:
    return reply["usage"]["prompt_tokens_details"]["cached_tokens"]


def together(fn, items):
    with cf.ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


@pytest.mark.parametrize("options", [{}, {"temperature": 0.9, "seed": 5}], ids=["greedy", "seeded"])
def test_same_tokens_alone_and_batched(server, options):
    alone = [generate(server.url, p, **options)["response"] for p in PROMPTS]
    batched = [r["response"] for r in together(lambda p: generate(server.url, p, **options), PROMPTS)]
    assert batched == alone


def test_prefix_cache_reuses_the_system_prompt_and_changes_nothing(make_server):
    warm = make_server(EMBER_NUM_PARALLEL="2")
    first = chat(warm.url, "Where are the atlases?")
    second = chat(warm.url, "When do you open?")
    assert cached(first) == 0 and first["usage"]["prompt_tokens"] > 180
    # The second request read only what follows the shared system prompt.
    assert 180 < cached(second) < second["usage"]["prompt_tokens"]
    cold = make_server(EMBER_NUM_PARALLEL="2")
    fresh = chat(cold.url, "When do you open?")
    assert cached(fresh) == 0 and fresh["choices"][0]["message"] == second["choices"][0]["message"]


def test_two_chats_keep_their_own_caches(make_server):
    srv = make_server(EMBER_NUM_PARALLEL="2")
    # Both system prompts start alike, as real ones do; neither chat may take the other's slot for those few tokens.
    keeper, sailor = "You are the keeper of a lighthouse. " * 12, "You are the sailor on a ship. " * 12
    for turn in range(2):
        for system in (keeper, sailor):
            reply = chat(srv.url, f"Question {turn}?", system)
            # The second turn reads only what follows the cached system prompt: the question and the template's tail.
            expected = reply["usage"]["prompt_tokens"] - 8 if turn else 0
            assert cached(reply) >= expected, (turn, system[:20], reply["usage"])


def test_a_busy_slot_shares_its_system_prompt(make_server):
    srv = make_server(EMBER_NUM_PARALLEL="2")
    long_answer = {"model": "smollm2", "stream": True, "max_tokens": 400, "temperature": 0,
                   "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell a story."}]}
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=long_answer, timeout=120) as r:
        next(r.iter_lines())
        # The first request still generates in its slot; the second gets the system prompt's KV copied over.
        second = chat(srv.url, "When do you open?")
    assert 180 < cached(second) < second["usage"]["prompt_tokens"]
    fresh = chat(make_server(EMBER_NUM_PARALLEL="2").url, "When do you open?")
    assert fresh["choices"][0]["message"] == second["choices"][0]["message"]


def test_slot_choice_keeps_busy_slots_together_and_caches_apart(ember_home):
    from ember.engines.base import LoadSpec
    from ember.engines.llamacpp import load
    from ember.store.store import ModelStore

    runner = load(LoadSpec(model_path=ModelStore(ember_home / "models").get("smollm2").model_path, num_ctx=256,
                           num_parallel=4))
    chat_a, chat_b, chat_c = [1, 2, 3] * 20, [4, 5, 6] * 20, [1, 2, 9] * 20
    slots = runner._slots
    try:
        with runner._wake:  # the decode thread waits on this lock, so it never sees the staged slots
            for slot, cached, last_used in zip(slots, (chat_a, [], [], chat_b), (1.0, 0.0, 0.0, 2.0)):
                slot.cached, slot.last_used = list(cached), last_used
            free = lambda: [s for s in slots if s.seq is None]  # noqa: E731
            # Nothing busy: chat B's next turn returns to its own slot; a chat sharing 2 tokens with A gets an
            # empty slot instead of evicting A.
            assert runner._choose_slot(free(), chat_b + [7]).id == 3
            assert runner._choose_slot(free(), chat_c).id == 1
            # Slot 0 busy: chat B's turn goes next to it, its cache copied over, instead of three slots away.
            slots[0].seq = object()
            chosen = runner._choose_slot(free(), chat_b + [7])
            assert chosen.id == 1 and chosen.cached == chat_b
    finally:
        slots[0].seq = None
        runner.close()


def test_a_long_prompt_is_read_between_a_running_streams_tokens(make_server):
    srv = make_server(EMBER_NUM_PARALLEL="2")
    endless = {"model": "smollm2", "prompt": "numbers", "options": {"num_predict": 3000},
               "format": {"type": "array", "items": {"type": "integer"}, "minItems": 2000}}
    long_prompt = "The keeper climbed the stairs and lit the lantern. " * 120  # ~1300 tokens
    tokens_meanwhile = 0
    with httpx.stream("POST", f"{srv.url}/api/generate", json=endless, timeout=120) as r:
        lines = r.iter_lines()
        next(lines)
        with cf.ThreadPoolExecutor(1) as pool:
            long = pool.submit(generate, srv.url, long_prompt, num_predict=1)
            while not long.done():
                next(lines)
                tokens_meanwhile += 1
        assert long.result()["prompt_eval_count"] > 1000
    # Read in chunks between the stream's steps, the long prompt never stalled it for its whole length.
    assert tokens_meanwhile >= 20


def test_ps_shows_slots(make_server):
    srv = make_server(EMBER_NUM_PARALLEL="3")
    generate(srv.url, "hi")
    model = httpx.get(f"{srv.url}/api/ps").json()["models"][0]
    assert model["slots"] == 3 and model["slots_busy"] == 0 and model["context_length"] == 4096


def test_disconnect_frees_the_slot_at_once(make_server):
    srv = make_server(EMBER_NUM_PARALLEL="1")
    body = {"model": "smollm2", "prompt": "numbers", "options": {"num_predict": 3000},
            "format": {"type": "array", "items": {"type": "integer"}, "minItems": 2000}}
    with httpx.Client(base_url=srv.url, timeout=60) as api:
        with api.stream("POST", "/api/generate", json=body) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            assert api.get("/api/ps").json()["models"][0]["slots_busy"] == 1
        deadline = time.time() + 1
        while api.get("/api/ps").json()["models"][0]["slots_busy"] and time.time() < deadline:
            time.sleep(0.02)
        assert api.get("/api/ps").json()["models"][0]["slots_busy"] == 0
        # With its only slot free again, the next request is answered at once.
        started = time.time()
        assert generate(srv.url, "hi", num_predict=2)["done"] and time.time() - started < 3


def test_concurrent_embed_requests_share_one_decode(ember_home):
    from ember.engines.base import LoadSpec
    from ember.engines.llamacpp import load
    from ember.store.store import ModelStore

    embedder = load(LoadSpec(model_path=ModelStore(ember_home / "models").get("smollm2").model_path, num_ctx=512,
                             embedding=True))
    texts = ["hello world", "привет мир", "the river keeper", "тихий вечер"]
    alone = [embedder.embed([embedder.tokenize(t, special=False)])[0] for t in texts]
    decodes = 0
    real_decode = embedder.llm._ctx.decode

    def counting_decode(batch):
        nonlocal decodes
        decodes += 1
        return real_decode(batch)

    embedder.llm._ctx.decode = counting_decode
    with cf.ThreadPoolExecutor(len(texts)) as pool:
        with embedder._lock:  # hold the context until every request is waiting, as under load
            futures = [pool.submit(embedder.embed, [embedder.tokenize(t, special=False)]) for t in texts]
            while len(embedder._waiting) < len(texts):
                time.sleep(0.01)
        together_ = [f.result()[0] for f in futures]
    embedder.close()
    assert decodes == 1
    # llama.cpp's matrix kernels round a little differently by a row's place in the batch: same direction, not bits.
    for batched, single in zip(together_, alone):
        cosine = sum(a * b for a, b in zip(batched, single)) / math.hypot(*batched) / math.hypot(*single)
        assert cosine > 0.9999
