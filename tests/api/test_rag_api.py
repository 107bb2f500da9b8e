"""Collections over HTTP and answers with citations, through the official clients as they are."""

import json

import ollama
import openai
import pytest

GUIDE = """# Harbor guide

## Ferries

The morning ferry to Gull Island leaves pier 4 at 07:15 and costs 12 crowns.

## Lighthouse

The lighthouse keeper, Ada Brennick, opens the tower to visitors on Thursdays.
"""
QUICK = {"temperature": 0, "num_predict": 40, "seed": 3}


@pytest.fixture(scope="module")
def harbor(server, tmp_path_factory):
    """A collection made and filled over HTTP (module-scoped: the session server is shared)."""
    import httpx

    folder = tmp_path_factory.mktemp("harbor-docs")
    (folder / "guide.md").write_text(GUIDE, encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\nnot a pdf at all")
    with httpx.Client(base_url=server.url, timeout=120) as api:
        created = api.post("/api/collections", json={"name": "harbor-api"})
        assert created.status_code == 201, created.text
        assert created.json()["embed_model"] == "multilingual-e5" and created.json()["dims"] == 384
        lines = []
        with api.stream("POST", "/api/collections/harbor-api/files", json={"paths": [str(folder)]}) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line]
        final = lines[-1]
        assert final["status"] == "success" and len(final["added"]) == 1
        assert final["failed"][0]["path"].endswith("broken.pdf") and final["failed"][0]["error"]
        yield "harbor-api"
        api.delete("/api/collections/harbor-api")


def test_manage_and_query(api, harbor):
    listed = {c["name"]: c for c in api.get("/api/collections").json()["collections"]}
    assert listed[harbor]["files"] == 1 and listed[harbor]["chunks"] >= 2
    shown = api.get(f"/api/collections/{harbor}").json()
    assert shown["files"][0]["path"].endswith("guide.md") and shown["files"][0]["kind"] == "markdown"
    results = api.post(f"/api/collections/{harbor}/query", json={"query": "When does the boat leave?", "k": 2}).json()
    top = results["results"][0]
    assert "07:15" in top["text"] and top["headings"][-1] == "Ferries" and top["similarity"] > 0.8
    assert api.post("/api/collections/nope/query", json={"query": "x"}).status_code == 404
    assert api.post("/api/collections", json={"name": "bad/name"}).status_code == 400
    assert api.post(f"/api/collections/{harbor}/query", json={"query": "x", "mode": "magic"}).status_code == 400
    relative = api.post(f"/api/collections/{harbor}/files", json={"paths": ["docs"]})
    assert relative.status_code == 400 and "must be absolute" in relative.json()["error"]


def test_openai_client_gets_citations(server, harbor):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages = [{"role": "user", "content": "When does the morning ferry leave?"}]
    reply = client.chat.completions.create(model="smollm2", messages=messages, extra_body={"collections": [harbor]},
                                           temperature=0, max_tokens=40)
    citations = reply.model_extra["citations"]
    assert citations[0]["file"] == "guide.md" and "07:15" in citations[0]["text"] and citations[0]["index"] == 1
    assert reply.choices[0].message.content.strip()
    chunks = list(client.chat.completions.create(model="smollm2", messages=messages, stream=True, temperature=0,
                                                 max_tokens=40, extra_body={"collections": harbor}))
    assert chunks[-1].model_extra["citations"][0]["file"] == "guide.md"
    assert all("citations" not in (c.model_extra or {}) for c in chunks[:-1])


def test_ollama_client_gets_cited_sources_in_the_answer(server, harbor):
    client = ollama.Client(host=server.url)
    reply = client.chat(model="smollm2", messages=[{"role": "user", "content": "Who keeps the lighthouse?"}],
                        options={**QUICK, "collections": harbor, "cite_sources": True})
    assert "\n\nSources:\n[1] guide.md" in reply.message.content
    parts = list(client.chat(model="smollm2", messages=[{"role": "user", "content": "Who keeps the lighthouse?"}],
                             options={**QUICK, "collections": [harbor], "cite_sources": True}, stream=True))
    assert "".join(p.message.content for p in parts) == reply.message.content


def test_ollama_api_final_object_has_citations_and_nothing_found_says_so(api, harbor):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "When does the ferry leave pier 4?"}],
            "collections": [harbor], "options": QUICK}
    with api.stream("POST", "/api/chat", json=body) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and lines[-1]["citations"][0]["headings"] == ["Harbor guide", "Ferries"]
    assert all("citations" not in line for line in lines[:-1])
    unrelated = {**body, "stream": False,
                 "messages": [{"role": "user", "content": "Who won the football world cup in 1998?"}]}
    reply = api.post("/api/chat", json=unrelated).json()
    assert reply["message"]["content"].startswith("I could not find anything") and reply["citations"] == []
    russian = {**unrelated, "messages": [{"role": "user", "content": "Кто написал роман «Война и мир»?"}]}
    assert api.post("/api/chat", json=russian).json()["message"]["content"].startswith("В документах")
    missing = api.post("/api/chat", json={**body, "collections": ["nope"], "stream": False})
    assert missing.status_code == 404 and "ember rag create nope" in missing.json()["error"]


def test_a_model_bound_to_a_collection_by_its_modelfile(api, harbor):
    modelfile = f'FROM smollm2\nPARAMETER collections {harbor}\nPARAMETER temperature 0\nPARAMETER num_predict 30\n'
    assert api.post("/api/create", json={"model": "harbor-bot", "modelfile": modelfile}).status_code == 200
    try:
        reply = api.post("/api/chat", json={"model": "harbor-bot", "stream": False, "messages": [
            {"role": "user", "content": "How much does the Gull Island ferry cost?"}]}).json()
        assert reply["citations"][0]["file"] == "guide.md"
    finally:
        api.request("DELETE", "/api/delete", json={"model": "harbor-bot"})


def test_a_rerank_model_reorders_what_is_found(api, harbor):
    body = {"query": "Who opens the tower to visitors?", "k": 2}
    plain = api.post(f"/api/collections/{harbor}/query", json=body).json()
    reranked = api.post(f"/api/collections/{harbor}/query", json={**body, "rerank_model": "minilm"}).json()
    assert reranked["rerank_model"] == "minilm" and "Ada Brennick" in reranked["results"][0]["text"]
    scores = [r["score"] for r in reranked["results"]]
    assert scores == sorted(scores, reverse=True) and scores != [r["score"] for r in plain["results"]]
    assert -1 <= scores[0] <= 1  # cosines (minilm as a bi-encoder), not fused rank scores
    chat = {"model": "smollm2", "stream": False, "collections": [harbor],
            "messages": [{"role": "user", "content": "Who keeps the lighthouse?"}],
            "options": {**QUICK, "rerank_model": "minilm"}}
    reply = api.post("/api/chat", json=chat).json()
    assert "Ada Brennick" in reply["citations"][0]["text"]
    bad = api.post(f"/api/collections/{harbor}/query", json={**body, "rerank_model": "smollm2"})
    assert bad.status_code == 400 and "not an embedding or reranking model" in bad.text
