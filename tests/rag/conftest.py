"""Collections over the real bundled embedding models, on the engine the server picks, behind the `Embed` seam,
counted."""

import threading

import pytest

from ember.core.types import EmbedRequest
from ember.engines.base import LoadSpec, Role
from ember.engines.registry import Engines
from ember.rag.collections import Collections
from ember.runtime.embedding import _embed
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
