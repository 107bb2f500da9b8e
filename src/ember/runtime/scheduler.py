"""Residency: which engines are loaded, who is using them, and when they go.

The scheduler loads an engine when a request needs one, holds it while requests use it, unloads it when its
keep-alive runs out, and evicts the least recently used idle engine when another must load and the loaded-model
limit (EMBER_MAX_LOADED_MODELS) or the memory budget would be passed. It knows no engine: it asks its factory for an
estimate and a load, and reads each engine's status.

Loading one model never delays requests for another that is already loaded: a request takes no lock unless it must
wait for a load, and concurrent requests for a model that is loading wait for that one load. Loads run one at a time
(on a worker thread, with closes, in order), so the memory of one is counted before the next is planned.
"""

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from ember.config import Settings
from ember.core.durations import parse_keep_alive
from ember.core.errors import Busy, EmberError
from ember.engines.base import Engine, EngineFactory, EngineStatus, LoadSpec
from ember.system import available_memory

log = logging.getLogger("ember.scheduler")


class InsufficientMemory(EmberError):
    """A model (with the context asked for) that cannot fit even alone: retrying will not help, so a 4xx."""

    status = 400


class Named(Protocol):
    """What the scheduler needs of a model (a stored `Model`): a name for logs and one digest per model."""

    name: str
    digest: str  # two names for one model share an engine


@dataclass(eq=False)
class Loaded:
    """One engine in memory (or on its way), for one model."""

    model: Named  # the latest request's; `ps` shows its name
    spec: LoadSpec
    ready: asyncio.Future = field(repr=False)
    engine: Engine | None = None
    load_ns: int = 0
    active: int = 0  # requests using it now (or waiting for its load)
    expires_at: float = math.inf  # clock time when it unloads once idle; inf = never
    last_used: int = 0  # a counter, larger = more recent
    retired: bool = False  # replaced by a reload with other settings; closes once idle

    @property
    def key(self) -> tuple[str, str]:
        return self.model.digest, self.spec.role

    @property
    def name(self) -> str:
        return self.model.name

    def status(self) -> EngineStatus:
        assert self.engine is not None
        return self.engine.status()


@dataclass
class Lease:
    """A request's hold on a loaded engine; `load_ns` is how long it waited for the load (0 if it was loaded)."""

    loaded: Loaded
    engine: Engine
    load_ns: int


class Scheduler:
    def __init__(self, settings: Settings, factory: EngineFactory, *, clock: Callable[[], float] = time.time,
                 memory_budget: Callable[[int], int] | None = None):
        """`clock` gives seconds (expiry); `memory_budget(held)` gives the bytes ember may hold in all, given that it
        holds `held` now (by default EMBER_MAX_MEMORY, or what it holds plus what the kernel has available, less a
        tenth)."""
        self.settings = settings
        self.factory = factory
        self.clock = clock
        self.memory_budget = memory_budget or (lambda held: settings.max_memory or _default_budget(held))
        self.default_keep_alive = parse_keep_alive(settings.keep_alive)
        self._loaded: dict[tuple[str, str], Loaded] = {}
        self._retired: set[Loaded] = set()
        self._pending = 0
        self._tick = 0
        self._loading = asyncio.Lock()  # one load at a time
        self._released = asyncio.Event()  # set whenever an engine becomes idle or goes away
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ember-load")
        self._tasks: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self, every: float = 0.5) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever(every))

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for task in list(self._tasks):
            task.cancel()
        for loaded in [*self._loaded.values(), *self._retired]:
            self._unload(loaded)
        await asyncio.get_running_loop().run_in_executor(self._worker, lambda: None)  # the closes are done
        self._worker.shutdown(wait=False)

    async def _reap_forever(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.reap()

    def reap(self) -> None:
        """Unload every idle engine whose keep-alive has run out."""
        now = self.clock()
        for loaded in list(self._loaded.values()):
            if loaded.engine and loaded.active == 0 and loaded.expires_at <= now:
                log.info("unloading %s (keep_alive expired)", loaded.name)
                self._unload(loaded)

    # -- admission -------------------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests admitted: running, or waiting for a slot or a load."""
        return self._pending

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """A place among the requests being served or waiting; past EMBER_MAX_QUEUE, Busy (503 with Retry-After)."""
        if self._pending >= self.settings.max_queue:
            raise Busy(f"server busy: {self._pending} requests are queued (EMBER_MAX_QUEUE={self.settings.max_queue});"
                       " retry shortly", retry_after=1)
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    # -- using an engine -------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def using(self, model: Named, spec: LoadSpec, keep_alive: float | None = None) -> AsyncIterator[Lease]:
        """The loaded engine for this model and spec (loading it if needed), held until the block ends; then it stays
        loaded for `keep_alive` seconds (None: the server's default; inf: forever; 0: unload at once)."""
        lease = await self.acquire(model, spec)
        try:
            yield lease
        finally:
            self.release(lease.loaded, keep_alive)

    async def acquire(self, model: Named, spec: LoadSpec) -> Lease:
        started = time.perf_counter_ns()
        key = (model.digest, spec.role)
        loaded = self._loaded.get(key)
        if loaded and loaded.spec != spec:
            log.info("reloading %s with new settings", model.name)
            self._retire(loaded)
            loaded = None
        if loaded is None:
            loaded = Loaded(model, spec, asyncio.get_running_loop().create_future())
            self._loaded[key] = loaded
            self._spawn(self._load(loaded))
        loaded.model = model
        loaded.active += 1
        self._touch(loaded)
        was_loaded = loaded.ready.done()
        try:
            await asyncio.shield(loaded.ready)
        except BaseException:
            loaded.active -= 1
            self._idle(loaded)
            raise
        assert loaded.engine is not None
        return Lease(loaded, loaded.engine, 0 if was_loaded else time.perf_counter_ns() - started)

    def release(self, loaded: Loaded, keep_alive: float | None) -> None:
        loaded.active -= 1
        self._touch(loaded)
        seconds = self.default_keep_alive if keep_alive is None else keep_alive
        if loaded.expires_at != 0:  # 0: an unload was asked for while it was busy
            loaded.expires_at = self.clock() + seconds if seconds is not None else math.inf
        self._idle(loaded)

    def _idle(self, loaded: Loaded) -> None:
        if loaded.active:
            return
        if loaded.retired or loaded.expires_at <= self.clock():
            self._unload(loaded)
        self._released.set()

    def _touch(self, loaded: Loaded) -> None:
        self._tick += 1
        loaded.last_used = self._tick

    # -- loading and unloading -------------------------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, loaded: Loaded) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self._loading:
                if loaded.retired or self._loaded.get(loaded.key) is not loaded:
                    raise EmberError(f"{loaded.name} was unloaded before its load began; send the request again")
                estimate = await loop.run_in_executor(None, self.factory.estimate, loaded.spec)
                await self._make_room(loaded, estimate)
                started = time.perf_counter_ns()
                engine = await loop.run_in_executor(self._worker, self.factory.load, loaded.spec)
                loaded.load_ns = time.perf_counter_ns() - started
        except BaseException as e:
            if self._loaded.get(loaded.key) is loaded:
                del self._loaded[loaded.key]
            loaded.ready.set_exception(e if isinstance(e, Exception) else EmberError("the server is shutting down"))
            loaded.ready.exception()  # retrieved here, so that a load nobody waits for any more logs nothing
            self._released.set()
            return
        loaded.engine = engine
        keep = self.default_keep_alive
        loaded.expires_at = self.clock() + keep if keep is not None else math.inf  # if its requests have gone
        status = engine.status()
        log.info("loaded %s in %.2fs: context %d, %d slots, %d threads, %.0f MB", loaded.name, loaded.load_ns / 1e9,
                 status.context, status.slots, status.threads, status.memory_bytes / 1e6)
        loaded.ready.set_result(engine)
        if loaded.retired or self._loaded.get(loaded.key) is not loaded:  # unloaded while it loaded
            self._idle(loaded)

    def _holding(self, but: Loaded) -> list[Loaded]:
        return [x for x in [*self._loaded.values(), *self._retired] if x.engine and x is not but]

    async def _make_room(self, loaded: Loaded, estimate: int) -> None:
        """Evict idle engines, least recently used first, until `loaded` fits under both limits; when only busy ones
        are left, wait for one to finish."""
        # Planned once: memory freed by an eviction shows as available only after the close.
        budget = self.memory_budget(sum(x.status().memory_bytes for x in self._holding(loaded)))
        if estimate > budget:  # would not fit with nothing else loaded: refused before anything is evicted
            raise InsufficientMemory(
                f"{loaded.name} needs about {estimate / 1e9:.1f} GB (weights and a context cache for "
                f"{loaded.spec.num_ctx} tokens per sequence), more than the {budget / 1e9:.1f} GB available "
                "(EMBER_MAX_MEMORY, or what this machine has free); lower num_ctx or EMBER_NUM_PARALLEL, or free "
                "memory")
        while True:
            others = self._holding(loaded)
            held = sum(x.status().memory_bytes for x in others)
            too_many = len(others) >= self.settings.max_loaded_models
            too_big = held + estimate > budget
            if not too_many and not too_big:
                return
            idle = [x for x in others if x.active == 0]
            if idle:
                victim = min(idle, key=lambda x: x.last_used)
                why = f"EMBER_MAX_LOADED_MODELS={self.settings.max_loaded_models}" if too_many else (
                    f"{(held + estimate) / 1e9:.1f} GB would pass the {budget / 1e9:.1f} GB budget")
                log.info("unloading %s to make room for %s (%s)", victim.name, loaded.name, why)
                self._unload(victim)
                continue
            log.info("%s waits for a loaded model to finish its requests before it can load", loaded.name)
            self._released.clear()
            await self._released.wait()

    def _retire(self, loaded: Loaded) -> None:
        if self._loaded.get(loaded.key) is loaded:
            del self._loaded[loaded.key]
        loaded.retired = True
        self._retired.add(loaded)
        self._idle(loaded)

    def _unload(self, loaded: Loaded) -> None:
        """Forget the engine and close it on the worker thread (after any load queued before)."""
        if self._loaded.get(loaded.key) is loaded:
            del self._loaded[loaded.key]
        self._retired.discard(loaded)
        loaded.retired = True
        engine, loaded.engine = loaded.engine, None
        if engine is not None:
            self._worker.submit(engine.close)
        self._released.set()

    # -- what the API asks -----------------------------------------------------------------------------------------

    def unload(self, digest: str) -> bool:
        """Unload every engine of a model now, or as soon as its running requests finish."""
        found = False
        for loaded in list(self._loaded.values()):
            if loaded.model.digest == digest:
                found = True
                loaded.expires_at = 0
                self._idle(loaded)
        return found

    def loaded(self) -> list[Loaded]:
        """Engines in memory, most recently used first."""
        return sorted((x for x in self._loaded.values() if x.engine), key=lambda x: -x.last_used)


def _default_budget(held: int) -> int:
    return int(0.9 * (held + available_memory()))
