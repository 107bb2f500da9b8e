"""Collections on a real Chroma server, started here on loopback from the installed `chromadb` package: the same
operations as on SQLite, ember computing the embeddings."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ember.core.errors import BadRequest, NotFound
from ember.rag.chroma_index import Unreachable
from ember.rag.collections import Collections
from tests.rag.conftest import NOTES, report

RUSSIAN = """# Паром

Утренний паром на остров Чаячий отходит от причала 4 в 07:15 и стоит 12 крон.
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    port = free_port()
    data = tmp_path_factory.mktemp("chroma")
    chroma = Path(sys.executable).with_name("chroma")
    with open(data / "chroma.log", "wb") as log:
        process = subprocess.Popen([str(chroma), "run", "--host", "127.0.0.1", "--port", str(port), "--path",
                                    str(data / "db")], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            process.kill()
            raise RuntimeError(f"the Chroma server did not start: {(data / 'chroma.log').read_text()[-2000:]}")
        yield url
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_a_collection_on_chroma(chroma_url, embedder, docs, tmp_path):
    (docs / "parom.md").write_text(RUSSIAN, encoding="utf-8")
    collections = Collections(tmp_path / "unused", embedder, rag_url=chroma_url)
    info = collections.create("harbor-c")
    assert info.embed_model == "multilingual-e5" and info.dims == 384 and "harbor-c" in collections.names()
    assert not (tmp_path / "unused").exists()  # nothing local
    with pytest.raises(BadRequest, match="already exists"):
        collections.create("harbor-c")

    first = collections.add("harbor-c", [docs], report())
    assert len(first.added) == 4 and len(first.failed) == 2 and first.embedded == first.chunks > 0
    assert collections.info("harbor-c").files == 4
    hits, relevant = collections.search("harbor-c", "When does the boat to the island depart?", k=3)
    assert relevant and "07:15" in hits[0].chunk.text and hits[0].chunk.headings
    by_word, _ = collections.search("harbor-c", "Brennick", k=3, mode="keyword")
    assert "Ada Brennick" in by_word[0].chunk.text
    russian, _ = collections.search("harbor-c", "Сколько стоит паром на Чаячий?", k=3, mode="hybrid")
    assert any(h.chunk.source.endswith("parom.md") for h in russian)

    before = embedder.texts
    assert collections.add("harbor-c", [docs], report()).embedded == 0 and embedder.texts == before
    (docs / "sub" / "notes.txt").write_text(NOTES.replace("480,000", "510,000"), encoding="utf-8")
    edited = collections.add("harbor-c", [docs], report())
    assert [p.rsplit("/", 1)[1] for p in edited.replaced] == ["notes.txt"]
    assert embedder.texts - before == edited.chunks
    budget, _ = collections.search("harbor-c", "pump station budget", k=1)
    assert "510,000" in budget[0].chunk.text

    assert [p.rsplit("/", 1)[1] for p in collections.remove("harbor-c", [docs / "sub"])] == ["notes.txt"]
    assert collections.info("harbor-c").files == 3
    assert collections.index("harbor-c").count_chunks() == sum(s.chunks for s in collections.sources("harbor-c"))

    # Deleted by another process (another Collections) between two uses: a 404, not a traceback.
    held = collections.index("harbor-c")
    Collections(tmp_path / "unused", embedder, rag_url=chroma_url).delete("harbor-c")
    with pytest.raises(NotFound, match="gone from the Chroma server") as gone:
        held.sources()
    assert gone.value.status == 404
    collections.create("harbor-c")
    collections.delete("harbor-c")
    assert "harbor-c" not in collections.names()
    with pytest.raises(NotFound):
        collections.delete("harbor-c")
    with pytest.raises(NotFound, match="not found on the Chroma server"):
        collections.search("harbor-c", "x")


def test_an_unreachable_server_says_what_to_do(embedder, tmp_path):
    collections = Collections(tmp_path, embedder, rag_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unreachable, match="cannot reach the Chroma server") as e:
        collections.names()
    assert e.value.status == 503 and "unset EMBER_RAG_URL" in e.value.message
