"""Load: concurrent clients for minutes against the bundled model; zero 5xx, every request answered or refused with
503 + Retry-After, the server's memory flat after warm-up.

Each client loops over a mix of requests (chat and generate, streamed and not, in both dialects; embeddings; the
listing, status and health routes) with small num_predict, so that two cores serve many of them. A failure is any
status other than 2xx and 503-with-Retry-After, a connection error or timeout, an error inside a stream, or a stream
that ends without its last message. The server's RSS is sampled throughout: "flat" means it grew by at most
min(50 MB, 10 %) between the end of warm-up and the end of the run. Exit status 1 on any failure or growth.

    .venv/bin/python bench/load.py [--clients 32] [--minutes 10] [--max-queue N] [--out bench/results]
"""

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from ember.bench.harness import ember_server
from ember.store.store import ModelStore

MODEL = "smollm2"
RSS_EVERY_S = 2.0
FLAT_MB, FLAT_FRACTION = 50.0, 0.10  # growth after warm-up allowed: the smaller of the two (a leak shows in 10 min)
CLIENT_TIMEOUT_S = 300  # a request still unanswered after this counts as a failure (timeout)
WORDS = ["river", "lantern", "storm", "harbor", "morning", "garden", "letter", "window", "mountain", "silver", "candle",
         "market", "bridge", "forest", "winter", "keeper", "story", "road", "quiet", "island"]

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@dataclass
class Result:
    route: str  # the request kind, e.g. "/api/chat stream"
    started: float  # seconds since the run began
    latency: float  # seconds until the whole answer (the last byte of a stream) arrived
    status: int | None  # None: no answer (connection error, timeout)
    retry_after: str | None = None  # the 503's Retry-After header
    problem: str = ""  # why it counts as a failure; "" when it does not

    @property
    def failed(self) -> bool:
        return bool(self.problem)


# -- the requests --------------------------------------------------------------------------------------------------

def _prompt(rng: random.Random) -> str:
    # Fresh words per request, so that no answer comes from a prompt cache alone.
    return "Tell a short story about " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "."


def _messages(rng: random.Random) -> list[dict]:
    return [{"role": "user", "content": _prompt(rng)}]


def _options(rng: random.Random) -> dict:
    return {"num_predict": rng.randint(16, 32), "temperature": 0.7, "seed": rng.randint(0, 1 << 30)}


# kind: (weight, method, path, streamed, body maker). Generation weighs most: it is what fills the queue.
KINDS = {
    "/api/chat stream": (3, "POST", "/api/chat", "ndjson",
                         lambda r: {"model": MODEL, "messages": _messages(r), "options": _options(r)}),
    "/api/chat": (2, "POST", "/api/chat", None,
                  lambda r: {"model": MODEL, "messages": _messages(r), "options": _options(r), "stream": False}),
    "/v1/chat/completions stream": (3, "POST", "/v1/chat/completions", "sse",
                                    lambda r: {"model": MODEL, "messages": _messages(r), "stream": True,
                                               "max_tokens": r.randint(16, 32)}),
    "/v1/chat/completions": (2, "POST", "/v1/chat/completions", None,
                             lambda r: {"model": MODEL, "messages": _messages(r), "max_tokens": r.randint(16, 32)}),
    "/api/generate stream": (1, "POST", "/api/generate", "ndjson",
                             lambda r: {"model": MODEL, "prompt": _prompt(r), "options": _options(r)}),
    "/api/generate": (1, "POST", "/api/generate", None,
                      lambda r: {"model": MODEL, "prompt": _prompt(r), "options": _options(r), "stream": False}),
    "/api/embed": (2, "POST", "/api/embed", None,
                   lambda r: {"model": MODEL, "input": [_prompt(r) for _ in range(r.randint(1, 3))]}),
    "/api/tags": (1, "GET", "/api/tags", None, None),
    "/api/ps": (1, "GET", "/api/ps", None, None),
    "/api/show": (1, "POST", "/api/show", None, lambda r: {"model": MODEL}),
    "/metrics": (1, "GET", "/metrics", None, None),
    "/health": (1, "GET", "/health", None, None),
}


def _stream_problem(kind: str, lines: list[str]) -> str:
    """What is wrong with a streamed answer sent with 200: an error line inside it, or no last message."""
    finished = False
    for line in lines:
        if kind == "sse":
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                finished = True
                continue
            line = line[6:]
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            return f"unparseable stream line {line[:80]!r}"
        if isinstance(event, dict) and event.get("error"):
            return f"error in stream: {str(event['error'])[:200]}"
        if kind == "ndjson" and isinstance(event, dict) and event.get("done"):
            finished = True
    return "" if finished else "stream ended without its last message"


async def one_request(client: httpx.AsyncClient, kind: str, rng: random.Random, t0: float) -> Result:
    _weight, method, path, streamed, make_body = KINDS[kind]
    body = make_body(rng) if make_body else None
    started = time.perf_counter()
    result = Result(kind, started - t0, 0.0, None)
    try:
        async with client.stream(method, path, json=body) as response:
            result.status = response.status_code
            text = (await response.aread()).decode("utf-8", errors="replace")
        result.retry_after = response.headers.get("retry-after")
        if response.status_code == 503:
            if not result.retry_after:
                result.problem = f"503 without Retry-After: {text[:200]}"
        elif not 200 <= response.status_code < 300:
            result.problem = f"{response.status_code}: {text[:200]}"
        elif streamed:
            result.problem = _stream_problem(streamed, text.splitlines())
    except httpx.HTTPError as e:
        result.problem = f"{type(e).__name__}: {e}"[:200]
    result.latency = time.perf_counter() - started
    return result


async def client_loop(client: httpx.AsyncClient, seed: int, t0: float, deadline: float,
                      results: list[Result]) -> None:
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    while time.perf_counter() < deadline:
        result = await one_request(client, rng.choices(kinds, weights)[0], rng, t0)
        results.append(result)
        if result.status == 503 and result.retry_after:
            # A polite client waits as told (capped, so that a bad header cannot stall the run).
            await asyncio.sleep(min(float(result.retry_after) if result.retry_after.isdigit() else 1.0, 5.0))


# -- memory ----------------------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:  # the process is gone
        return None
    try:
        match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


async def sample_rss(pid: int, t0: float, samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        mb = rss_mb(pid)
        if mb is not None:
            samples.append((time.perf_counter() - t0, mb))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_EVERY_S)


def warm_after(results: list[Result], warmup_s: float) -> float:
    """When warm-up ends: the nominal time, or later if some request kind was first answered later (an engine, the
    embedding one say, loaded then: its memory is not growth)."""
    first_answered: dict[str, float] = {}
    for r in results:
        if r.status is not None and 200 <= r.status < 300 and not r.failed:
            done = r.started + r.latency
            first_answered[r.route] = min(first_answered.get(r.route, done), done)
    return max([warmup_s, *first_answered.values()])


def memory_verdict(samples: list[tuple[float, float]], warm_s: float, run_s: float) -> dict:
    """RSS at the end of warm-up and of the run (samples taken under load only), its growth, and the slope after
    warm-up by least squares. Fewer than three samples after warm-up: no verdict, which fails the run."""
    under_load = [s for s in samples if s[0] <= run_s]
    after = [s for s in under_load if s[0] >= warm_s]
    if len(after) < 3:
        return {"warmup_s": warm_s, "flat": False,
                "why": f"{len(after)} RSS samples after warm-up ({warm_s:.0f} s): run longer"}
    start_mb, end_mb = after[0][1], after[-1][1]
    allowed = min(FLAT_MB, FLAT_FRACTION * start_mb)
    slope = statistics.linear_regression([t / 60 for t, _ in after], [mb for _, mb in after]).slope
    return {"warmup_s": warm_s, "start_t_s": after[0][0], "start_mb": start_mb, "end_mb": end_mb,
            "max_mb": max(mb for _, mb in under_load), "first_mb": under_load[0][1],
            "growth_mb": end_mb - start_mb, "slope_mb_per_min": slope, "allowed_growth_mb": allowed,
            "flat": end_mb - start_mb <= allowed}


# -- the run ---------------------------------------------------------------------------------------------------------

async def drive(url: str, pid: int, clients: int,
                run_s: float) -> tuple[list[Result], list[tuple[float, float]], float]:
    results: list[Result] = []
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        t0 = time.perf_counter()
        sampler = asyncio.create_task(sample_rss(pid, t0, samples, stop))
        await asyncio.gather(*(client_loop(client, 1000 + i, t0, t0 + run_s, results) for i in range(clients)))
        elapsed = time.perf_counter() - t0
        stop.set()
        await sampler
    return results, samples, elapsed


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize(results: list[Result]) -> dict[str, dict]:
    by_route: dict[str, dict] = {}
    for kind in [*KINDS, "all"]:
        mine = [r for r in results if kind in ("all", r.route)]
        answered = [r.latency for r in mine if r.status is not None and 200 <= r.status < 300 and not r.failed]
        statuses: dict[str, int] = {}
        for r in mine:
            key = str(r.status) if r.status is not None else "no answer"
            statuses[key] = statuses.get(key, 0) + 1
        by_route[kind] = {"requests": len(mine), "statuses": dict(sorted(statuses.items())),
                          "refused_503_with_retry_after": sum(r.status == 503 and not r.failed for r in mine),
                          "failures": sum(r.failed for r in mine),
                          "p50_s": percentile(answered, 0.5), "p95_s": percentile(answered, 0.95)}
    return by_route


def timeline(results: list[Result], samples: list[tuple[float, float]], run_s: float) -> dict:
    """Requests finished per second, in buckets of about a hundredth of the run (at least a second)."""
    bucket = max(1.0, run_s / 100)
    counts: dict[int, list[int]] = {}  # bucket -> [answered, refused with 503 + Retry-After, failed]
    for r in results:
        slot = counts.setdefault(int((r.started + r.latency) // bucket), [0, 0, 0])
        slot[2 if r.failed else 1 if r.status == 503 else 0] += 1
    slots = range(max(counts, default=-1) + 1)  # every bucket, empty ones too: a stall shows as zero
    return {"bucket_s": bucket,
            "t_s": [(i + 0.5) * bucket for i in slots],
            "answered_per_s": [counts.get(i, [0, 0, 0])[0] / bucket for i in slots],
            "refused_per_s": [counts.get(i, [0, 0, 0])[1] / bucket for i in slots],
            "failed_per_s": [counts.get(i, [0, 0, 0])[2] / bucket for i in slots],
            "rss": [{"t_s": round(t, 2), "mb": round(mb, 1)} for t, mb in samples]}


def server_log_errors(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    lines = log_path.read_text(errors="replace").splitlines()
    # A 503 for a full queue is logged at ERROR too (as every 5xx is): those are expected here, the rest are not.
    return [line for line in lines
            if re.search(r"\bERROR\b|Traceback|unexpected error", line) and "server busy" not in line][:40]


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def report(summary: dict) -> None:
    table = Table(title=f"load: {summary['config']['clients']} clients, {summary['elapsed_s']:.0f} s")
    for column in ("route", "requests", "statuses", "503+Retry-After", "failures", "p50 s", "p95 s"):
        table.add_column(column, justify="left" if column in ("route", "statuses") else "right")
    for route, s in summary["by_route"].items():
        if not s["requests"]:
            continue
        table.add_row(route, str(s["requests"]), ", ".join(f"{k}×{v}" for k, v in s["statuses"].items()),
                      str(s["refused_503_with_retry_after"]), f"[red]{s['failures']}[/red]" if s["failures"] else "0",
                      _seconds(s["p50_s"]), _seconds(s["p95_s"]), end_section=route == list(KINDS)[-1])
    console.print(table)

    memory = summary["memory"]
    verdicts = Table(title="verdict", show_header=False)
    verdicts.add_column("what")
    verdicts.add_column("value", justify="right")
    all_routes = summary["by_route"]["all"]
    verdicts.add_row("requests / s", f"{all_routes['requests'] / summary['elapsed_s']:.1f}")
    verdicts.add_row("failures (5xx other than 503+Retry-After, 4xx, no answer, broken stream)",
                     str(all_routes["failures"]))
    if "start_mb" in memory:
        verdicts.add_row("RSS first sample / end of warm-up / end / max, MB",
                         f"{memory['first_mb']:.0f} / {memory['start_mb']:.0f} / {memory['end_mb']:.0f} / "
                         f"{memory['max_mb']:.0f}")
        verdicts.add_row(f"RSS growth after warm-up ({memory['warmup_s']:.0f} s), MB; allowed",
                         f"{memory['growth_mb']:+.1f}; {memory['allowed_growth_mb']:.0f}")
        verdicts.add_row("RSS slope after warm-up, MB/min", f"{memory['slope_mb_per_min']:+.2f}")
    verdicts.add_row("memory flat", "yes" if memory["flat"] else f"[red]NO[/red] {memory.get('why', '')}")
    verdicts.add_row("server log ERROR lines", str(len(summary["server_log_errors"])))
    verdicts.add_row("verdict", "[green]pass[/green]" if summary["passed"] else "[red]FAIL[/red]")
    console.print(verdicts)
    for failure in summary["failures"][:10]:
        console.print(f"[red]failure[/red] {failure['route']} at {failure['started']:.1f} s: {failure['problem']}")
    for line in summary["server_log_errors"][:10]:
        console.print(f"[yellow]server log[/yellow] {line}")


def plot(summary: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series, memory = summary["timeline"], summary["memory"]
    fig, (ax_rss, ax_rate) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax_rss.plot([s["t_s"] for s in series["rss"]], [s["mb"] for s in series["rss"]], color="#d9534f")
    if "start_mb" in memory:
        ax_rss.axvline(memory["warmup_s"], color="#999999", linestyle="--", linewidth=0.8, label="end of warm-up")
        ax_rss.axhline(memory["start_mb"] + memory["allowed_growth_mb"], color="#f0ad4e", linestyle=":",
                       linewidth=0.8, label="allowed growth")
        ax_rss.legend(fontsize=8)
    ax_rss.set_ylabel("server RSS, MB")
    ax_rss.set_title(f"bench/load.py: {summary['config']['clients']} clients, max queue "
                     f"{summary['config']['max_queue'] or 'default'}", fontsize=10)
    ax_rate.plot(series["t_s"], series["answered_per_s"], color="#5b8def", label="answered (2xx)")
    if any(series["refused_per_s"]):
        ax_rate.plot(series["t_s"], series["refused_per_s"], color="#f0ad4e", label="refused: 503 + Retry-After")
    if any(series["failed_per_s"]):
        ax_rate.plot(series["t_s"], series["failed_per_s"], color="#d9534f", label="failed")
    ax_rate.set_ylabel("requests / s")
    ax_rate.set_xlabel("seconds")
    ax_rate.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(clients: int, minutes: float, out: Path, max_queue: int | None) -> dict:
    run_s = minutes * 60
    # Warm-up: a tenth of the run, at least a minute, at most half of it (a short smoke run still has an "after").
    warmup_s = min(max(0.1 * run_s, 60.0), 0.5 * run_s)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"load-{stamp}.server.log"
    env = {"EMBER_MAX_QUEUE": str(max_queue)} if max_queue else {}
    home = Path(tempfile.mkdtemp(prefix="ember-load-"))
    try:
        ModelStore(home / "models").pull(MODEL)
        with ember_server(home, log_path=log_path, **env) as server:
            console.print(f"load: server pid {server.proc.pid} at {server.url}; {clients} clients for "
                          f"{run_s:.0f} s (warm-up {warmup_s:.0f} s); log {log_path}")
            results, samples, elapsed = asyncio.run(drive(server.url, server.proc.pid, clients, run_s))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    memory = memory_verdict(samples, warm_after(results, warmup_s), run_s)
    by_route = summarize(results)
    errors = server_log_errors(log_path)
    summary = {"config": {"clients": clients, "minutes": minutes, "max_queue": max_queue, "out": str(out),
                          "flat_rule": f"RSS growth after warm-up <= min({FLAT_MB:.0f} MB, {FLAT_FRACTION:.0%})"},
               "started": stamp, "elapsed_s": elapsed, "by_route": by_route, "memory": memory,
               "failures": [asdict(r) for r in results if r.failed][:100],
               "server_log_errors": errors, "server_log": str(log_path),
               "timeline": timeline(results, samples, run_s),
               "passed": by_route["all"]["failures"] == 0 and memory["flat"]}
    json_path = out / f"load-{stamp}.json"
    json_path.write_text(json.dumps(summary, indent=2))
    report(summary)
    png_path = out / f"load-{stamp}.png"
    console.print(f"wrote {json_path}" + (f" and {png_path}" if plot(summary, png_path) else ""))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the clients send (fractions allowed)")
    parser.add_argument("--max-queue", type=int, help="EMBER_MAX_QUEUE for the server (default: the server's own)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON, PNG and log go")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.minutes <= 0:
        parser.error("--clients and --minutes must be positive")
    return 0 if run(args.clients, args.minutes, args.out, args.max_queue)["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
