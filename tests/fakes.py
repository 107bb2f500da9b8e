"""Fakes at the engine seam: engines that answer at once (or when told), and a clock the test moves.

They implement the protocols in `ember.engines.base`, so the scheduler, generation, embedding and the API run for
real on top of them, without a model.
"""

import threading
import time

from ember.engines.base import EngineStatus, LoadSpec, Role, Sequence


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeGenerator:
    """Bytes are tokens. Answers `answer` (or, when it is None, an endless run of "x") on a thread per sequence."""

    def __init__(self, spec: LoadSpec, answer: str | None, memory: int):
        self.spec, self.answer, self.memory = spec, answer, memory
        self.n_ctx, self.n_ctx_train, self.n_vocab = spec.num_ctx, 8192, 256
        self.busy = 0
        self.closed = threading.Event()
        self.endings: list[str] = []  # each sequence's end reason, in order
        self.ended = threading.Event()  # set whenever a sequence ends

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return bytes([token])

    def status(self) -> EngineStatus:
        return EngineStatus(weights_bytes=self.memory, cache_bytes=0, context=self.n_ctx, slots=4,
                            busy_slots=self.busy, threads=1, device="fake")

    def submit(self, sequence: Sequence) -> None:
        threading.Thread(target=self._run, args=(sequence,), daemon=True).start()

    def _run(self, seq: Sequence) -> None:
        self.busy += 1
        seq.started(0)
        produced, reason = 0, "stop"
        data = self.answer.encode() if self.answer is not None else None
        while data is None or produced < len(data):
            if seq.cancel.is_set() or self.closed.is_set():
                reason = "cancelled"
                break
            if produced >= seq.max_tokens:
                reason = "length"
                break
            token = data[produced] if data is not None else ord("x")
            produced += 1
            if not seq.token(token):
                break
            if data is None:
                time.sleep(0.001)  # an endless answer at a finite pace, so a cancel is seen between tokens
        self.busy -= 1
        self.endings.append(reason)
        seq.ended(reason)
        self.ended.set()

    def close(self) -> None:
        self.closed.set()


class FakeEmbedder:
    def __init__(self, spec: LoadSpec, memory: int):
        self.spec, self.memory, self.n_ctx = spec, memory, spec.num_ctx
        self.closed = threading.Event()

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return list(text.encode())

    def embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        return [[float(len(tokens)), 1.0, 0.0] for tokens in token_lists]

    def status(self) -> EngineStatus:
        return EngineStatus(weights_bytes=self.memory, cache_bytes=0, context=self.n_ctx, slots=1, busy_slots=0,
                            threads=1, device="fake")

    def close(self) -> None:
        self.closed.set()


class FakeEngines:
    """The scheduler's engine factory. Each model file's memory and answer can be set by its file name; a load can be
    held back with `hold(name)` until the test releases it (or for at most `max_load_s`)."""

    def __init__(self, memory: int = 100, answer: str | None = "Hello from the fake engine.", max_load_s: float = 2.0):
        self.memory, self.answer, self.max_load_s = memory, answer, max_load_s
        self.memory_of: dict[str, int] = {}
        self.answer_of: dict[str, str | None] = {}
        self.loads: list[LoadSpec] = []
        self.engines: list[FakeGenerator | FakeEmbedder] = []
        self.loading = threading.Event()  # set when a held load has begun
        self._gates: dict[str, threading.Event] = {}

    def hold(self, name: str) -> threading.Event:
        """Loads of the model file `name` wait until the returned event is set."""
        self._gates[name] = gate = threading.Event()
        return gate

    def estimate(self, spec: LoadSpec) -> int:
        return self.memory_of.get(spec.model_path.name, self.memory)

    def load(self, spec: LoadSpec):
        self.loads.append(spec)
        gate = self._gates.get(spec.model_path.name)
        if gate:
            self.loading.set()
            gate.wait(self.max_load_s)
        memory = self.estimate(spec)
        if spec.role is Role.EMBED:
            engine = FakeEmbedder(spec, memory)
        else:
            engine = FakeGenerator(spec, self.answer_of.get(spec.model_path.name, self.answer), memory)
        self.engines.append(engine)
        return engine
