"""Embedding encoders on ONNX Runtime: the same vectors as sentence-transformers and as llama.cpp, chosen by default
for f32/f16 encoders.

sentence-transformers (torch, in-process) is the reference users compare against; llama.cpp is ember's other engine
for the same GGUF.
"""

import os
import threading

import numpy as np
import pytest

from ember.core.errors import BadRequest
from ember.core.types import EmbedRequest
from ember.engines.base import LoadSpec, Role
from ember.engines.llamacpp import LlamaCppEmbedder
from ember.engines.onnx_bert import OnnxBertEmbedder
from ember.engines.registry import Engines
from ember.runtime.embedding import _embed
from ember.store import bundled
from ember.store.gguf_info import read_gguf_info
from ember.store.names import parse_name
from ember.store.store import ModelStore

TEXTS = ["The museum reopens on Monday after the repairs.", "Музей снова откроется в понедельник после ремонта.",
         "a", "Tokens, punctuation; and   odd   spacing!", "Погода в Москве: +3 °C, дождь."]
LONG = " ".join(["The regional train service announced a new timetable for the winter months."] * 40)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def gguf(home, name: str):
    return ModelStore(home / "models").get(name).model_path


@pytest.fixture(scope="module")
def minilm(ember_home):
    spec = LoadSpec(gguf(ember_home, "minilm"), role=Role.EMBED, num_ctx=256)
    engine = OnnxBertEmbedder(spec, read_gguf_info(spec.model_path))
    yield engine
    engine.close()


def embed(engine, texts: list[str]) -> np.ndarray:
    request = EmbedRequest(model="m", inputs=texts, truncate=True)
    vectors, _ = _embed(engine, request, threading.Event())
    return np.asarray(vectors)


def test_minilm_on_onnxruntime_gives_sentence_transformers_vectors(minilm):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    folder = bundled.locate(bundled.find(parse_name("minilm"))).parent
    reference = SentenceTransformer(str(folder), device="cpu")  # max_seq_length 256, as the spec's window
    texts = [*TEXTS, LONG]  # the long one is cut at 256 tokens, its [SEP] kept (as sentence-transformers does)
    expected = reference.encode(texts, normalize_embeddings=True)
    got = embed(minilm, texts)
    cosine = (unit(got) * unit(expected)).sum(1)
    assert cosine.min() > 0.9999, cosine


@pytest.mark.parametrize("model", ["minilm", "multilingual-e5"])  # e5 only when built by hand: it stays on llama.cpp
def test_onnxruntime_and_llama_cpp_agree(ember_home, model):
    spec = LoadSpec(gguf(ember_home, model), role=Role.EMBED, num_ctx=512)
    ort_engine = OnnxBertEmbedder(spec, read_gguf_info(spec.model_path))
    llama = LlamaCppEmbedder(spec)
    try:
        texts = [*TEXTS, LONG]
        assert [ort_engine.tokenize(t, special=False) for t in texts] == [llama.tokenize(t, special=False)
                                                                         for t in texts]
        # Several at once and one at a time: padding inside a group must not change a vector.
        together = embed(ort_engine, texts)
        alone = np.array([embed(ort_engine, [t])[0] for t in texts])
        assert np.abs(together - alone).max() < 1e-4
        cosine = (unit(together) * unit(embed(llama, texts))).sum(1)
        # MiniLM is f32 in both; E5's Q4_0 matrices are dequantized for ONNX Runtime, while llama.cpp multiplies
        # them with 8-bit activations.
        assert cosine.min() > (0.99999 if model == "minilm" else 0.9995), cosine
        status = ort_engine.status()
        assert status.runner == "onnxruntime" and status.context == 512 and status.weights_bytes > 0
    finally:
        ort_engine.close()
        llama.close()


def test_an_input_longer_than_the_window_is_refused_by_the_engine(minilm):
    with pytest.raises(BadRequest, match="longer than the model's window"):
        minilm.embed([[101] * 300])


def test_engine_choice(ember_home, monkeypatch):
    encoder = LoadSpec(gguf(ember_home, "minilm"), role=Role.EMBED, num_ctx=256)
    chat = LoadSpec(gguf(ember_home, "smollm2"), role=Role.EMBED, num_ctx=256)
    monkeypatch.delenv("EMBER_EMBED_ENGINE", raising=False)
    engines = Engines()
    assert type(engines._engine_for(encoder)).__name__ == "OnnxBertFactory"
    assert type(engines._engine_for(chat)).__name__ == "LlamaCppFactory"  # a chat model's hidden states
    assert type(engines._engine_for(LoadSpec(encoder.model_path))).__name__ == "LlamaCppFactory"  # role generate
    # A quantized encoder stays on llama.cpp, quantized.
    e5 = LoadSpec(gguf(ember_home, "multilingual-e5"), role=Role.EMBED)
    assert type(engines._engine_for(e5)).__name__ == "LlamaCppFactory"
    assert type(Engines("llama.cpp")._engine_for(encoder)).__name__ == "LlamaCppFactory"
    with pytest.raises(BadRequest, match="cannot run on ONNX Runtime"):
        Engines("onnxruntime")._engine_for(chat)
    monkeypatch.setenv("EMBER_EMBED_ENGINE", "tensorflow")
    with pytest.raises(SystemExit, match="EMBER_EMBED_ENGINE='tensorflow'"):
        Engines()


def test_a_cross_encoder_is_refused_by_llama_cpp_rather_than_misread(tmp_path):
    from ember.train.convert import bert_to_gguf
    from tests.engines.cross_encoder import make_cross_encoder

    gguf_path = bert_to_gguf(make_cross_encoder(tmp_path / "hf"), tmp_path / "ce.gguf", name="tiny reranker")
    spec = LoadSpec(gguf_path, role=Role.EMBED, num_ctx=128)
    with pytest.raises(BadRequest, match="is a cross-encoder: ember runs those on ONNX Runtime"):
        Engines("llama.cpp").load(spec)
    ranker = Engines().load(spec)
    try:
        assert ranker.ranks and ranker.status().runner == "onnxruntime"
    finally:
        ranker.close()
