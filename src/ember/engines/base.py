"""What the runtime asks of an engine, by capability.

An engine loads one model for one role and reports one typed status. The scheduler holds engines without knowing
what they are; generation and embedding talk to the capability they need:

* a `Generator` runs several sequences at once (slots) and decodes them together; each sequence reports back through
  the three calls of `Sequence`, on the engine's own thread;
* an `Embedder` turns a batch of token lists into vectors;
* a `Transcriber` turns audio into timed text (Whisper on faster-whisper);
* a `Recognizer` turns an image into text lines (Tesseract; it holds no model, so it is called without the scheduler).
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from ember.core.options import Options
from ember.core.types import Segment, TranscribeRequest


class Capability(StrEnum):
    """What a model can be used for; `/api/show` lists them as Ollama does."""

    COMPLETION = "completion"
    EMBEDDING = "embedding"
    TRANSCRIPTION = "transcription"  # ember's own (Ollama's list has none for speech)
    TOOLS = "tools"
    VISION = "vision"


class Role(StrEnum):
    """Which capability a loaded engine serves: a model loaded to embed is a different instance from one that chats."""

    GENERATE = "generate"
    EMBED = "embed"
    TRANSCRIBE = "transcribe"


@dataclass(frozen=True)
class LoadSpec:
    """What to load, as the request asked for it. Two requests with equal specs share one loaded engine; None leaves
    the choice to the engine (threads by cores, slots by free memory)."""

    model_path: Path
    role: Role = Role.GENERATE
    adapter_paths: tuple[Path, ...] = ()
    num_ctx: int = 4096  # per sequence
    num_batch: int | None = None
    num_thread: int | None = None
    num_parallel: int | None = None  # sequences decoded together


@dataclass(frozen=True)
class EngineStatus:
    """One loaded engine, as the scheduler, `ember ps` and `/api/ps` see it."""

    weights_bytes: int
    cache_bytes: int  # the KV cache (or the engine's working memory), allocated at load
    context: int  # tokens per sequence
    slots: int  # sequences it runs at once
    busy_slots: int
    threads: int
    device: str = "cpu"
    runner: str = "llama.cpp"  # the engine library: "llama.cpp", "onnxruntime"

    @property
    def memory_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes


class Engine(Protocol):
    spec: LoadSpec

    def status(self) -> EngineStatus: ...

    def close(self) -> None: ...


class Tokenizer(Protocol):
    n_ctx: int  # per sequence

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...


class Sequence(Protocol):
    tokens: list[int]  # the prompt
    options: Options
    grammar: str | None  # GBNF; the engine samples only what it admits
    max_tokens: int
    cancel: threading.Event

    def started(self, cached: int) -> None:
        """The sequence has a slot; `cached` prompt tokens were already in it and are not decoded again."""

    def token(self, token: int) -> bool:
        """A sampled token (never end-of-generation). Return False to end the sequence here."""

    def ended(self, reason: str, error: BaseException | None = None) -> None:
        """Called once: reason is "stop", "length", "cancelled" or "error"."""


@runtime_checkable
class Generator(Engine, Tokenizer, Protocol):
    n_ctx_train: int
    n_vocab: int

    def token_bytes(self, token: int) -> bytes: ...

    def submit(self, sequence: Sequence) -> None:
        """Queue a sequence; it runs when a slot is free. Returns at once."""


@runtime_checkable
class Embedder(Engine, Tokenizer, Protocol):
    def embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        """One vector per token list (blocking; safe to call from several threads at once)."""


@runtime_checkable
class Transcriber(Engine, Protocol):
    multilingual: bool  # False for the English-only models (tiny.en and kin)

    def transcribe(self, audio: BinaryIO, request: TranscribeRequest, segment: Callable[[Segment, float], None],
                   cancel: threading.Event) -> tuple[str, float, list[Segment]]:
        """(language, duration s, segments) of the speech in `audio` (any format PyAV decodes). Blocking; calls
        `segment(segment, duration)` as each one is decoded, and stops early once `cancel` is set."""


@runtime_checkable
class Recognizer(Engine, Protocol):
    def recognize(self, image: Path, languages: list[str]) -> list[tuple[tuple[int, int, int, int], float, str]]:
        """(box, confidence, text) lines of an image."""


class EngineFactory(Protocol):
    """How the scheduler gets engines: a plan (memory it will need) before loading, then the load itself."""

    def estimate(self, spec: LoadSpec) -> int:
        """Bytes of memory the engine will hold once loaded (weights and caches), known before loading."""

    def load(self, spec: LoadSpec) -> Engine:
        """Load (blocking; run off the event loop). Raises EmberError with a message for the user when it cannot."""
