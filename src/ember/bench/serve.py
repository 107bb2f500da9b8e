"""`ember bench serve`: ember against llama-cpp-python's server and the engine itself, on the same GGUF and threads.

Workloads (issue 3), driven from this process over HTTP, one peer at a time:
  W1 one stream: 128-token prompt, 256 tokens, greedy
  W2 eight concurrent streams: different 64-token prompts, 128 tokens each
  W3 two conversations alternating turns, each with its own ~1000-token system prompt, eight turns each
  W4 a 3000-token prompt arriving while eight streams run: their token rate while it is read
plus the floors measured in-process with llama.cpp and no server, beside each peer's runs: one stream, and eight
sequences in one batch.
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx


WORDS = ("the river keeper lantern storm harbor morning garden letter window mountain silver quiet story "
         "road winter candle market bridge forest").split()


@dataclass
class Stream:
    sent: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent if self.token_times else float("nan")


def text_of_tokens(llm, n: int, seed: int) -> str:
    """Some prose that is exactly `n` tokens for this model's tokenizer."""
    words = [WORDS[(seed * 7 + i * 13) % len(WORDS)] for i in range(n * 2)]
    tokens = llm.tokenize(" ".join(words).encode(), add_bos=False)[:n]
    return llm.detokenize(tokens).decode("utf-8", errors="ignore")


class Peer:
    """A server speaking the OpenAI API, started for its turn and stopped after."""

    def __init__(self, name: str, command: list[str], port: int, env: dict | None = None):
        self.name, self.command, self.port = name, command, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env

    def __enter__(self):
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not start: {' '.join(self.command)}")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)


def stream_completion(url: str, model: str, prompt: str | list, max_tokens: int, chat: bool = False,
                      record: Stream | None = None, stop: threading.Event | None = None) -> Stream:
    """One streamed request; the time each piece of text arrived. `stop` set: hang up, as a client that leaves.

    The standard library's blocking client, one thread per stream: on two cores the measuring side has to be cheap
    (httpx's async client spent ~0.6 ms of CPU per token here, 0.2 ms for this), or it slows the server it measures.
    """
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["messages" if chat else "prompt"] = prompt
    record = record or Stream(time.perf_counter())
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=900)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise SystemExit(f"{url}{path} answered {response.status}: {response.read()[:300]!r}")
        while not (stop and stop.is_set()):
            line = response.readline()
            if not line:
                break
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choice = (json.loads(line[6:]).get("choices") or [{}])[0]
            if (choice.get("delta", {}).get("content") if chat else choice.get("text")):
                record.token_times.append(time.perf_counter())
    finally:
        conn.close()
    return record


def concurrently(calls: list) -> list:
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def rate(streams: list[Stream], start: float, end: float) -> float:
    return sum(1 for s in streams for t in s.token_times if start <= t < end) / max(end - start, 1e-9)


def decode_tps(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def in_turns(rounds: int, ours, floor) -> tuple[list, list]:
    """Runs `ours` and the in-process `floor` once per round, alternating which goes first, so both see the same
    machine; the ratios are taken round by round, as the machine's speed drifts between rounds."""
    our_runs, floor_runs = [], []
    for i in range(rounds):
        for run in ((floor, ours) if i % 2 == 0 else (ours, floor)):
            (floor_runs if run is floor else our_runs).append(run())
    return our_runs, floor_runs


def w1(url, model, prompt, engine, rounds: int = 6) -> dict:
    """One stream, in turns with the same stream run in-process."""
    stream_completion(url, model, prompt, 8)  # load and warm
    ours, floor = in_turns(rounds, lambda: stream_completion(url, model, prompt, 256), engine)
    rates = [decode_tps(r.token_times) for r in ours]
    return {"decode_tps": statistics.median(rates), "in_process_decode_tps": statistics.median(floor),
            "ratio": statistics.median(r / f for r, f in zip(rates, floor)),
            "ttft_s": statistics.median(r.ttft for r in ours), "tokens": len(ours[0].token_times)}


def w2(url, model, prompts, limit, rounds: int = 3, max_tokens=128) -> dict:
    """Eight streams at once, in turns with the in-process limit; each figure is the median over rounds."""
    stream_completion(url, model, prompts[0], 4)
    runs, limits = in_turns(rounds, lambda: eight_streams(url, model, prompts, max_tokens), limit)
    return {"in_process_limit_tps": statistics.median(limits),
            **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
            "limit_ratio": statistics.median(r["aggregate_tps"] / f for r, f in zip(runs, limits))}


def eight_streams(url, model, prompts, max_tokens) -> dict:
    start = time.perf_counter()
    streams = concurrently([lambda p=p: stream_completion(url, model, p, max_tokens) for p in prompts])
    first, last = min(s.token_times[0] for s in streams), max(s.token_times[-1] for s in streams)
    tokens = sum(len(s.token_times) for s in streams)
    ttfts = sorted(s.ttft for s in streams)
    # Decoding rate over the span in which the streams decode, the quantity the in-process batch limit measures;
    # the rate from the requests' start (prompts read included) is kept too.
    return {"aggregate_tps": (tokens - len(streams)) / (last - first), "wall_tps": tokens / (last - start),
            "p95_ttft_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))], "tokens": tokens}


def w3(url, model, systems, turns=8) -> dict:
    """Two conversations take turns; each turn resends its whole history, as chat clients do."""
    histories = [[{"role": "system", "content": s}] for s in systems]
    ttfts: list[list[float]] = [[], []]
    for turn in range(turns):
        for c, history in enumerate(histories):
            history.append({"role": "user", "content": f"Question {turn + 1}: what happens next in the story?"})
            ttfts[c].append(stream_completion(url, model, history, 24, chat=True).ttft)
            history.append({"role": "assistant", "content": "Then the keeper lit the lantern again."})
    return {"first_turn_ttft_s": [t[0] for t in ttfts],
            "later_turns_median_ttft_s": [statistics.median(t[1:]) for t in ttfts],
            "ratio": max(statistics.median(t[1:]) / t[0] for t in ttfts)}


def w4(url, model, prompts, long_prompt) -> dict:
    """Eight streams generate; once all have started (or 10 s passed), a 3000-token prompt arrives.

    The streams ask for more tokens than they get to make and hang up 2 s after the long prompt is read, so they run
    throughout. Their rate while it is read is compared with their rate in the 2 s before it arrived and the 2 s after
    (the mean of the two: streams slow down as their own context grows, whatever else happens). A server that serves
    one request at a time reads the long prompt only after all of them; then the rate before is the baseline.
    """
    stream_completion(url, model, prompts[0], 4)
    stop = threading.Event()
    streams = [Stream(time.perf_counter()) for _ in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        running = [pool.submit(stream_completion, url, model, p, 1500, record=record, stop=stop)
                   for p, record in zip(prompts, streams)]
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline and not all(s.token_times for s in streams):
            time.sleep(0.05)
        time.sleep(2.0)
        long_sent = time.perf_counter()
        long = stream_completion(url, model, long_prompt, 1)
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


def single_stream(llm, prompt_tokens: list[int]) -> float:
    """The engine floor for one stream: llama-cpp-python generating in this process, no server; decode tokens/s."""
    llm.reset()
    stamps = []
    for n, _token in enumerate(llm.generate(prompt_tokens, temp=0, top_k=40, top_p=0.9, min_p=0.0)):
        stamps.append(time.perf_counter())
        if n + 1 >= 256:
            break
    return decode_tps(stamps)


def batched_limit(gguf: Path, threads: int, batch_prompts: list[list[int]]) -> float:
    """The machine's limit for eight streams: eight sequences decoded in one llama_decode each step, no server."""
    import llama_cpp

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out_dir: Path, threads: int, quick: bool = False) -> dict:
    from llama_cpp import Llama

    from ember.store.store import ModelStore

    home = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    store = ModelStore(home / "models")
    store.pull("smollm2")
    gguf = store.get("smollm2").model_path
    llm = Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt128 = text_of_tokens(llm, 128, 0)
    prompts64 = [text_of_tokens(llm, 64, i + 1) for i in range(8)]
    systems = [f"You are narrator {c}. " + text_of_tokens(llm, 1000, 20 + c) for c in range(2)]
    long_prompt = text_of_tokens(llm, 3000, 99)
    prompt128_tokens = llm.tokenize(prompt128.encode(), add_bos=False)
    batch_prompts = [llm.tokenize(p.encode(), add_bos=False) for p in prompts64]

    ember_env = {**os.environ, "EMBER_HOME": str(home)}  # slots sized by ember itself, as a user gets them
    peers = {
        "ember": lambda port: Peer("ember", [sys.executable, "-m", "ember", "serve"], port,
                                   {**ember_env, "EMBER_HOST": f"127.0.0.1:{port}"}),
        "llama_cpp.server": lambda port: Peer("llama_cpp.server", [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--interrupt_requests", "False"], port),
    }
    results: dict = {"threads": threads}
    for name, make in peers.items():
        with make(free_port()) as peer:
            # The in-process floors are measured while each peer idles, in turns with its own runs.
            r = {"W1": w1(peer.url, "smollm2", prompt128, lambda: single_stream(llm, prompt128_tokens)),
                 "W2": w2(peer.url, "smollm2", prompts64, lambda: batched_limit(gguf, threads, batch_prompts))}
            if not quick:
                r["W3"] = w3(peer.url, "smollm2", systems)
                r["W4"] = w4(peer.url, "smollm2", prompts64, long_prompt)
            results[name] = r
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.json").write_text(json.dumps(results, indent=2))
    report(results, out_dir)
    return results


def report(results: dict, out_dir: Path) -> None:
    e, p = results["ember"], results["llama_cpp.server"]
    floor1, limit = e["W1"]["in_process_decode_tps"], e["W2"]["in_process_limit_tps"]
    rows = [
        ("W1 decode tok/s (1 stream)", floor1, e["W1"]["decode_tps"], p["W1"]["decode_tps"],
         f"ember/in-process {e['W1']['ratio']:.2f}, median of rounds (≥ 0.95)"),
        ("W2 aggregate decode tok/s (8 streams)", limit, e["W2"]["aggregate_tps"], p["W2"]["aggregate_tps"],
         f"ember/server {e['W2']['aggregate_tps'] / p['W2']['aggregate_tps']:.2f} (≥ 2.5), "
         f"ember/limit {e['W2']['limit_ratio']:.2f} by round (≥ 0.8)"),
        ("W2 tok/s from the requests' start", None, e["W2"]["wall_tps"], p["W2"]["wall_tps"], "prompts read included"),
        ("W2 p95 time to first token, s", None, e["W2"]["p95_ttft_s"], p["W2"]["p95_ttft_s"],
         f"ember/server {e['W2']['p95_ttft_s'] / p['W2']['p95_ttft_s']:.2f} (≤ 0.5)"),
    ]
    if "W3" in e:
        rows.append(("W3 later-turn TTFT / first-turn TTFT", None, e["W3"]["ratio"], p["W3"]["ratio"], "ember ≤ 0.2"))
        rows.append(("W4 streams' rate kept during a 3000-token prompt", None, e["W4"]["kept"], p["W4"]["kept"],
                     "ember ≥ 0.5"))
        rows.append(("W4 time to read the 3000-token prompt, s", None, e["W4"]["long_prompt_s"],
                     p["W4"]["long_prompt_s"], "(the price of keeping the others' pace)"))
    print(f"{'workload':<48}{'in-process':>12}{'ember':>10}{'llama_cpp.server':>18}  goal")
    for label, floor, ours, theirs, goal in rows:
        fmt = lambda v: f"{v:.2f}" if v is not None else "—"  # noqa: E731
        print(f"{label:<48}{fmt(floor):>12}{fmt(ours):>10}{fmt(theirs):>18}  {goal}")
    plot(rows, out_dir / "serve.png")


def plot(rows, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cols = (len(rows) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 7), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, (label, floor, ours, theirs, _goal) in zip(axes.flat, rows):
        names = (["in-process"] if floor is not None else []) + ["ember", "llama_cpp.server"]
        values = ([floor] if floor is not None else []) + [ours, theirs]
        ax.bar(names, values, color=["#999999"] * (floor is not None) + ["#d9534f", "#5b8def"])
        ax.set_title(label, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="ember serving benchmark (issue 3 workloads)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true", help="only W1 and W2")
    args = parser.parse_args(argv)
    run(args.out, args.threads, args.quick)


if __name__ == "__main__":
    main()
