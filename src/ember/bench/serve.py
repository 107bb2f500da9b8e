"""`ember bench serve`: ember against llama.cpp's own C++ server (`llama-server`), llama-cpp-python's server and the
engine itself, on the same GGUF, threads and per-slot context.

Workloads, driven from this process over HTTP:
  W1 one stream: 128-token prompt, 256 tokens, greedy
  W2 eight concurrent streams: different 64-token prompts, 128 tokens each
  W3 two conversations alternating turns, each with its own ~1000-token system prompt, eight turns each
  W4 a 3000-token prompt arriving while eight streams run: their token rate while it is read
plus the floors measured in-process with llama.cpp and no server: one stream, and eight sequences in one batch.

All three servers are up at once, each idle while another runs. W1 and W2 run in rounds, every peer (and the
in-process floor) once a round, the order rotated round by round; W3 rotates the servers turn by turn, W4 alternates
ember and llama-server over two rounds (llama_cpp.server, which serves one request at a time, runs it once). Each
figure is reported as min / median / max over its rounds, and every ratio is taken round by round, so that the
machine's drift (15 % within minutes here) cancels and a change that costs 5 % shows.
"""

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import httpx

from ember.bench.harness import (
    ServerProcess,
    Stream,
    concurrently,
    decode_tps,
    ember_server,
    free_port,
    in_turns,
    per_round,
    rate,
    ratios,
    round_order,
    spread,
    stream_completion,
)

MODEL = "smollm2"
FLOOR = "in-process"
EMBER, LLAMA_SERVER, LLAMA_CPP_SERVER = "ember", "llama-server", "llama_cpp.server"
SERVERS = (EMBER, LLAMA_SERVER, LLAMA_CPP_SERVER)
COLUMNS = (FLOOR, *SERVERS)
LLAMA_SERVER_SLOTS = 8
W4_ROUNDS = 2

WORDS = ["the", "river", "keeper", "lantern", "storm", "harbor", "morning", "garden", "letter", "window", "mountain",
         "silver", "quiet", "story", "road", "winter", "candle", "market", "bridge", "forest"]


@dataclass
class ServeBench:
    """What `ember bench serve` (and bench/serve.py) runs."""

    quick: bool = False  # only W1 and W2
    out: Path = Path("bench/results")  # serve.json, serve.png and the servers' logs
    threads: int | None = None  # for every peer; None: one per core, as ember chooses by itself
    rounds: int = 5  # rounds of W1 and W2
    llama_server: Path | None = None  # a llama-server binary; None: built once from the pinned llama.cpp, cached

    def __post_init__(self):
        self.out = Path(self.out)
        self.threads = self.threads or len(os.sched_getaffinity(0))
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")


def text_of_tokens(llm, n: int, seed: int) -> str:
    """Some prose of `n` tokens for this model's tokenizer; another seed, other text from the first word on."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n * 2)]
    tokens = llm.tokenize(" ".join(words).encode(), add_bos=False)[:n]
    return llm.detokenize(tokens).decode("utf-8", errors="ignore")


@dataclass
class Prompts:
    """Every workload's prompts, fresh for each round (index 0: the warm-up), the same for every peer within a
    round: a server that kept a prompt from an earlier round in its cache would otherwise skip reading it, and W1 and
    W2 would time cached prompts while llama_cpp.server (one cache) reads them."""

    w1: list[str]  # one 128-token prompt per round
    w2: list[list[str]]  # eight 64-token prompts per round
    w3_systems: list[str]  # the two conversations' ~1000-token system prompts
    w4: list[tuple[list[str], str]]  # eight 64-token prompts and a 3000-token one per round

    @classmethod
    def make(cls, llm, rounds: int, w4_rounds: int) -> "Prompts":
        return cls(w1=[text_of_tokens(llm, 128, 1000 + r) for r in range(rounds + 1)],
                   w2=[[text_of_tokens(llm, 64, 2000 + 10 * r + s) for s in range(8)] for r in range(rounds + 1)],
                   w3_systems=[f"You are narrator {c}. " + text_of_tokens(llm, 1000, 3000 + c) for c in range(2)],
                   w4=[([text_of_tokens(llm, 64, 4000 + 10 * r + s) for s in range(8)],
                        text_of_tokens(llm, 3000, 4500 + r)) for r in range(w4_rounds + 1)])


def summarize(runs: dict[str, list[dict]], compare: dict[str, tuple[str, ...]]) -> dict:
    """Each runner's figures as spreads over its rounds; for each figure in `compare`, ember's per-round ratio to
    each named peer."""
    out = {"rounds": max(len(r) for r in runs.values()),
           "figures": {name: {key: spread(r[key] for r in results) for key in results[0]}
                       for name, results in runs.items()},
           "ratios": {}}
    for key, others in compare.items():
        ours = [r[key] for r in runs[EMBER]]
        out["ratios"][key] = {f"{EMBER}/{other}": ratios(ours, [r[key] for r in runs[other]])
                              for other in others if other in runs}
    return out


# -- the workloads ----------------------------------------------------------------------------------------------

def w1(urls: dict[str, str], prompts: list[str], floor: Callable[[str], float], rounds: int) -> dict:
    """One stream, every server in turns with the same stream run in-process; prompts[0] warms, then one a round."""
    for url in urls.values():
        stream_completion(url, MODEL, prompts[0], 8)  # load and warm

    def one(url: str, prompt: str) -> dict:
        s = stream_completion(url, MODEL, prompt, 256)
        return {"decode_tps": decode_tps(s.token_times), "ttft_s": s.ttft, "tokens": len(s.token_times)}

    runners = {FLOOR: per_round(lambda p: {"decode_tps": floor(p)}, prompts[1:]),
               **{name: per_round(partial(one, url), prompts[1:]) for name, url in urls.items()}}
    runs = in_turns(rounds, runners, partial(_round_done, "W1", rounds))
    return summarize(runs, {"decode_tps": (FLOOR, LLAMA_SERVER, LLAMA_CPP_SERVER),
                            "ttft_s": (LLAMA_SERVER, LLAMA_CPP_SERVER)})


def w2(urls: dict[str, str], prompt_sets: list[list[str]], limit: Callable[[list[str]], float], rounds: int,
       max_tokens: int = 128) -> dict:
    """Eight streams at once, every server in turns with the in-process limit; prompt_sets[0] warms, then one set a
    round."""
    for url in urls.values():
        concurrently([lambda p=p, url=url: stream_completion(url, MODEL, p, 4) for p in prompt_sets[0]])
    runners = {FLOOR: per_round(lambda ps: {"aggregate_tps": limit(ps)}, prompt_sets[1:]),
               **{name: per_round(lambda ps, url=url: eight_streams(url, ps, max_tokens), prompt_sets[1:])
                  for name, url in urls.items()}}
    runs = in_turns(rounds, runners, partial(_round_done, "W2", rounds))
    return summarize(runs, {"aggregate_tps": (FLOOR, LLAMA_SERVER, LLAMA_CPP_SERVER),
                            "wall_tps": (LLAMA_SERVER, LLAMA_CPP_SERVER),
                            "p95_ttft_s": (LLAMA_SERVER, LLAMA_CPP_SERVER)})


def eight_streams(url: str, prompts: list[str], max_tokens: int) -> dict:
    start = time.perf_counter()
    streams = concurrently([lambda p=p: stream_completion(url, MODEL, p, max_tokens) for p in prompts])
    first, last = min(s.token_times[0] for s in streams), max(s.token_times[-1] for s in streams)
    tokens = sum(len(s.token_times) for s in streams)
    ttfts = sorted(s.ttft for s in streams)
    # Decoding rate over the span in which the streams decode, the quantity the in-process batch limit measures;
    # the rate from the moment the requests were sent (prompts read included) is kept too.
    return {"aggregate_tps": (tokens - len(streams)) / (last - first), "wall_tps": tokens / (last - start),
            "p95_ttft_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))], "tokens": tokens}


def w3(urls: dict[str, str], systems: list[str], turns: int = 8) -> dict:
    """Two conversations take turns; each turn resends its whole history, as chat clients do. The servers take
    their turns in the order `in_turns` uses, so turn by turn they see the same machine."""
    histories = {name: [[{"role": "system", "content": s}] for s in systems] for name in urls}
    ttfts: dict[str, list[list[float]]] = {name: [[] for _ in systems] for name in urls}
    for turn in range(turns):
        for name in round_order(list(urls), turn):
            for c, history in enumerate(histories[name]):
                history.append({"role": "user", "content": f"Question {turn + 1}: what happens next in the story?"})
                ttfts[name][c].append(stream_completion(urls[name], MODEL, history, 24, chat=True).ttft)
                history.append({"role": "assistant", "content": "Then the keeper lit the lantern again."})

    def later(name: str) -> list[float]:  # turn by turn, both conversations: the same order for every server
        return [ttfts[name][c][t] for t in range(1, turns) for c in range(len(systems))]

    figures = {name: {"first_turn_ttft_s": spread(t[0] for t in ttfts[name]),
                      "later_turn_ttft_s": spread(later(name)),
                      "later_over_first": spread(spread(t[1:])["median"] / t[0] for t in ttfts[name])}
               for name in urls}
    return {"rounds": turns - 1, "figures": figures,
            "ratios": {"later_turn_ttft_s": {f"{EMBER}/{o}": ratios(later(EMBER), later(o))
                                             for o in urls if o != EMBER}}}


def w4_once(url: str, prompts: tuple[list[str], str]) -> dict:
    """Eight streams generate; once all have started (or 10 s passed), a 3000-token prompt arrives.

    The streams ask for more tokens than they get to make and hang up 2 s after the long prompt is read, so they run
    throughout. Their rate while it is read is compared with their rate in the 2 s before it arrived and the 2 s after
    (the mean of the two: streams slow down as their own context grows, whatever else happens). A server that serves
    one request at a time reads the long prompt only after all of them; then the rate before is the baseline.
    """
    prompts, long_prompt = prompts
    stop = threading.Event()
    streams = [Stream(time.perf_counter()) for _ in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        running = [pool.submit(stream_completion, url, MODEL, p, 1500, record=record, stop=stop)
                   for p, record in zip(prompts, streams, strict=True)]
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline and not all(s.token_times for s in streams):
            time.sleep(0.05)
        time.sleep(2.0)
        long_sent = time.perf_counter()
        long = stream_completion(url, MODEL, long_prompt, 1)
        long_read = long.token_times[0] if long.token_times else time.perf_counter()
        time.sleep(2.0)
        stop.set()
        for stream in running:
            stream.result()  # a stream that failed fails the benchmark, rather than measuring nothing
    before = rate(streams, long_sent - 2.0, long_sent)
    after = rate(streams, long_read, long_read + 2.0)
    during = rate(streams, long_sent, long_read)
    baseline = (before + after) / 2 if after else before
    return {"rate_before_tps": before, "rate_after_tps": after, "rate_during_tps": during,
            "kept": during / baseline if baseline else 0.0, "long_prompt_s": long_read - long_sent}


def w4(urls: dict[str, str], prompts: list[tuple[list[str], str]], rounds: int = W4_ROUNDS) -> dict:
    """W4 in alternating rounds for the batching servers; once for llama_cpp.server (minutes: it queues).
    prompts[0] warms, then one set a round."""
    for url in urls.values():
        stream_completion(url, MODEL, prompts[0][0][0], 4)
    alternating = {name: per_round(partial(w4_once, url), prompts[1:])
                   for name, url in urls.items() if name != LLAMA_CPP_SERVER}
    runs = in_turns(rounds, alternating, partial(_round_done, "W4", rounds))
    if LLAMA_CPP_SERVER in urls:
        runs[LLAMA_CPP_SERVER] = [w4_once(urls[LLAMA_CPP_SERVER], prompts[1])]
    return summarize(runs, {"kept": (LLAMA_SERVER,), "long_prompt_s": (LLAMA_SERVER,)})


# -- the in-process floors ----------------------------------------------------------------------------------------

def single_stream(llm, prompt: str) -> float:
    """The engine floor for one stream: llama-cpp-python generating in this process, no server; decode tokens/s."""
    prompt_tokens = llm.tokenize(prompt.encode(), add_bos=False)
    llm.reset()
    stamps = []
    for n, _token in enumerate(llm.generate(prompt_tokens, temp=0, top_k=40, top_p=0.9, min_p=0.0)):
        stamps.append(time.perf_counter())
        if n + 1 >= 256:
            break
    return decode_tps(stamps)


def batched_limit(llm, gguf: Path, threads: int, prompts: list[str]) -> float:
    """The machine's limit for eight streams: eight sequences decoded in one llama_decode each step, no server."""
    import llama_cpp

    batch_prompts = [llm.tokenize(p.encode(), add_bos=False) for p in prompts]
    n_seq = len(batch_prompts)
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.n_batch = 512 * n_seq, n_seq, 512
    params.n_threads = params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    samplers = [llama_cpp.llama_sampler_init_greedy() for _ in range(n_seq)]

    def decode(entries):  # entries: (token, pos, seq, logits)
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, logits
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(entries)
        assert llama_cpp.llama_decode(ctx, batch) == 0

    decode([(t, p, s, p == len(toks) - 1) for s, toks in enumerate(batch_prompts) for p, t in enumerate(toks)])
    last = [llama_cpp.llama_sampler_sample(samplers[s], ctx, sum(map(len, batch_prompts[: s + 1])) - 1)
            for s in range(n_seq)]
    pos = [len(t) for t in batch_prompts]
    start, steps = time.perf_counter(), 128
    for _ in range(steps):
        decode([(last[s], pos[s], s, True) for s in range(n_seq)])
        last = [llama_cpp.llama_sampler_sample(samplers[s], ctx, s) for s in range(n_seq)]
        pos = [p + 1 for p in pos]
    limit = n_seq * steps / (time.perf_counter() - start)
    for s in samplers:
        llama_cpp.llama_sampler_free(s)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return limit


# -- the run --------------------------------------------------------------------------------------------------------

def _say(message: str) -> None:
    print(f"bench serve: {message}", file=sys.stderr, flush=True)


def _round_done(workload: str, rounds: int, done: int) -> None:
    _say(f"{workload}: round {done} of {rounds} done")


def run(config: ServeBench) -> dict:
    from llama_cpp import Llama

    from ember.bench.llama_server import find_or_build, llama_server, pinned_version
    from ember.store.store import ModelStore

    binary = config.llama_server or find_or_build()  # first: minutes the first time, then cached
    threads = config.threads
    logs = config.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp, contextlib.ExitStack() as servers:
        home = Path(tmp)
        store = ModelStore(home / "models")
        store.pull(MODEL)
        gguf = store.get(MODEL).model_path
        llm = Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
        servers.callback(llm.close)
        prompts = Prompts.make(llm, config.rounds, W4_ROUNDS)

        # ember as a user gets it (slots and context sized by itself), kept loaded while the others run.
        _say("starting ember")
        ember = servers.enter_context(ember_server(home, log_path=logs / "ember.log", EMBER_KEEP_ALIVE="-1"))
        stream_completion(ember.url, MODEL, "Once upon a time", 1)
        ps = httpx.get(ember.url + "/api/ps", timeout=10).json()["models"][0]
        ctx = ps["context_length"]
        setup = {EMBER: {"slots": ps.get("slots"), "context_length_per_slot": ctx, "threads": ps.get("threads")}}
        if ps.get("threads") not in (None, threads):
            _say(f"warning: ember chose {ps['threads']} threads, the others get {threads} (--threads)")

        # llama.cpp's C++ server: eight slots, each with ember's per-slot context; continuous batching and its
        # prompt cache as it defaults.
        _say(f"starting llama-server ({binary})")
        cpp = servers.enter_context(llama_server(binary, gguf, threads=threads, slots=LLAMA_SERVER_SLOTS,
                                                 ctx_per_slot=ctx, alias=MODEL, log_path=logs / "llama-server.log"))
        props = httpx.get(cpp.url + "/props", timeout=10).json()
        setup[LLAMA_SERVER] = {"slots": props.get("total_slots"),
                               "context_length_per_slot": (props.get("default_generation_settings") or {}).get("n_ctx"),
                               "threads": threads, "command": cpp.command}

        _say("starting llama_cpp.server")
        port = free_port()
        py_command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
                      "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(threads),
                      "--n_threads_batch", str(threads), "--interrupt_requests", "False"]  # its fair setting
        py = servers.enter_context(ServerProcess(LLAMA_CPP_SERVER, py_command, port,
                                                 log_path=logs / "llama_cpp.server.log"))
        setup[LLAMA_CPP_SERVER] = {"slots": 1, "context_length_per_slot": ctx, "threads": threads,
                                   "command": py_command}
        urls = {EMBER: ember.url, LLAMA_SERVER: cpp.url, LLAMA_CPP_SERVER: py.url}

        results: dict = {"config": {**asdict(config), "out": str(config.out), "threads": threads,
                                    "llama_server": str(binary)},
                         "llama_cpp_python": pinned_version(), "setup": setup}
        _say(f"W1: {config.rounds} rounds")
        results["W1"] = w1(urls, prompts.w1, partial(single_stream, llm), config.rounds)
        _say(f"W2: {config.rounds} rounds")
        results["W2"] = w2(urls, prompts.w2, partial(batched_limit, llm, gguf, threads), config.rounds)
        if not config.quick:
            _say("W3: 8 turns")
            results["W3"] = w3(urls, prompts.w3_systems)
            _say(f"W4: {W4_ROUNDS} rounds (llama_cpp.server once)")
            results["W4"] = w4(urls, prompts.w4)
        results["minutes"] = round((time.monotonic() - started) / 60, 1)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "serve.json").write_text(json.dumps(results, indent=2))
    report(results, config.out)
    return results


# -- the report -------------------------------------------------------------------------------------------------

# (label, workload, figure, columns shown)
ROWS = [
    ("W1 decode tok/s (1 stream)", "W1", "decode_tps", COLUMNS),
    ("W1 time to first token, s", "W1", "ttft_s", SERVERS),
    ("W2 aggregate decode tok/s (8 streams)", "W2", "aggregate_tps", COLUMNS),
    ("W2 tok/s from the requests' start", "W2", "wall_tps", SERVERS),
    ("W2 p95 time to first token, s", "W2", "p95_ttft_s", SERVERS),
    ("W3 first-turn TTFT, s", "W3", "first_turn_ttft_s", SERVERS),
    ("W3 later-turn TTFT, s", "W3", "later_turn_ttft_s", SERVERS),
    ("W3 later-turn / first-turn TTFT", "W3", "later_over_first", SERVERS),
    ("W4 rate kept during a 3000-token prompt", "W4", "kept", SERVERS),
    ("W4 time to read the 3000-token prompt, s", "W4", "long_prompt_s", SERVERS),
]

# (label, workload, "ratios"/"figures", figure, key, goal as (comparison, bound) or None)
GOALS = [
    ("W1 decode ember/in-process", "W1", "ratios", "decode_tps", "ember/in-process", (">=", 0.95)),
    ("W1 decode ember/llama-server", "W1", "ratios", "decode_tps", "ember/llama-server", None),
    ("W2 aggregate ember/llama_cpp.server", "W2", "ratios", "aggregate_tps", "ember/llama_cpp.server", (">=", 2.5)),
    ("W2 aggregate ember/llama-server", "W2", "ratios", "aggregate_tps", "ember/llama-server", (">=", 0.95)),
    ("W2 aggregate ember/in-process limit", "W2", "ratios", "aggregate_tps", "ember/in-process", (">=", 0.8)),
    ("W2 from requests' start ember/llama-server", "W2", "ratios", "wall_tps", "ember/llama-server", None),
    ("W2 p95 TTFT ember/llama_cpp.server", "W2", "ratios", "p95_ttft_s", "ember/llama_cpp.server", ("<=", 0.5)),
    ("W2 p95 TTFT ember/llama-server", "W2", "ratios", "p95_ttft_s", "ember/llama-server", None),
    ("W3 ember later-turn / first-turn TTFT", "W3", "figures", "later_over_first", "ember", ("<=", 0.2)),
    ("W3 later-turn TTFT ember/llama-server", "W3", "ratios", "later_turn_ttft_s", "ember/llama-server", None),
    ("W4 ember's rate kept", "W4", "figures", "kept", "ember", (">=", 0.5)),
    ("W4 prompt read time ember/llama-server", "W4", "ratios", "long_prompt_s", "ember/llama-server", None),
]


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _cell(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "—"
    if s["n"] == 1:
        return _fmt(s["median"])
    return f"{_fmt(s['median'])} [{_fmt(s['min'])}–{_fmt(s['max'])}]"


def figure_rows(results: dict) -> list[tuple[str, dict[str, dict | None]]]:
    rows = []
    for label, workload, key, columns in ROWS:
        if workload in results:
            figures = results[workload]["figures"]
            rows.append((label, {c: figures.get(c, {}).get(key) if c in columns else None for c in COLUMNS}))
    return rows


def goal_rows(results: dict) -> list[tuple[str, dict | None, tuple | None, bool | None]]:
    rows = []
    for label, workload, kind, figure, key, goal in GOALS:
        if workload not in results:
            continue
        if kind == "ratios":
            s = results[workload]["ratios"].get(figure, {}).get(key)
        else:  # one peer's own figure
            s = results[workload]["figures"].get(key, {}).get(figure)
        met = None
        if goal and s and s.get("median") is not None:
            met = s["median"] >= goal[1] if goal[0] == ">=" else s["median"] <= goal[1]
        rows.append((label, s, goal, met))
    return rows


def report(results: dict, out_dir: Path) -> None:
    setup = results["setup"]
    print(f"threads {results['config']['threads']}; per-slot context {setup[EMBER]['context_length_per_slot']}; "
          f"slots: ember {setup[EMBER]['slots']}, llama-server {setup[LLAMA_SERVER]['slots']}, llama_cpp.server 1; "
          f"W1/W2 {results['config']['rounds']} rounds; median [min–max] over rounds")
    width = 44
    print(f"{'workload':<{width}}" + "".join(f"{c:>22}" for c in COLUMNS))
    for label, cells in figure_rows(results):
        print(f"{label:<{width}}" + "".join(f"{_cell(cells[c]):>22}" for c in COLUMNS))
    print()
    print(f"{'ratio, round by round':<{width}}{'median [min–max]':>22}  goal")
    for label, s, goal, met in goal_rows(results):
        verdict = "" if goal is None else f"{'≥' if goal[0] == '>=' else '≤'} {goal[1]}  " + \
            ("met" if met else "NOT MET")
        print(f"{label:<{width}}{_cell(s):>22}  {verdict}")
    for workload in ("W1", "W2"):  # a peer that stopped early (end of text) would be timed on less work
        made = {name: f["tokens"]["median"] for name, f in results.get(workload, {}).get("figures", {}).items()
                if "tokens" in f}
        if made and max(made.values()) > 1.02 * min(made.values()):
            print(f"note: {workload}'s peers made different numbers of tokens (medians: {made})")
    print(f"\nwrote {out_dir / 'serve.json'}" + (f" and {out_dir / 'serve.png'}" if plot(results, out_dir) else ""))


def plot(results: dict, out_dir: Path) -> bool:
    """Medians as bars, min–max over rounds as error bars; the ratios against their goals in the last panel."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = figure_rows(results)
    goals = [(label, s, goal) for label, s, goal, _met in goal_rows(results) if s and s.get("median") is not None]
    colors = {FLOOR: "#999999", EMBER: "#d9534f", LLAMA_SERVER: "#f0ad4e", LLAMA_CPP_SERVER: "#5b8def"}
    cols = 4
    lines = (len(rows) + cols - 1) // cols
    fig = plt.figure(figsize=(4.2 * cols, 3.2 * lines + 0.28 * len(goals) + 1))
    grid = fig.add_gridspec(lines + 1, cols, height_ratios=[3.2] * lines + [0.28 * len(goals) + 0.8])
    for i, (label, cells) in enumerate(rows):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        shown = [c for c in COLUMNS if cells[c] and cells[c].get("median") is not None]
        medians = [cells[c]["median"] for c in shown]
        errors = [[cells[c]["median"] - cells[c]["min"] for c in shown],
                  [cells[c]["max"] - cells[c]["median"] for c in shown]]
        ax.bar(range(len(shown)), medians, yerr=errors, capsize=4, color=[colors[c] for c in shown])
        ax.set_xticks(range(len(shown)), shown, fontsize=6.5, rotation=15)
        ax.set_title(label, fontsize=8)
    ax = fig.add_subplot(grid[lines, :])
    ys = list(range(len(goals)))
    ax.errorbar([s["median"] for _l, s, _g in goals], ys, capsize=3, fmt="o", color="#d9534f",
                xerr=[[s["median"] - s["min"] for _l, s, _g in goals], [s["max"] - s["median"] for _l, s, _g in goals]])
    for y, (_l, _s, goal) in zip(ys, goals, strict=True):
        if goal:
            ax.plot([goal[1]], [y], marker="|", markersize=12, markeredgewidth=2, color="black")
    ax.axvline(1.0, color="#cccccc", linewidth=0.8, zorder=0)
    ax.set_yticks(ys, [label for label, _s, _g in goals], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [0.05, 0.1, 0.2, 0.5, 1, 2, 5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_title("ember's ratios, round by round: median and min–max (| = goal)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "serve.png", dpi=120)
    plt.close(fig)
    return True
