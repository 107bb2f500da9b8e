"""Collections over the real bundled embedding models, on the engine the server picks, behind the `Embed` seam,
counted."""

import os
import threading

import pytest

from ember.core.types import EmbedRequest
from ember.engines.base import LoadSpec, Role
from ember.engines.registry import Engines
from ember.rag.collections import Collections
from ember.runtime.embedding import _embed
from ember.runtime.jobs import Reporter
from ember.store.store import ModelStore


class CountingEmbedder:
    """The real engine for each model the store holds, counting the texts it is sent (re-embedding is what the
    tests watch). What the runtime does too: tokens cut to the window, vectors normalised."""

    def __init__(self, store: ModelStore):
        self.store = store
        self.engines = {}
        self.texts = 0

    def __call__(self, model: str, texts: list[str]) -> list[list[float]]:
        if model not in self.engines:
            path = self.store.get(model).model_path
            self.engines[model] = Engines().load(LoadSpec(path, role=Role.EMBED, num_ctx=512))
        self.texts += len(texts)
        return _embed(self.engines[model], EmbedRequest(model, texts), threading.Event())[0]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


@pytest.fixture(scope="session")
def embedder(ember_home) -> CountingEmbedder:
    engine = CountingEmbedder(ModelStore(ember_home / "models"))
    yield engine
    engine.close()


@pytest.fixture
def collections(tmp_path, embedder) -> Collections:
    return Collections(tmp_path / "collections", embedder)


GUIDE = """# Harbor guide

## Ferries

The morning ferry to Gull Island leaves pier 4 at 07:15 and costs 12 crowns.

## Lighthouse

The lighthouse keeper, Ada Brennick, opens the tower to visitors on Thursdays.
"""
NOTES = "Meeting notes.\n\nThe budget for the new pump station is 480,000 crowns, approved in March.\n"
PAGE = ("<html><head><title>Bakery</title></head><body><nav>Home | About</nav><h1>Bakery</h1>"
        "<h2>Bread</h2><p>Our rye loaf is baked with caraway seeds every morning.</p><footer>© 2026</footer>"
        "</body></html>")


def report() -> Reporter:
    """A job's reporter that shows nothing and is never cancelled."""
    return Reporter(lambda progress: None, threading.Event())


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "guide.md").write_text(GUIDE, encoding="utf-8")
    (folder / "sub" / "notes.txt").write_text(NOTES, encoding="utf-8")
    (folder / "bakery.html").write_text(PAGE, encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(400))
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "picture.bin").write_bytes(b"\x00\x01")  # not a document kind: left out of a folder walk
    return folder
