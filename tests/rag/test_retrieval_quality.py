"""Retrieval on the evaluation corpus (tests/rag_corpus: 24 documents, 60 questions, English and Russian, some asked
across languages): recall@5 per language for each way of searching, every row printed.

A question is found when one of the top five chunks comes from its document and holds its answer phrase.
"""

import json
import re
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from ember.rag.collections import DEFAULT_EMBED_MODEL
from ember.runtime.jobs import Reporter

CORPUS = Path(__file__).resolve().parent.parent / "rag_corpus"
K = 5


def squash(text: str) -> str:
    """Case, whitespace and Markdown emphasis set aside, as a reader would."""
    return " ".join(re.sub(r"[*`]", "", text).split()).casefold()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, embedder):
    from ember.rag.collections import Collections

    collections = Collections(tmp_path_factory.mktemp("eval") / "collections", embedder)
    collections.create("eval", DEFAULT_EMBED_MODEL)
    report = collections.add("eval", [CORPUS / "docs"], Reporter(lambda p: None, threading.Event()))
    assert not report.failed and len(report.added) == 24
    questions = [json.loads(line) for line in (CORPUS / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    return collections, questions


def found(hits, question) -> int | None:
    """The rank (from 1) of the first hit that answers, or None."""
    for rank, hit in enumerate(hits, 1):
        if hit.chunk.source.endswith(question["doc"]) and squash(question["answer"]) in squash(hit.chunk.text):
            return rank
    return None


def test_recall_at_5_per_language_and_mode(corpus):
    collections, questions = corpus
    recall: dict[str, dict[str, float]] = defaultdict(dict)
    rows = []
    for mode in ("keyword", "vector", "hybrid"):
        per_lang: dict[str, list[bool]] = defaultdict(list)
        for q in questions:
            hits, _ = collections.search("eval", q["question"], K, mode)
            rank = found(hits, q)
            per_lang[q["question_lang"]].append(rank is not None)
            cross = "x" if q["doc"][:2] != q["question_lang"] else " "
            rows.append(f"{mode:8} {q['id']:6} {cross} {rank or '-':>2}  {q['question'][:70]}")
        for lang, hits in per_lang.items():
            recall[mode][lang] = sum(hits) / len(hits)
    print("\nmode     id     x rank question (x: asked in the other language)")
    print("\n".join(rows))
    print("\nrecall@5   " + "   ".join(f"{m}: en {r['en']:.2f} ru {r['ru']:.2f}" for m, r in recall.items()))
    # Floors at what was measured (2026-11-23, ONNX Runtime: keyword 0.73 / 0.77, vector 0.93 / 0.87, hybrid 0.93 /
    # 0.93), so that a change that finds less fails here; hybrid at the goal (>= 0.9 in each language) and
    # never below either side alone. No reranker follows: none ships in a wheel here (a cross-encoder GGUF a user
    # imports can be named with rerank_model).
    floors = {"keyword": (0.7, 0.73), "vector": (0.9, 0.85), "hybrid": (0.9, 0.9)}
    for mode, (en, ru) in floors.items():
        assert recall[mode]["en"] >= en and recall[mode]["ru"] >= ru, (mode, recall)
    for lang in ("en", "ru"):
        assert recall["hybrid"][lang] >= max(recall["vector"][lang], recall["keyword"][lang]), recall
