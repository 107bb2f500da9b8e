"""Embeddings for one request: texts checked against the context window, one batch to an embedder, then normalised."""

import asyncio
import logging
import math
import threading
import time

from ember.config import Settings
from ember.core.errors import BadRequest
from ember.core.types import Embeddings, EmbedRequest
from ember.engines.base import Embedder, Role
from ember.runtime.plan import plan
from ember.runtime.scheduler import Scheduler
from ember.store.store import ModelStore

log = logging.getLogger("ember.embedding")

# Inputs reach the engine at most this many tokens at a time (llama.cpp's usual batch), so that a cancelled request
# stops at the next batch rather than after one decode of all it sent; a batch this size keeps the kernels as busy.
BATCH_TOKENS = 512


async def embed(scheduler: Scheduler, store: ModelStore, settings: Settings, request: EmbedRequest) -> Embeddings:
    p = await asyncio.to_thread(plan, store, settings, request.model, request.options, None, Role.EMBED)
    async with scheduler.admitted(), scheduler.using(p.model, p.spec, request.keep_alive) as lease:
        engine = lease.engine
        if not isinstance(engine, Embedder):
            raise BadRequest(f"{p.model.name} cannot embed text")
        started = time.perf_counter_ns()
        cancel = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(_embed, engine, request, cancel))
        try:
            vectors, count = await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            # The lease is held until the batch in progress ends: the engine must not be unloaded under it.
            await asyncio.wait((work,))
            work.exception()  # retrieved: nobody is left to hear of it
            raise
        return Embeddings(vectors, count, load_ns=lease.load_ns, total_ns=time.perf_counter_ns() - started
                          + lease.load_ns)


def _embed(engine: Embedder, request: EmbedRequest, cancel: threading.Event) -> tuple[list[list[float]], int]:
    token_lists = []
    # What the tokenizer puts after every text (BERT's [SEP]): a cut text keeps it, as sentence-transformers does.
    bare = engine.tokenize("", special=False)
    end = bare[-1:] if len(bare) >= 2 else []
    for i, text in enumerate(request.inputs):
        if cancel.is_set():  # tokenizing thousands of inputs takes a while too
            break
        tokens = engine.tokenize(text, special=False)
        if len(tokens) > engine.n_ctx:
            if not request.truncate:
                raise BadRequest(f"input[{i}] is {len(tokens)} tokens, more than the context window ({engine.n_ctx});"
                                 " shorten it, raise num_ctx, or send truncate: true")
            log.warning("embed: input[%d] truncated from %d to %d tokens", i, len(tokens), engine.n_ctx)
            tokens = tokens[: engine.n_ctx - len(end)] + end if end and tokens[-1:] == end else tokens[: engine.n_ctx]
        token_lists.append(tokens)
    # Sent shortest first, so that each batch holds inputs of about one length (an engine that pads, as ONNX Runtime
    # does, pads little); the vectors are put back in the request's order.
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    done: list[list[float]] = []
    for batch in batches([token_lists[i] for i in order], BATCH_TOKENS):
        if cancel.is_set():
            log.info("embed: cancelled after %d of %d inputs", len(done), len(request.inputs))
            return [], sum(map(len, token_lists))
        done += engine.embed(batch)
    vectors: list[list[float]] = [[] for _ in order]
    for i, vector in zip(order, done):
        vectors[i] = vector
    if request.normalize:
        vectors = [normalize(v) for v in vectors]
    return vectors, sum(map(len, token_lists))


def batches(token_lists: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Consecutive inputs, up to `budget` tokens a batch (an input longer than that alone)."""
    out: list[list[list[int]]] = []
    size = 0
    for tokens in token_lists:
        if not out or size + len(tokens) > budget:
            out.append([])
            size = 0
        out[-1].append(tokens)
        size += len(tokens)
    return out


def normalize(vector: list[float]) -> list[float]:
    """Scaled to length 1 (cosine similarity becomes a dot product); a zero vector stays zero."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
