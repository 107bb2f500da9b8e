"""What does ember's API cost a single user? Generation speed through /api/generate vs llama-cpp-python in-process.

Same GGUF, same context size, threads and greedy sampling, measured in alternating rounds in one run (the harness in
ember.bench). Prints each path's min / median / max over rounds and the per-round ratio, and writes
bench/results/generate_overhead.json. Goal: the API costs at most 5 %.

    .venv/bin/python bench/generate_overhead.py [--rounds 5] [--tokens 256] [--out bench/results]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from ember.bench.harness import ember_server, in_turns, ratios, spread

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ("<|im_start|>user\nWrite a long story about a lighthouse keeper and a storm.<|im_end|>\n"
          "<|im_start|>assistant\n")


def via_api(url: str, tokens: int, ctx: int, threads: int) -> dict:
    """Times the stream as it arrives; only the last line is parsed, so the client itself costs next to nothing."""
    body = {"model": "smollm2", "prompt": PROMPT, "raw": True, "stream": True,
            "options": {"temperature": 0, "seed": 1, "num_predict": tokens, "num_ctx": ctx, "num_thread": threads}}
    started, first, last, tail = time.perf_counter(), None, None, b""
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=300) as response:
        for chunk in response.iter_raw():
            now = time.perf_counter()
            first = first or now
            if b'"done":false' in chunk:
                last = now
            tail = (tail + chunk)[-2048:]
    done = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    n = done["eval_count"]
    return {"tokens": n, "decode_tps": (n - 1) / (last - first), "total_s": last - started,
            "server_reported_tps": n / (done["eval_duration"] / 1e9)}


def in_process(llm, tokens: int) -> dict:
    prompt = llm.tokenize(PROMPT.encode(), special=True)
    started, first, n = time.perf_counter(), None, 0
    for token in llm.generate(prompt, temp=0, top_k=40, top_p=0.9, min_p=0.0, repeat_penalty=1.0):
        if llm._model.token_eos() == token:
            break
        now = time.perf_counter()
        first = first or now
        last = now
        n += 1
        if n >= tokens:
            break
    return {"tokens": n, "decode_tps": (n - 1) / (last - first), "total_s": last - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from llama_cpp import Llama

    from ember.store.store import ModelStore

    with tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp:
        home = Path(tmp)
        store = ModelStore(home / "models")
        store.pull("smollm2")
        gguf = store.get("smollm2").model_path
        llm = Llama(str(gguf), n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        try:
            with ember_server(home) as server:
                via_api(server.url, 8, args.ctx, args.threads)  # load the model and warm both paths
                in_process(llm, 8)
                # In turns, the order alternating round by round, so both see the same machine.
                runs = in_turns(args.rounds, {"in_process": lambda: in_process(llm, args.tokens),
                                              "api": lambda: via_api(server.url, args.tokens, args.ctx, args.threads)})
        finally:
            llm.close()

    api_runs, local_runs = runs["api"], runs["in_process"]
    api_tps = spread(r["decode_tps"] for r in api_runs)
    local_tps = spread(r["decode_tps"] for r in local_runs)
    # Rounds are adjacent in time, so the per-round ratios cancel most of the machine's drift.
    ratio = ratios([r["decode_tps"] for r in api_runs], [r["decode_tps"] for r in local_runs])
    print(f"single stream, {args.tokens} tokens, greedy, num_ctx {args.ctx}, {args.threads} threads, "
          f"{args.rounds} alternating rounds")
    print(f"{'path':<34}{'decode tok/s: median':>22}{'min':>8}{'max':>8}{'tokens':>8}")
    for label, s, runs_ in (("llama-cpp-python in-process", local_tps, local_runs),
                            ("ember /api/generate (streamed)", api_tps, api_runs)):
        print(f"{label:<34}{s['median']:>22.1f}{s['min']:>8.1f}{s['max']:>8.1f}{runs_[0]['tokens']:>8}")
    print(f"per-round ratio ember/in-process: median {ratio['median']:.3f} (min {ratio['min']:.3f}, max "
          f"{ratio['max']:.3f}); API overhead {100 * (1 - ratio['median']):.1f} %; goal ≤ 5 %")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate_overhead.json").write_text(json.dumps({
        "tokens": args.tokens, "num_ctx": args.ctx, "threads": args.threads, "rounds": args.rounds,
        "in_process": local_runs, "api": api_runs, "decode_tps": {"in_process": local_tps, "api": api_tps},
        "ratio": ratio, "goal_met": ratio["median"] >= 0.95}, indent=2))


if __name__ == "__main__":
    main()
