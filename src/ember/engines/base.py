"""What the runtime needs from an engine: load a model, tokenize, generate token by token, embed.

A runner holds one loaded model. Today it decodes one sequence at a time; the batching runner (several
sequences in one llama.cpp context) will implement the same methods.
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from ember.core.options import Options


@dataclass(frozen=True)
class LoadSpec:
    model_path: Path
    adapter_paths: tuple[Path, ...] = ()
    num_ctx: int = 4096
    num_batch: int = 512
    num_thread: int = 2
    embedding: bool = False


@dataclass
class Sampling:
    """Options resolved for one request, plus a compiled grammar (GBNF text) when output is constrained."""

    options: Options
    grammar: str | None = None
    max_tokens: int = 0  # hard cap from the context window; 0 = no cap
    cancel: threading.Event = field(default_factory=threading.Event)


class Runner(Protocol):
    spec: LoadSpec
    n_ctx: int
    n_ctx_train: int
    memory_bytes: int

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def generate(self, tokens: list[int], sampling: Sampling) -> Iterator[int]:
        """Yield sampled token ids until end-of-generation, the cap, or cancel. Prompt reuse is the runner's affair."""
        ...

    def cached_prefix(self, tokens: list[int]) -> int: ...

    def embed(self, token_lists: list[list[int]]) -> list[list[float]]: ...

    def close(self) -> None: ...
