"""Embeddings for one request: texts checked against the context window, one batch to an embedder, then normalised."""

import asyncio
import logging
import math
import time

from ember.config import Settings
from ember.core.errors import BadRequest
from ember.core.types import Embeddings, EmbedRequest
from ember.engines.base import Embedder, Role
from ember.runtime.plan import plan
from ember.runtime.scheduler import Scheduler
from ember.store.store import ModelStore

log = logging.getLogger("ember.embedding")


async def embed(scheduler: Scheduler, store: ModelStore, settings: Settings, request: EmbedRequest) -> Embeddings:
    p = await asyncio.to_thread(plan, store, settings, request.model, request.options, None, Role.EMBED)
    async with scheduler.admitted(), scheduler.using(p.model, p.spec, request.keep_alive) as lease:
        engine = lease.engine
        if not isinstance(engine, Embedder):
            raise BadRequest(f"{p.model.name} cannot embed text")
        started = time.perf_counter_ns()
        vectors, count = await asyncio.to_thread(_embed, engine, request)
        return Embeddings(vectors, count, load_ns=lease.load_ns, total_ns=time.perf_counter_ns() - started
                          + lease.load_ns)


def _embed(engine: Embedder, request: EmbedRequest) -> tuple[list[list[float]], int]:
    token_lists = []
    for i, text in enumerate(request.inputs):
        tokens = engine.tokenize(text, special=False)
        if len(tokens) > engine.n_ctx:
            if not request.truncate:
                raise BadRequest(f"input[{i}] is {len(tokens)} tokens, more than the context window ({engine.n_ctx});"
                                 " shorten it, raise num_ctx, or send truncate: true")
            log.warning("embed: input[%d] truncated from %d to %d tokens", i, len(tokens), engine.n_ctx)
            tokens = tokens[: engine.n_ctx]
        token_lists.append(tokens)
    vectors = engine.embed(token_lists) if token_lists else []
    if request.normalize:
        vectors = [normalize(v) for v in vectors]
    return vectors, sum(map(len, token_lists))


def normalize(vector: list[float]) -> list[float]:
    """Scaled to length 1 (cosine similarity becomes a dot product); a zero vector stays zero."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
