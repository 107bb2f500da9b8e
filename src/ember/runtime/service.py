"""The runtime as the API and the CLI see it: requests in, events out, over one store, one scheduler and the jobs."""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from ember.config import Settings
from ember.core.options import Options
from ember.core.types import Done, Embeddings, EmbedRequest, Event, GenerateRequest
from ember.engines.base import EngineFactory, Role
from ember.ops.metrics import Metrics, RuntimeState
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
        self.ready = False  # true from start() until draining begins: what /health reports
        self.draining = False
        self.metrics = Metrics(self.state)

    def state(self) -> RuntimeState:
        models = []
        for loaded in self.scheduler.loaded():
            status = loaded.status()
            models.append((loaded.name, status.weights_bytes, status.cache_bytes, status.slots, status.busy_slots))
        return RuntimeState(queued=self.scheduler.pending, models=models,
                            jobs=dict(Counter(job.kind for job in self.jobs.list())), draining=self.draining)

    def start(self) -> None:
        self.scheduler.start()
        self.ready = True

    def drain(self) -> None:
        """Shutting down: /health says 503 so that a balancer sends no more; what runs may finish."""
        self.draining, self.ready = True, False

    async def close(self) -> None:
        await self.scheduler.close()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Events for one request, ending with Done. Closing the iterator early cancels the generation."""
        async with aclosing(generation.generate(self.scheduler, self.store, self.settings, request)) as events:
            async for event in events:
                if isinstance(event, Done):
                    self.metrics.generation_done(request.model, event)
                yield event

    async def embed(self, request: EmbedRequest) -> Embeddings:
        result = await embedding.embed(self.scheduler, self.store, self.settings, request)
        self.metrics.embedded(request.model, len(result.vectors), result.prompt_tokens)
        return result

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
