"""Collections on the real embedding model: ingest that skips what it has, replaces what changed, refuses what it
cannot read (by name) and keeps the rest; search that finds by meaning and by word; an index that stays consistent."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ember.core.errors import BadRequest, NotFound
from ember.rag.index import SqliteIndex
from tests.rag.conftest import NOTES, report


def consistent(index: SqliteIndex) -> None:
    """Every chunk has its words and its vector, and every file's count matches its chunks."""
    db = index._db()
    chunks = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
    assert db.execute("SELECT count(*) FROM chunk_words").fetchone()[0] == chunks
    assert db.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0] == chunks
    assert sum(f.chunks for f in index.sources()) == chunks
    orphans = db.execute("SELECT count(*) FROM chunks WHERE source NOT IN (SELECT path FROM files)").fetchone()[0]
    assert orphans == 0


def test_add_twice_changes_nothing_and_an_edit_reembeds_only_that_file(collections, embedder, docs):
    collections.create("notes")
    first = collections.add("notes", [docs], report())
    assert sorted(p.rsplit("/", 1)[1] for p in first.added) == ["bakery.html", "guide.md", "notes.txt"]
    failed = {p.rsplit("/", 1)[1]: why for p, why in first.failed}
    assert set(failed) == {"broken.pdf", "broken.docx"}, failed
    assert first.embedded == first.chunks > 0

    before = embedder.texts
    again = collections.add("notes", [docs], report())
    assert again.added == again.replaced == [] and len(again.unchanged) == 3
    assert embedder.texts == before and again.embedded == 0

    (docs / "sub" / "notes.txt").write_text(NOTES.replace("480,000", "510,000"), encoding="utf-8")
    edited = collections.add("notes", [docs], report())
    assert [p.rsplit("/", 1)[1] for p in edited.replaced] == ["notes.txt"] and len(edited.unchanged) == 2
    assert embedder.texts - before == edited.embedded == edited.chunks  # only the edited file's chunks
    hits, relevant = collections.search("notes", "How much is the pump station budget?")
    assert relevant and "510,000" in hits[0].chunk.text
    consistent(collections.index("notes"))


def test_search_finds_by_meaning_and_by_word_with_sources(collections, docs):
    collections.create("harbor")
    collections.add("harbor", [docs], report())
    hits, relevant = collections.search("harbor", "When does the boat to the island depart?", k=3)
    top = hits[0].chunk
    assert relevant and "07:15" in top.text and top.source.endswith("guide.md") and top.headings[-1] == "Ferries"
    by_word, _ = collections.search("harbor", "Brennick", k=3, mode="keyword")
    assert by_word and "Ada Brennick" in by_word[0].chunk.text and by_word[0].keyword_rank == 1
    html = [h for h in collections.search("harbor", "caraway rye bread", k=5)[0] if h.chunk.source.endswith(".html")]
    assert html and "Home | About" not in html[0].chunk.text and "©" not in html[0].chunk.text
    _, relevant = collections.search("harbor", "Who won the football world cup in 1998?")
    assert not relevant


def test_forget_files_and_bad_names(collections, docs):
    collections.create("c1")
    collections.add("c1", [docs], report())
    gone = collections.remove("c1", [docs / "sub"])
    assert [p.rsplit("/", 1)[1] for p in gone] == ["notes.txt"]
    assert all(not s.path.endswith("notes.txt") for s in collections.sources("c1"))
    consistent(collections.index("c1"))
    with pytest.raises(NotFound, match="holds nothing at"):
        collections.remove("c1", [docs / "sub"])
    with pytest.raises(BadRequest, match="already exists"):
        collections.create("c1")
    with pytest.raises(BadRequest, match="invalid collection name"):
        collections.create("../escape")
    with pytest.raises(NotFound, match="ember rag create nope"):
        collections.add("nope", [docs], report())
    missing = collections.add("c1", [docs / "missing.md", docs / "picture.bin"], report())
    assert [why for _, why in missing.failed] == ["no such file or folder", missing.failed[1][1]]
    assert "not a kind ember reads" in missing.failed[1][1]
    collections.delete("c1")
    assert collections.names() == []


def test_kill_during_ingest_leaves_a_usable_collection(tmp_path, ember_home):
    """`kill -9` in the middle of `ember rag add`: what is in is whole, and adding again completes the rest."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(120):
        (folder / f"doc-{i:03}.md").write_text(f"# Doc {i}\n\n" + f"Paragraph about item {i} and its colour. " * 60,
                                               encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(ember_home / "models")
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_HOST": "127.0.0.1:9"}  # no server there: in-process
    ember = [sys.executable, "-m", "ember"]
    subprocess.run([*ember, "rag", "create", "big"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*ember, "rag", "add", "big", str(folder), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = SqliteIndex(home / "collections" / "big.sqlite")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(index.sources()) < 5:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(index.sources())
    assert 5 <= partial < 120
    consistent(index)
    done = subprocess.run([*ember, "rag", "add", "big", str(folder), "--quiet"], env=env, capture_output=True,
                          text=True, check=True)
    assert f"{120 - partial} added" in done.stdout and f"{partial} unchanged" in done.stdout
    assert len(index.sources()) == 120
    consistent(index)


def test_the_cli_from_create_to_ask(tmp_path, ember_home, docs):
    """`ember rag` as a user types it, without a server (embeddings and the answer in the CLI's own process)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(ember_home / "models")
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_HOST": "127.0.0.1:9"}

    def ember(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True,
                              timeout=300)

    assert "created collection 'docs' (multilingual-e5, 384 dimensions)" in ember("rag", "create", "docs").stdout
    added = ember("rag", "add", "docs", str(docs), "--quiet")
    assert added.returncode == 0 and "3 added, 0 replaced, 0 unchanged, 2 failed" in added.stdout
    assert "broken.pdf" in added.stderr and "broken.docx" in added.stderr and "Traceback" not in added.stderr
    assert "docs" in ember("rag", "ls").stdout and "guide.md" in ember("rag", "show", "docs").stdout
    found = json.loads(ember("rag", "query", "docs", "Кто смотрит за маяком?", "--json").stdout)
    assert "Ada Brennick" in found[0]["text"] and found[0]["headings"][-1] == "Lighthouse"
    asked = ember("rag", "ask", "docs", "Who keeps the lighthouse?")
    assert asked.returncode == 0 and "Sources" in asked.stdout and "[1] guide.md" in asked.stdout
    missing = ember("rag", "query", "nope", "x")
    assert missing.returncode == 1 and "collection 'nope' not found" in missing.stderr
    assert "forgot 1 file" in ember("rag", "rm", "docs", str(docs / "guide.md")).stdout
    assert "deleted collection 'docs'" in ember("rag", "rm", "docs").stdout
