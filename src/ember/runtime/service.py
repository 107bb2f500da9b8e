"""The runtime as the API and the CLI see it: requests in, events out, over one store, one scheduler and the jobs."""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from ember.config import Settings
from ember.core.options import Options
from ember.core.types import (
    Done,
    Embeddings,
    EmbedRequest,
    Event,
    GenerateRequest,
    Segment,
    Token,
    TranscribeRequest,
    Transcript,
)
from ember.engines.base import EngineFactory, Role
from ember.ops.metrics import Metrics, RuntimeState
from ember.rag.collections import Collections
from ember.rag.retrieve import Rerank
from ember.runtime import embedding, generation, grounded, images, memory, rerank, transcription
from ember.runtime.jobs import Jobs
from ember.runtime.plan import plan
from ember.runtime.scheduler import Loaded, Scheduler
from ember.store.names import parse_name
from ember.store.store import ModelStore

log = logging.getLogger("ember.runtime")


class Runtime:
    def __init__(self, settings: Settings, store: ModelStore, factory: EngineFactory | None = None, *,
                 clock: Callable[[], float] = time.time, memory_budget: Callable[[int], int] | None = None):
        if factory is None:
            from ember.engines.registry import Engines

            factory = Engines()
        self.settings, self.store = settings, store
        self.scheduler = Scheduler(settings, factory, clock=clock, memory_budget=memory_budget)
        self.jobs = Jobs()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.collections = Collections(settings.home / "collections", self.embed_from_thread, store.ensure_bundled,
                                       transcribe=self.transcribe_from_thread)
        self._remembering: set[asyncio.Task] = set()  # turns being written to memory (held: tasks are weakly kept)
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
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()
        self.ready = True

    def drain(self) -> None:
        """Shutting down: /health says 503 so that a balancer sends no more; what runs may finish."""
        self.draining, self.ready = True, False

    async def close(self) -> None:
        if self._remembering:  # turns still being kept (`ember run` without a server exits right after its answer)
            await asyncio.wait(self._remembering, timeout=30)
        await self.scheduler.close()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Events for one request, ending with Done. Closing the iterator early cancels the generation."""
        self._loop = asyncio.get_running_loop()  # searching and remembering embed from worker threads, on this loop
        ocr_images = 0
        if images.has_images(request):  # checked here: a thread hop for every request would cost latency
            request, ocr_images = await asyncio.to_thread(images.read_images, request)
        options = await self._options(request)
        found = await self._ground(request, options)
        if found and found.nothing_found is not None:  # said without the model, which would make an answer up
            yield Token(found.nothing_found)
            yield Done("stop", found.nothing_found, 0, 0, citations=[])
            return
        if found:
            request = found.request
        question = grounded.question_of(request) if options and options.memory and request.is_chat else ""
        if question:
            recalled = await asyncio.to_thread(memory.recall, self.collections, str(parse_name(request.model)),
                                               request, question)
            if recalled:
                request = grounded.with_system(request, memory.prompt(recalled))
        async with aclosing(generation.generate(self.scheduler, self.store, self.settings, request)) as events:
            async for event in events:
                if isinstance(event, Done):
                    self.metrics.generation_done(request.model, event)
                    if question and event.reason in ("stop", "length"):
                        self._remember(str(parse_name(request.model)), question, event.text)
                    if ocr_images:
                        event = replace(event, images_read_by_ocr=ocr_images)
                    if found:
                        if found.cite_in_text:
                            yield Token(found.sources_text())
                            event = replace(event, text=event.text + found.sources_text())
                        event = replace(event, citations=found.citations)
                yield event

    async def _options(self, request: GenerateRequest) -> Options | None:
        """The request's options over its Modelfile's, for the chats and the requests that may ground or remember
        (None for a plain completion: reading the store is not needed for it)."""
        if not request.is_chat and request.collections is None and request.options.collections is None:
            return None  # a completion grounds only when asked in the request (its model may be bound for chats)
        return await asyncio.to_thread(grounded.options_of, self.store, request)

    async def _ground(self, request: GenerateRequest, options: Options | None) -> "grounded.Grounding | None":
        """The sources for a request that names collections (itself, by its options, or by its model's Modelfile)."""
        if options is None or not (request.collections or options.collections):
            return None
        return await grounded.ground(self.collections, request, options, self.reranker(options.rerank_model))

    def _remember(self, model: str, question: str, answer: str) -> None:
        """Keep a finished turn in the model's memory, after the answer has gone out (embedding it takes a moment)."""
        async def keep() -> None:
            try:
                await asyncio.to_thread(memory.remember, self.collections, model, question, answer)
            except Exception:  # the answer is delivered; a memory that could not be kept is only logged
                log.exception("could not remember a turn with %s", model)

        task = asyncio.get_running_loop().create_task(keep())
        self._remembering.add(task)
        task.add_done_callback(self._remembering.discard)

    async def rerank(self, request: "rerank.RerankRequest") -> "rerank.Reranked":
        return await rerank.rerank(self.scheduler, self.store, self.settings, request)

    def reranker(self, model: str | None) -> "Rerank | None":
        """Retrieval's rerank step with `model`, or None for none."""
        if not model:
            return None
        self._loop = asyncio.get_running_loop()
        return lambda query, documents: self.rerank_from_thread(model, query, documents)

    def rerank_from_thread(self, model: str, query: str, documents: list[str]) -> list[float]:
        """Scores for a search on a worker thread (a grounded chat's, `ember rag query`'s), computed on the loop."""
        if self._loop is None:
            raise RuntimeError("the runtime is not started")
        request = rerank.RerankRequest(model, query, documents, Options())
        return asyncio.run_coroutine_threadsafe(self.rerank(request), self._loop).result().scores

    async def embed(self, request: EmbedRequest) -> Embeddings:
        result = await embedding.embed(self.scheduler, self.store, self.settings, request)
        self.metrics.embedded(request.model, len(result.vectors), result.prompt_tokens)
        return result

    def embed_from_thread(self, model: str, texts: list[str]) -> list[list[float]]:
        """Embeddings for work on a worker thread (an ingest job), computed on the runtime's loop."""
        if self._loop is None:
            raise RuntimeError("the runtime is not started")
        request = EmbedRequest(model, texts, truncate=True)
        return asyncio.run_coroutine_threadsafe(self.embed(request), self._loop).result().vectors

    async def transcribe(self, request: TranscribeRequest, audio: BinaryIO,
                         on_segment: Callable[[Segment, float], None] | None = None) -> Transcript:
        result = await transcription.transcribe(self.scheduler, self.store, self.settings, request, audio, on_segment)
        self.metrics.transcribed(result.model, result.duration)
        return result

    def transcribe_from_thread(self, path: Path) -> list[tuple[float, float, str]]:
        """(start, end, text) of a recording, for an ingest job on a worker thread; computed on the loop."""
        if self._loop is None:
            raise RuntimeError("the runtime is not started")
        with open(path, "rb") as f:
            request = TranscribeRequest(model=None, source=path.name)
            transcript = asyncio.run_coroutine_threadsafe(self.transcribe(request, f), self._loop).result()
        return [(s.start, s.end, s.text) for s in transcript.segments]

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
