"""Tiny GGUF files with real headers and tensors: enough for the store, the scheduler and doctor, not for llama.cpp.
The tests build their models with them, and the fault bench fills a store with one."""

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

TOKENS = ["<unk>", "<s>", "</s>", "hello", "world"]


def write_gguf(path: Path, *, adapter: bool = False, context: int = 256, template: str | None = None,
               rows: int = 16) -> Path:
    """A tiny GGUF with real headers and tensors: enough for the store and the scheduler, not for llama.cpp."""
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
