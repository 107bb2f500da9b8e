"""Loaded models and who gets them: load on demand, queue limits, keep-alive expiry, least-recently-used eviction.

A loaded model's runner decodes on its own thread, several requests at once; the event loop never blocks on
llama.cpp.
"""

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from ember.config import Settings
from ember.core.durations import parse_keep_alive
from ember.core.errors import BadRequest, Busy, EmberError
from ember.core.options import Options, resolve
from ember.core.types import Done, EmbedRequest, Embeddings, Event, GenerateRequest
from ember.engines.base import LoadSpec, Runner
from ember.engines import llamacpp
from ember.engines.llamacpp import default_threads
from ember.runtime import generation
from ember.store.store import Model, ModelStore

log = logging.getLogger("ember.scheduler")


@dataclass
class Loaded:
    model: Model
    runner: Runner
    active: int = 0
    expires_at: float = math.inf  # time.time() when it unloads; inf = never
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False  # replaced by a reload with other settings; closes once idle

    @property
    def spec(self) -> LoadSpec:
        return self.runner.spec


class Scheduler:
    def __init__(self, settings: Settings, store: ModelStore, runner_factory: Callable[[LoadSpec], Runner] = llamacpp.load):
        self.settings = settings
        self.store = store
        self.runner_factory = runner_factory
        self.default_keep_alive = parse_keep_alive(settings.keep_alive)
        self._loaded: dict[tuple[str, bool], Loaded] = {}
        self._pending = 0
        self._load_lock = asyncio.Lock()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="ember-load")
        self._reaper: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for key in list(self._loaded):
            self._drop(key)
        self._loader.shutdown(wait=False)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.reap()

    def reap(self) -> None:
        now = time.time()
        for key, loaded in list(self._loaded.items()):
            if loaded.active == 0 and loaded.expires_at <= now:
                log.info("unloading %s (keep_alive expired)", loaded.model.name)
                self._drop(key)

    def _drop(self, key: tuple[str, bool]) -> None:
        loaded = self._loaded.pop(key, None)
        if loaded:
            self._close(loaded)

    def _close(self, loaded: Loaded) -> None:
        self._loader.submit(loaded.runner.close)

    # -- loading ---------------------------------------------------------------------------------------------------

    def load_spec(self, model: Model, options: Options, embedding: bool = False) -> LoadSpec:
        trained = model.info.context_length or options.num_ctx or self.settings.context_length
        num_ctx = options.num_ctx or self.settings.context_length
        if num_ctx > trained:
            log.warning("%s: num_ctx %d is above the model's trained length; using %d", model.name, num_ctx, trained)
            num_ctx = trained
        return LoadSpec(model_path=model.model_path, adapter_paths=tuple(model.adapter_paths), num_ctx=num_ctx,
                        num_batch=options.num_batch or 512, num_thread=options.num_thread or default_threads(),
                        num_parallel=1 if embedding else self.settings.num_parallel or auto_parallel(model, num_ctx),
                        embedding=embedding)

    async def _acquire(self, model: Model, spec: LoadSpec) -> tuple[Loaded, int]:
        """The loaded model for this request (loading it if needed), marked active; and the load time in ns."""
        key = (model.digest, spec.embedding)
        async with self._load_lock:
            loaded = self._loaded.get(key)
            if loaded and loaded.spec != spec:
                log.info("reloading %s with new settings", model.name)
                loaded.retired = True
                del self._loaded[key]
                if loaded.active == 0:
                    self._close(loaded)
                loaded = None
            load_ns = 0
            if loaded is None:
                self._evict_for_one_more()
                started = time.perf_counter_ns()
                try:
                    runner = await asyncio.get_running_loop().run_in_executor(self._loader, self.runner_factory, spec)
                except EmberError:
                    raise
                except Exception as e:  # llama.cpp says only "failed to load" in a ValueError
                    raise BadRequest(f"model '{model.name}' could not be loaded by llama.cpp: {e}") from None
                load_ns = time.perf_counter_ns() - started
                log.info("loaded %s (num_ctx=%d, threads=%d) in %.2fs", model.name, spec.num_ctx, spec.num_thread,
                         load_ns / 1e9)
                loaded = Loaded(model, runner)
                self._loaded[key] = loaded
            loaded.active += 1
            loaded.last_used = time.monotonic()
            loaded.model = model
            return loaded, load_ns

    def _evict_for_one_more(self) -> None:
        idle = sorted((l.last_used, k) for k, l in self._loaded.items() if l.active == 0)
        while len(self._loaded) >= self.settings.max_loaded_models and idle:
            _, key = idle.pop(0)
            log.info("unloading %s to make room (EMBER_MAX_LOADED_MODELS=%d)", self._loaded[key].model.name,
                     self.settings.max_loaded_models)
            self._drop(key)

    def _release(self, loaded: Loaded, keep_alive: float | None) -> None:
        loaded.active -= 1
        loaded.last_used = time.monotonic()
        seconds = self.default_keep_alive if keep_alive is None else keep_alive
        if loaded.expires_at != 0:  # 0 means an unload was asked for while it was busy
            loaded.expires_at = time.time() + seconds if seconds is not None else math.inf
        if loaded.active == 0 and (loaded.retired or seconds == 0):
            if not loaded.retired:
                self._loaded.pop((loaded.model.digest, loaded.spec.embedding), None)
            self._close(loaded)

    def _admit(self) -> None:
        if self._pending >= self.settings.max_queue:
            raise Busy(f"server busy: {self._pending} requests are queued (EMBER_MAX_QUEUE={self.settings.max_queue});"
                       " retry shortly", retry_after=1)

    # -- requests --------------------------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Events for one request, ending with Done. Closing the iterator early cancels the generation."""
        model = self.store.get(request.model)
        options = resolve(model.params, request.options, request.preset)
        generation.check_tools(request)
        spec = self.load_spec(model, options)
        self._admit()
        self._pending += 1
        try:
            loaded, load_ns = await self._acquire(model, spec)
        except BaseException:
            self._pending -= 1
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job: generation.Generation | None = None

        def emit(event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed: the server is shutting down
                if job:
                    job.cancel.set()

        try:
            job = await asyncio.to_thread(generation.Generation, loaded.runner, model, request, options, emit, load_ns)
            loaded.runner.submit(job)
            while True:
                event = await events.get()
                if isinstance(event, generation.Failed):
                    raise event.error
                yield event
                if isinstance(event, Done):
                    return
        finally:
            if job:
                job.cancel.set()
            self._pending -= 1
            self._release(loaded, request.keep_alive)

    async def load(self, name: str, options: Options, keep_alive: float | None) -> int:
        """Load a model without generating (an empty prompt in Ollama's API); returns the load time in ns."""
        model = self.store.get(name)
        spec = self.load_spec(model, resolve(model.params, options, None))
        loaded, load_ns = await self._acquire(model, spec)
        self._release(loaded, keep_alive)
        return load_ns

    async def embed(self, request: EmbedRequest) -> Embeddings:
        model = self.store.get(request.model)
        options = resolve(model.params, request.options, None)
        spec = self.load_spec(model, options, embedding=True)
        self._admit()
        self._pending += 1
        try:
            loaded, load_ns = await self._acquire(model, spec)
            try:
                started = time.perf_counter_ns()
                vectors, count = await asyncio.to_thread(_embed, loaded.runner, request)
                return Embeddings(vectors, count, load_ns=load_ns, total_ns=time.perf_counter_ns() - started + load_ns)
            finally:
                self._release(loaded, request.keep_alive)
        finally:
            self._pending -= 1

    def unload(self, name: str) -> bool:
        """Unload every instance of a model now (or as soon as its running requests finish)."""
        model = self.store.get(name)
        found = False
        for key, loaded in list(self._loaded.items()):
            if loaded.model.digest == model.digest:
                found = True
                loaded.expires_at = 0
        self.reap()
        return found

    def loaded(self) -> list[Loaded]:
        return sorted(self._loaded.values(), key=lambda l: -l.last_used)


def auto_parallel(model: Model, num_ctx: int) -> int:
    """Slots for a model: up to 16, as many as a quarter of the available memory holds KV caches for."""
    info = model.info.model_info
    arch = model.info.architecture
    heads = info.get(f"{arch}.attention.head_count") or 1
    kv_heads = info.get(f"{arch}.attention.head_count_kv") or heads
    per_token = 2 * 2 * model.info.block_count * model.info.embedding_length * kv_heads // heads  # f16 K and V
    return max(1, min(16, available_memory() // 4 // max(1, per_token * num_ctx)))


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _embed(runner: Runner, request: EmbedRequest) -> tuple[list[list[float]], int]:
    token_lists = []
    for i, text in enumerate(request.inputs):
        tokens = runner.tokenize(text, special=False)
        if len(tokens) > runner.n_ctx:
            if not request.truncate:
                raise BadRequest(f"input[{i}] is {len(tokens)} tokens, more than the context window ({runner.n_ctx});"
                                 " shorten it, raise num_ctx, or send truncate: true")
            log.warning("embed: input[%d] truncated from %d to %d tokens", i, len(tokens), runner.n_ctx)
            tokens = tokens[: runner.n_ctx]
        token_lists.append(tokens)
    vectors = runner.embed(token_lists) if token_lists else []
    if request.normalize:
        vectors = [_l2(v) for v in vectors]
    return vectors, sum(map(len, token_lists))


def _l2(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
