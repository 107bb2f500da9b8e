"""Prometheus metrics for /metrics: requests, tokens and latencies as they happen, and the runtime's state (queue,
slots, loaded models, memory, jobs) read when scraped.

Each runtime has its own registry (not prometheus_client's global one), so several servers in one process (tests)
do not share counters.
"""

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ember.core.types import Done

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a cached short prompt on a small model to a long prompt behind a model load.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, state: Callable[[], "RuntimeState"] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ember_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("ember_http_request_duration_seconds",
                                         "Time to answer an HTTP request (to the end of a streamed body)",
                                         ["route"], buckets=REQUEST_BUCKETS, registry=r)
        self.errors = Counter("ember_errors", "Requests that ended in an error, by route and status class",
                              ["route", "kind"], registry=r)
        self.prompt_tokens = Counter("ember_prompt_tokens", "Prompt tokens processed (cached ones included)",
                                     ["model"], registry=r)
        self.cached_tokens = Counter("ember_prompt_cached_tokens", "Prompt tokens reused from the prefix cache",
                                     ["model"], registry=r)
        self.generated_tokens = Counter("ember_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.generations = Counter("ember_generations", "Generations finished, by why they stopped",
                                   ["model", "reason"], registry=r)
        self.ttft = Histogram("ember_time_to_first_token_seconds",
                              "From a request's arrival (load and queue included) to its first token",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.token_seconds = Histogram("ember_time_per_output_token_seconds",
                                       "Mean time between generated tokens, one observation per generation",
                                       ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.embedded_inputs = Counter("ember_embedded_inputs", "Texts embedded", ["model"], registry=r)
        self.embedded_tokens = Counter("ember_embedded_tokens", "Tokens embedded", ["model"], registry=r)
        self.transcribed_seconds = Counter("ember_transcribed_audio_seconds", "Seconds of audio transcribed",
                                           ["model"], registry=r)
        if state is not None:
            r.register(_StateCollector(state))

    def generation_done(self, model: str, done: Done) -> None:
        self.prompt_tokens.labels(model).inc(done.prompt_tokens)
        self.cached_tokens.labels(model).inc(done.cached_tokens)
        self.generated_tokens.labels(model).inc(done.completion_tokens)
        self.generations.labels(model, done.reason).inc()
        if done.completion_tokens:
            self.ttft.labels(model).observe(max(done.total_ns - done.eval_ns, 0) / 1e9)
        if done.completion_tokens > 1:
            self.token_seconds.labels(model).observe(done.eval_ns / 1e9 / (done.completion_tokens - 1))

    def embedded(self, model: str, inputs: int, tokens: int) -> None:
        self.embedded_inputs.labels(model).inc(inputs)
        self.embedded_tokens.labels(model).inc(tokens)

    def transcribed(self, model: str, seconds: float) -> None:
        self.transcribed_seconds.labels(model).inc(seconds)

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, f"{status // 100}xx").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RuntimeState:
    """What the runtime holds at one moment, as the collector reads it."""

    def __init__(self, queued: int, models: list[tuple[str, int, int, int, int]], jobs: dict[str, int],
                 draining: bool):
        self.queued = queued  # requests admitted: running or waiting for a slot or a load
        self.models = models  # (name, weights bytes, cache bytes, slots, busy slots) per loaded engine
        self.jobs = jobs  # running jobs by kind
        self.draining = draining


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], RuntimeState]):
        self.state = state

    def collect(self) -> Iterable[Metric]:
        s = self.state()
        yield GaugeMetricFamily("ember_requests_in_flight", "Requests running or waiting (EMBER_MAX_QUEUE caps it)",
                                value=s.queued)
        yield GaugeMetricFamily("ember_loaded_models", "Engines loaded", value=len(s.models))
        memory = GaugeMetricFamily("ember_model_memory_bytes", "Memory a loaded model holds", labels=["model", "part"])
        slots = GaugeMetricFamily("ember_slots", "Sequences a loaded model can run at once", labels=["model"])
        busy = GaugeMetricFamily("ember_busy_slots", "Sequences a loaded model runs now", labels=["model"])
        for name, weights, cache, total, running in s.models:
            memory.add_metric([name, "weights"], weights)
            memory.add_metric([name, "cache"], cache)
            slots.add_metric([name], total)
            busy.add_metric([name], running)
        yield from (memory, slots, busy)
        jobs = GaugeMetricFamily("ember_jobs_running", "Long jobs running (pull, create, backup)", labels=["kind"])
        for kind, count in sorted(s.jobs.items()):
            jobs.add_metric([kind], count)
        yield jobs
        yield GaugeMetricFamily("ember_draining", "1 while the server shuts down and finishes what it runs",
                                value=int(s.draining))
