import pytest

from ember.store.store import ModelStore
from tests.helpers import write_gguf


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture(scope="session")
def pulled(tmp_path_factory) -> ModelStore:
    """One store with the bundled model, shared by the tests that only read it."""
    return ModelStore(tmp_path_factory.mktemp("pulled") / "models")


@pytest.fixture
def tiny(tmp_path):
    return write_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def tiny_adapter(tmp_path):
    return write_gguf(tmp_path / "tiny-lora.gguf", adapter=True)
