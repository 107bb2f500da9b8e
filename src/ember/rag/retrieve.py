"""Finding the chunks that answer a question: vectors and words searched separately, fused by rank, then reranked.

Vectors find paraphrases and the other language's wording; words find names, numbers and rare terms that an embedding
blurs. Reciprocal rank fusion needs no calibration between the two scores (cosine and BM25 live on different
scales): each list votes 1 / (60 + rank), 60 as in Cormack et al. and most hybrid search engines.

A third list carries names across languages: the chunks holding a name of the question by sound ("Lesnogorsk" in an
English question, "Лесногорск" in a Russian document; keywords.name_keys), in the order of their cosine to the
question. Words alone cannot cross languages, and on the evaluation corpus (tests/rag_corpus) fusing them with the
vectors lost to the vectors alone (recall@5 0.73/0.83 against 0.93/0.87, English/Russian questions); with the names
list, hybrid finds 0.93/0.93. The names stay out of the words list there: counted in both, every chunk of a named
document outranked the one chunk that answers.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ember.core.errors import BadRequest
from ember.rag import keywords
from ember.rag.index import SqliteIndex, StoredChunk

RRF_K = 60
CANDIDATES = 40  # from each list, before fusion
NAMED_POOL = 200  # chunks holding a name, ordered by their place among this many nearest by vector
MODES = ("hybrid", "vector", "keyword")

# (query, passages) → one relevance score per passage, higher is better.
Rerank = Callable[[str, list[str]], list[float]]


@dataclass(frozen=True)
class Hit:
    chunk: StoredChunk
    score: float  # the final ordering's score: the reranker's, else the fused one
    similarity: float | None  # cosine to the question, when the vector search found it
    keyword_rank: int | None  # 1-based place in the BM25 list, when the words found it
    vector_rank: int | None

    def as_dict(self) -> dict:
        c = self.chunk
        return {"source": c.source, "page": c.page, "headings": list(c.headings), "start": c.start, "end": c.end,
                "text": c.text, "score": round(self.score, 6),
                "similarity": None if self.similarity is None else round(self.similarity, 6),
                "vector_rank": self.vector_rank, "keyword_rank": self.keyword_rank}


def passage(chunk: StoredChunk) -> str:
    """What a reranker reads of a chunk: its heading path, then its text (as it was embedded: a chunk often names its
    subject only in a heading)."""
    return " › ".join(chunk.headings) + "\n" + chunk.text if chunk.headings else chunk.text


def fuse(*rankings: list[int]) -> list[tuple[int, float]]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, 1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def search(index: SqliteIndex, query_vector: np.ndarray | None, query: str, k: int = 5, mode: str = "hybrid",
           rerank: Rerank | None = None) -> list[Hit]:
    if mode not in MODES:
        raise BadRequest(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    if not query.strip():
        raise BadRequest("the question is empty")
    names = keywords.name_keys(query) if mode == "hybrid" else []
    nearest = index.vector_search(query_vector, NAMED_POOL if names else CANDIDATES) if mode != "keyword" else []
    by_vector = nearest[:CANDIDATES]
    by_words = index.keyword_search(keywords.search_terms(query, sound_keys=mode == "keyword"),
                                    CANDIDATES) if mode != "vector" else []
    by_names = []
    if names:
        near = {cid: r for r, (cid, _) in enumerate(nearest)}
        named = index.keyword_search(names, NAMED_POOL)  # BM25 order: the tie-break for those not near
        by_names = sorted((cid for cid, _ in named), key=lambda cid: near.get(cid, len(near)))[:CANDIDATES]
    similarity = dict(nearest)
    vector_rank = {cid: r for r, (cid, _) in enumerate(by_vector, 1)}
    keyword_rank = {cid: r for r, (cid, _) in enumerate(by_words, 1)}
    fused = fuse([cid for cid, _ in by_vector], [cid for cid, _ in by_words], by_names)
    pool = fused[: max(k, CANDIDATES // 2) if rerank else k]
    chunks = index.chunks([cid for cid, _ in pool])
    hits = [Hit(chunks[cid], score, similarity.get(cid), keyword_rank.get(cid), vector_rank.get(cid))
            for cid, score in pool if cid in chunks]
    if rerank and hits:
        scores = rerank(query, [passage(h.chunk) for h in hits])
        hits = sorted((Hit(h.chunk, s, h.similarity, h.keyword_rank, h.vector_rank) for h, s in zip(hits, scores)),
                      key=lambda h: -h.score)
    return hits[:k]
