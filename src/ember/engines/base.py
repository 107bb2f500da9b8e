"""What the runtime needs from an engine: a runner per loaded model that tokenizes, runs sequences, and embeds.

A generating runner holds several sequences at once (slots) and decodes them together; each sequence reports back
through the three calls of `Sequence`, on the runner's own thread.
"""

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ember.core.options import Options


@dataclass(frozen=True)
class LoadSpec:
    model_path: Path
    adapter_paths: tuple[Path, ...] = ()
    num_ctx: int = 4096  # per sequence
    num_batch: int = 512
    num_thread: int = 2
    num_parallel: int = 1  # sequences decoded together
    embedding: bool = False


class Sequence(Protocol):
    tokens: list[int]  # the prompt
    options: Options
    grammar: str | None  # GBNF; the runner samples only what it admits
    max_tokens: int
    cancel: threading.Event

    def started(self, cached: int) -> None:
        """The sequence has a slot; `cached` prompt tokens were already in it and are not decoded again."""

    def token(self, token: int) -> bool:
        """A sampled token (never end-of-generation). Return False to end the sequence here."""

    def ended(self, reason: str, error: BaseException | None = None) -> None:
        """Called once: reason is "stop", "length", "cancelled" or "error"."""


class Runner(Protocol):
    spec: LoadSpec
    n_ctx: int  # per sequence
    n_ctx_train: int
    n_vocab: int
    memory_bytes: int

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def submit(self, sequence: Sequence) -> None: ...

    def embed(self, token_lists: list[list[int]]) -> list[list[float]]: ...

    def close(self) -> None: ...
