"""The runtime as the API and the CLI see it: requests in, events out, over one store, one scheduler and the jobs."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from ember.config import Settings
from ember.core.options import Options
from ember.core.types import Embeddings, EmbedRequest, Event, GenerateRequest
from ember.engines.base import EngineFactory, Role
from ember.runtime import embedding, generation
from ember.runtime.jobs import Jobs
from ember.runtime.plan import plan
from ember.runtime.scheduler import Loaded, Scheduler
from ember.store.store import ModelStore


class Runtime:
    def __init__(self, settings: Settings, store: ModelStore, factory: EngineFactory | None = None, *,
                 clock: Callable[[], float] = time.time, memory_budget: Callable[[int], int] | None = None):
        if factory is None:
            from ember.engines.registry import Engines

            factory = Engines()
        self.settings, self.store = settings, store
        self.scheduler = Scheduler(settings, factory, clock=clock, memory_budget=memory_budget)
        self.jobs = Jobs()

    def start(self) -> None:
        self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.close()

    def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Events for one request, ending with Done. Closing the iterator early cancels the generation."""
        return generation.generate(self.scheduler, self.store, self.settings, request)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        return await embedding.embed(self.scheduler, self.store, self.settings, request)

    async def load(self, name: str, options: Options, keep_alive: float | None) -> int:
        """Load a model without generating (an empty prompt in Ollama's API); returns the load time in ns."""
        p = await asyncio.to_thread(plan, self.store, self.settings, name, options, None, Role.GENERATE)
        async with self.scheduler.using(p.model, p.spec, keep_alive) as lease:
            return lease.load_ns

    async def unload(self, name: str) -> bool:
        """Unload every engine of a model now, or as soon as its running requests finish."""
        model = await asyncio.to_thread(self.store.get, name)
        return self.scheduler.unload(model.digest)

    def loaded(self) -> list[Loaded]:
        return self.scheduler.loaded()
