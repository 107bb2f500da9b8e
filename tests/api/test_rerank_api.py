"""Reranking over HTTP: the bundled embedding models as bi-encoders, and a cross-encoder GGUF made from a Hugging Face
folder, scored as transformers scores it."""

import httpx
import ollama
import pytest

from ember.train.convert import bert_to_gguf
from tests.engines.cross_encoder import make_cross_encoder, reference_scores

QUERY = "When does the museum open again?"
DOCS = ["The bakery sells rye bread.", "The museum reopens on Monday after the repairs.",
        "Trains to the coast leave every hour."]


def test_rerank_with_an_embedding_model(api):
    body = {"model": "minilm", "query": QUERY, "documents": DOCS}
    for path in ("/api/rerank", "/v1/rerank", "/rerank", "/v1/reranking"):
        r = api.post(path, json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert [x["index"] for x in data["results"]][0] == 1 and data["scoring"] == "bi-encoder"
        scores = [x["relevance_score"] for x in data["results"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3 and "document" not in data["results"][0]
        assert data["usage"]["prompt_tokens"] > 10
    top = api.post("/v1/rerank", json={**body, "documents": [{"text": d} for d in DOCS], "top_n": 1,
                                       "return_documents": True}).json()["results"]
    assert top == [{"index": 1, "relevance_score": pytest.approx(top[0]["relevance_score"]),
                    "document": {"text": DOCS[1]}}]


def test_rerank_russian_with_the_multilingual_model(api):
    docs = ["В пекарне продают ржаной хлеб.", "Музей снова откроется в понедельник после ремонта.",
            "The museum reopens on Monday after the repairs."]
    data = api.post("/api/rerank", json={"model": "multilingual-e5", "query": "Когда снова откроется музей?",
                                         "documents": docs}).json()
    assert data["results"][-1]["index"] == 0  # the bread is least relevant, in either language


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "minilm", "query": "x", "documents": []}, 400, "documents"),
    ({"model": "minilm", "documents": ["a"]}, 400, "query"),
    ({"model": "minilm", "query": "x", "documents": ["a"], "top_n": 0}, 400, "top_n"),
    ({"model": "no-such-model", "query": "x", "documents": ["a"]}, 404, "not found"),
    ({"model": "smollm2", "query": "x", "documents": ["a"]}, 400, "not an embedding or reranking model"),
])
def test_bad_rerank_requests(api, body, status, words):
    r = api.post("/api/rerank", json=body)
    assert r.status_code == status and words in r.text, r.text


def test_a_cross_encoder_scores_pairs_as_transformers_does(server, tmp_path):
    folder = make_cross_encoder(tmp_path / "hf")
    gguf = bert_to_gguf(folder, tmp_path / "tiny-reranker.gguf", name="tiny reranker")
    client = ollama.Client(host=server.url)
    digest = client.create_blob(gguf)
    client.create(model="tiny-reranker", files={"tiny-reranker.gguf": digest})
    try:
        assert "embedding" in client.show("tiny-reranker").capabilities
        docs = [*DOCS, "Музей открыт с девяти часов.", "museum " * 300]  # the last is cut to fit the window
        data = httpx.post(f"{server.url}/api/rerank", json={"model": "tiny-reranker", "query": QUERY,
                                                            "documents": docs}, timeout=120).json()
        assert data["scoring"] == "cross-encoder"
        got = {r["index"]: r["relevance_score"] for r in data["results"]}
        expected = reference_scores(folder, QUERY, docs)
        assert [got[i] for i in range(len(docs))] == pytest.approx(expected, abs=1e-4)
    finally:
        client.delete("tiny-reranker")
