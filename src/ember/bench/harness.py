"""The benchmark harness, shared by the benchmarks (`ember bench serve`, bench/) and the integration tests: servers
started on loopback and waited for, a streaming client timed token by token, peers run in alternating rounds, and
each figure's spread over those rounds."""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
A = TypeVar("A")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ember_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """This process's environment without its EMBER_* settings, pointed at `home` and a loopback port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_HOST=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1", **extra)
    return env


class ServerProcess:
    """A server command in a subprocess, ready once `ready_path` answers 200; its output goes to `log_path`."""

    def __init__(self, name: str, command: list[str], port: int, *, env: dict[str, str] | None = None,
                 ready_path: str = "/v1/models", log_path: Path | None = None, start_timeout: float = 120):
        self.name, self.command, self.port, self.env = name, command, port, env
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path, self.log_path, self.start_timeout = ready_path, log_path, start_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (stop() closes it)
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.ready_path} within {self.start_timeout:.0f} s: "
                           f"{' '.join(self.command)}\n{self.log_text()}")

    def log_text(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ember_server(home: Path, *, port: int | None = None, log_path: Path | None = None,
                 **env: str) -> ServerProcess:
    """`python -m ember serve` as a user starts it, with its data in `home` and settings from `env`."""
    port = port or free_port()
    return ServerProcess("ember serve", [sys.executable, "-m", "ember", "serve"], port,
                         env=ember_env(home, port, **env), ready_path="/health", log_path=log_path)


# -- the client: streamed requests, timed as they arrive ----------------------------------------------------------

@dataclass
class Stream:
    """One streamed request: when it was sent and when each piece of text arrived (perf_counter seconds)."""

    sent: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent if self.token_times else float("nan")


def stream_completion(url: str, model: str, prompt: str | list, max_tokens: int, chat: bool = False,
                      record: Stream | None = None, stop: threading.Event | None = None) -> Stream:
    """One streamed OpenAI-style request (`/v1/completions`, or `/v1/chat/completions` with `chat` and a list of
    messages), greedy; the time each piece of text arrived. `stop` set: hang up, as a client that leaves.

    The standard library's blocking client, one thread per stream: on two cores the measuring side has to be cheap
    (httpx's async client spent ~0.6 ms of CPU per token here, 0.2 ms for this), or it slows the server it measures.
    """
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["messages" if chat else "prompt"] = prompt
    record = record or Stream(time.perf_counter())
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=900)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{url}{path} answered {response.status}: {response.read()[:300]!r}")
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


def concurrently(calls: list[Callable[[], T]]) -> list[T]:
    """Runs the calls at once, one thread each; their results in order (the first failure is raised)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def decode_tps(stamps: list[float]) -> float:
    """Tokens per second between the first token and the last (the first one's wait left out)."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")


def rate(streams: list[Stream], start: float, end: float) -> float:
    """The streams' tokens per second between `start` and `end`, all together."""
    return sum(1 for s in streams for t in s.token_times if start <= t < end) / max(end - start, 1e-9)


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all processes; /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


# -- rounds: peers in turns, figures as min / median / max ---------------------------------------------------------

def in_turns(rounds: int, runners: dict[str, Callable[[], T]],
             after_round: Callable[[int], None] | None = None) -> dict[str, list[T]]:
    """Runs every runner once per round, so all see the same machine, whose speed drifts 15 % within minutes here;
    figures compared round by round (`ratios`) then cancel most of that drift. The order is reversed every other
    round and rotated every two, so each runner goes first, and runs before and after each other, about as often
    (two runners: ab, ba, ba, ab, ...). Returns each runner's results, one per round, in round order; `after_round`
    is called with each finished round's number (from 1), to show progress."""
    results: dict[str, list[T]] = {name: [] for name in runners}
    for i in range(rounds):
        for name in round_order(list(runners), i):
            results[name].append(runners[name]())
        if after_round:
            after_round(i + 1)
    return results


def per_round(run: Callable[[A], T], items: Iterable[A]) -> Callable[[], T]:
    """A runner for `in_turns` that takes the next of `items` each round: each runner made from the same items gets
    the same one in a round (fresh prompts a round, say, so that no server answers from an earlier round's cache)."""
    remaining = iter(items)
    return lambda: run(next(remaining))


def round_order(names: list[str], i: int) -> list[str]:
    """The order of round `i` in `in_turns`: reversed every other round, rotated every two."""
    shift = (i // 2) % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if i % 2 else order


def spread(values: Iterable[float]) -> dict:
    """min / median / max of a figure over rounds, and the values themselves."""
    values = [v for v in values if v == v]  # NaN: a round that measured nothing
    if not values:
        return {"min": None, "median": None, "max": None, "n": 0, "values": []}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values),
            "values": values}


def ratios(ours: list[float], theirs: list[float]) -> dict:
    """The spread of per-round ratios ours[i] / theirs[i]: rounds adjacent in time see the same machine."""
    return spread(a / b for a, b in zip(ours, theirs, strict=True) if b)
