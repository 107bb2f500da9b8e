"""Which engine loads a model, and what the model can do with it.

Each engine module is imported only when a model needs it, so that listing or showing models never loads llama.cpp
(and, later, Whisper or Tesseract).
"""

from ember.core.errors import BadRequest
from ember.engines.base import Capability, Engine, EngineFactory, LoadSpec
from ember.store.store import Model, describe

GGUF_MAGIC = b"GGUF"


def _is_gguf(spec: LoadSpec) -> bool:
    try:
        with open(spec.model_path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as e:
        raise BadRequest(f"cannot read {spec.model_path}: {e.strerror}") from None


class Engines:
    """The scheduler's engine factory: hands each spec to the engine that can load it."""

    def __init__(self) -> None:
        self._llama: EngineFactory | None = None

    def _engine_for(self, spec: LoadSpec) -> EngineFactory:
        if not _is_gguf(spec):
            raise BadRequest(f"{spec.model_path.name} is not a GGUF file; ember's engines load GGUF models")
        if self._llama is None:
            from ember.engines.llamacpp import LlamaCppFactory

            self._llama = LlamaCppFactory()
        return self._llama

    def estimate(self, spec: LoadSpec) -> int:
        return self._engine_for(spec).estimate(spec)

    def load(self, spec: LoadSpec) -> Engine:
        return self._engine_for(spec).load(spec)


def capabilities(model: Model) -> list[Capability]:
    """What `model` can be used for with the engines ember has: read from its GGUF header and its template."""
    info = model.info
    if f"{info.architecture}.pooling_type" in info.model_info:  # an encoder made for embeddings (BERT and kin)
        return [Capability.EMBEDDING]
    # Tools for every model that generates: its own template's form when it has one, else ember's generic form.
    return [Capability.COMPLETION, Capability.TOOLS]


def show(model: Model) -> dict:
    """What `ember show` and /api/show tell: the stored description and what ember's engines can do with it."""
    return {**describe(model), "capabilities": [str(c) for c in capabilities(model)]}
