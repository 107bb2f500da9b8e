from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from ember.store.store import ModelStore


def write_gguf(path: Path, *, adapter: bool = False, context: int = 256) -> Path:
    """A tiny GGUF with real headers and one tensor: enough for the store, not for llama.cpp."""
    writer = GGUFWriter(str(path), "llama")
    if adapter:
        writer.add_type("adapter")
    writer.add_context_length(context)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture(scope="session")
def pulled(tmp_path_factory) -> ModelStore:
    """One store with the bundled model, shared by the tests that only read it."""
    store = ModelStore(tmp_path_factory.mktemp("pulled") / "models")
    store.pull("smollm2")
    return store


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def tiny_adapter(tmp_path) -> Path:
    return write_gguf(tmp_path / "tiny-lora.gguf", adapter=True)
