"""What does ember's API cost a single user? Generation speed through /api/generate vs llama-cpp-python in-process.

Same GGUF, same context size, threads and greedy sampling, measured alternately in one run. Prints a table and writes
bench/results/generate_overhead.json. Goal (issue 2): the API costs at most 5 %.

    .venv/bin/python bench/generate_overhead.py [--rounds 5] [--tokens 256]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper and a storm.<|im_end|>\n<|im_start|>assistant\n"


def start_server(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_HOST": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("ember serve did not start")


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
    args = parser.parse_args()

    from llama_cpp import Llama

    from ember.store.store import ModelStore

    home = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    store = ModelStore(home / "models")
    store.pull("smollm2")
    gguf = store.get("smollm2").model_path
    port = 18000 + os.getpid() % 1000
    server = start_server(home, port)
    url = f"http://127.0.0.1:{port}"
    llm = Llama(str(gguf), n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    try:
        via_api(url, 8, args.ctx, args.threads)  # load the model and warm both paths
        in_process(llm, 8)
        api_runs, local_runs = [], []
        for _ in range(args.rounds):
            api_runs.append(via_api(url, args.tokens, args.ctx, args.threads))
            local_runs.append(in_process(llm, args.tokens))
    finally:
        server.terminate()
        server.wait()

    api_tps = statistics.median(r["decode_tps"] for r in api_runs)
    local_tps = statistics.median(r["decode_tps"] for r in local_runs)
    # Rounds are adjacent in time, so the median of per-round ratios cancels most of the machine's drift.
    ratio = statistics.median(a["decode_tps"] / b["decode_tps"] for a, b in zip(api_runs, local_runs))
    print(f"single stream, {args.tokens} tokens, greedy, num_ctx {args.ctx}, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds")
    print(f"{'path':<34}{'decode tok/s':>14}{'tokens':>8}")
    print(f"{'llama-cpp-python in-process':<34}{local_tps:>14.1f}{local_runs[0]['tokens']:>8}")
    print(f"{'ember /api/generate (streamed)':<34}{api_tps:>14.1f}{api_runs[0]['tokens']:>8}")
    print(f"median per-round ratio ember/in-process: {ratio:.3f}  (API overhead {100 * (1 - ratio):.1f} %; goal ≤ 5 %)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate_overhead.json").write_text(json.dumps({
        "tokens": args.tokens, "num_ctx": args.ctx, "threads": args.threads, "rounds": args.rounds,
        "in_process": local_runs, "api": api_runs, "median_tps": {"in_process": local_tps, "api": api_tps},
        "ratio": ratio, "goal_met": ratio >= 0.95}, indent=2))


if __name__ == "__main__":
    main()
