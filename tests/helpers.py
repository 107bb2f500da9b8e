"""Helpers the tests share: tiny GGUF files, settings for a temp home, a real `ember serve` process."""

from pathlib import Path

from ember.bench.harness import ember_server, free_port
from ember.bench.tiny import TOKENS as TOKENS  # re-exported: the tests import them from here
from ember.bench.tiny import write_gguf as write_gguf
from ember.config import Settings
from ember.store import bundled


def smollm2_gguf() -> Path:
    """Found as `ember pull` finds it: through the distribution's file list, never by importing the package."""
    return bundled.locate(bundled.CATALOG[0])


def settings(home: Path, **overrides) -> Settings:
    """Settings for a temp home, as from an empty environment, with `overrides` (max_queue=1, …)."""
    base = dict(home=home, models=home / "models", host="127.0.0.1", port=free_port(), context_length=4096,
                max_queue=512, max_loaded_models=3, num_parallel=0, keep_alive="5m", max_body_bytes=32 << 20)
    return Settings(**{**base, **overrides})


class Server:
    """`python -m ember serve` on a free loopback port, its output in `log_path`."""

    def __init__(self, home: Path, log_path: Path, **env: str):
        self.process = ember_server(home, log_path=log_path, **env)
        self.port, self.url = self.process.port, self.process.url

    @property
    def proc(self):
        return self.process.proc

    def start(self) -> "Server":
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def log_text(self) -> str:
        return self.process.log_text()


class Reports(list):
    """A reporter for long work (what a job hands it) that keeps every report, for the test to read."""

    def __call__(self, status: str, **fields) -> None:
        from ember.runtime.jobs import Progress

        self.append(Progress(status, **fields))

    @property
    def statuses(self) -> list[str]:
        return [p.status for p in self]
