"""Which engine loads a model, and what the model can do with it.

Each engine module is imported only when a model needs it, so that listing or showing models never loads llama.cpp
(and, later, Whisper or Tesseract).

Embedding encoders (BERT and kin) with f32 or f16 weights run on ONNX Runtime when it is installed, else on
llama.cpp: the same GGUF, the same vectors, ~1.5x the texts per second here (bench/embed.py); quantized ones and
everything else on llama.cpp. EMBER_EMBED_ENGINE=llama.cpp keeps every model on llama.cpp.
"""

import os

from ember.core.errors import BadRequest
from ember.engines.base import Capability, Engine, EngineFactory, LoadSpec, Role
from ember.store.gguf_info import read_gguf_info
from ember.store.store import Model, describe

GGUF_MAGIC = b"GGUF"
EMBED_ENGINES = ("auto", "onnxruntime", "llama.cpp")


def _is_gguf(spec: LoadSpec) -> bool:
    try:
        with open(spec.model_path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as e:
        raise BadRequest(f"cannot read {spec.model_path}: {e.strerror}") from None


class Engines:
    """The scheduler's engine factory: hands each spec to the engine that can load it."""

    def __init__(self, embed_engine: str | None = None) -> None:
        self._llama: EngineFactory | None = None
        self._onnx: EngineFactory | None = None
        self._whisper: EngineFactory | None = None
        self._embed_engine = (embed_engine or os.environ.get("EMBER_EMBED_ENGINE") or "auto").lower()
        if self._embed_engine not in EMBED_ENGINES:
            raise SystemExit(f"EMBER_EMBED_ENGINE={self._embed_engine!r}: use one of {', '.join(EMBED_ENGINES)}")

    def _engine_for(self, spec: LoadSpec) -> EngineFactory:
        if spec.role is Role.TRANSCRIBE:  # a CTranslate2 folder
            if self._whisper is None:
                from ember.engines.whisper import WhisperFactory

                self._whisper = WhisperFactory()
            return self._whisper
        if not _is_gguf(spec):
            raise BadRequest(f"{spec.model_path.name} is not a GGUF file; ember's engines load GGUF models")
        if spec.role is Role.EMBED and self._embed_engine != "llama.cpp":
            from ember.engines import onnx_bert

            if onnx_bert.can_run(read_gguf_info(spec.model_path)):
                if self._onnx is None:
                    self._onnx = onnx_bert.OnnxBertFactory()
                return self._onnx
            if self._embed_engine == "onnxruntime":
                raise BadRequest(f"{spec.model_path.name} cannot run on ONNX Runtime (it runs BERT-family encoders "
                                 "with mean or CLS pooling, and needs the onnxruntime package); unset "
                                 "EMBER_EMBED_ENGINE to use llama.cpp")
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
    if model.is_speech:
        return [Capability.TRANSCRIPTION]
    info = model.info
    if f"{info.architecture}.pooling_type" in info.model_info:  # an encoder made for embeddings (BERT and kin)
        return [Capability.EMBEDDING]
    # Tools for every model that generates: its own template's form when it has one, else ember's generic form.
    return [Capability.COMPLETION, Capability.TOOLS]


def show(model: Model) -> dict:
    """What `ember show` and /api/show tell: the stored description and what ember's engines can do with it."""
    return {**describe(model), "capabilities": [str(c) for c in capabilities(model)]}
