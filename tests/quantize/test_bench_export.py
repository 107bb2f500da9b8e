"""`ember bench quant`'s rows outside llama.cpp (ONNX Runtime, OpenVINO) on a tiny random Llama stored as F32.

The FP32 ONNX export must compute what llama.cpp computes on the same ids, its KV cache must give what a full pass
gives whatever the lengths (the shapes are dynamic, not the ones traced), the quantized rows must come out measured,
and a model that cannot be exported must leave one line saying why while the llama.cpp rows are still measured.
"""

import importlib.util
import math

import llama_cpp
import numpy as np
import pytest

from ember.bench import export
from ember.bench.quant import QuantBenchConfig, run
from ember.config import Settings
from ember.store.store import ModelStore
from ember.train.convert_llama import publish
from tests.quantize.test_convert import make_model
from tests.tune import test_tune

home, tiny = test_tune.home, test_tune.tiny  # the tiny Llama `ember tune` is tested on, stored in a temp home

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("openvino", "nncf")),
                                reason="needs the bench extra (OpenVINO, NNCF)")


def _model(name: str):
    return ModelStore(Settings.from_env().models).get(name)


def test_export_computes_what_llama_cpp_computes_with_a_dynamic_cache(tiny, tmp_path):
    model = _model(tiny)
    path = export.export_onnx(export.load_torch(model), tmp_path / "fp32")
    graph = export.Graph(path, "onnx", 1)
    vocab = llama_cpp.Llama(str(model.model_path), vocab_only=True, verbose=False)
    ids = [vocab.token_bos()] + np.random.default_rng(0).integers(3, vocab.n_vocab(), 60).tolist()
    vocab.close()
    # llama.cpp in F32 with an F32 cache: what differs is only the order of float32 sums. Measured: 2.6e-6 at most
    # on logits of a few units; 1e-3 leaves room for other CPUs' kernels and still catches any wrong weight or
    # rotary order (those differ by tenths to whole units).
    reference = test_tune._llama_logits(model.model_path, ids)
    full = graph.logits(ids)
    assert np.abs(full - reference).max() < 1e-3
    # Lengths unlike the traced ones (3 new after 5 cached): from an empty cache, one token at a time, and blocks.
    graph.reset()
    steps = [graph.eval(ids[a:b]) for a, b in ((0, 1), (1, 2), (2, 9), (9, 10), (10, 33), (33, 34), (34, 61))]
    assert np.abs(np.concatenate(steps) - full).max() < 1e-4
    short = graph.logits(ids[:7])  # a shorter sequence from scratch: a mask not baked at the traced length
    assert np.abs(short - full[:7]).max() < 1e-4
    # OpenVINO reads the same graph: its cache too gives its own full pass (INT8 weights: 0.1 from llama.cpp here).
    # Two threads: OpenVINO's CPU plugin once failed there when one request went from a long cache back to none.
    ov = export.Graph(export.convert_openvino(path, tmp_path / "ov", 8), "openvino", 2)
    ov_full = ov.logits(ids)
    ov.reset()
    ov_steps = np.concatenate([ov.eval(ids[a:b]) for a, b in [(0, 1), (1, 12)] + [(i, i + 1) for i in range(12, 61)]])
    assert np.abs(ov_steps - ov_full).max() < 1e-4 and np.abs(ov_full - reference).max() < 0.5
    assert np.abs(ov.logits(ids) - ov_full).max() < 1e-4


def test_bench_measures_onnx_runtime_and_openvino_rows(tiny, tmp_path):
    result = run(QuantBenchConfig(model=tiny, types=[], out=tmp_path / "out", ctx=128, chunks=1, rounds=1))
    rows = {r["type"]: r for r in result["rows"]}
    assert list(rows) == ["F32", export.ONNX_FP32, export.ONNX_INT8, export.OV_INT8, export.OV_INT4]
    assert result["not_measured"] == []
    for name in (export.ONNX_FP32, export.ONNX_INT8, export.OV_INT8, export.OV_INT4):
        r = rows[name]
        assert math.isfinite(r["ppl"]) and r["ppl"] > 1 and math.isfinite(r["kld"]) and r["kld"] >= 0, r
        assert r["size"] > 0 and r["peak_rss"] > 0 and r["gen_tps"] > 0 and r["prompt_tps"] > 0, r
    # The export itself is all but free against an F32 GGUF; the 8-bit rows cost more than it, INT4 more still.
    assert result["export"]["pytorch_fp32_vs_reference"]["kld"] < 1e-6
    assert rows[export.ONNX_FP32]["kld"] < 1e-6
    assert rows[export.OV_INT8]["kld"] < rows[export.OV_INT4]["kld"]
    assert rows[export.OV_INT4]["size"] < rows[export.OV_INT8]["size"] < rows[export.ONNX_FP32]["size"]
    assert (tmp_path / "out" / "quant-tiny-latest.png").stat().st_size > 0


def test_a_model_that_cannot_be_exported_says_why(home, tmp_path, capsys):
    """A Qwen2 is stored as a Llama with q/k/v biases, which transformers' GGUF loader drops: the bench measures
    llama.cpp's rows and says why the others are not."""
    publish(make_model(tmp_path / "hf", tokenizer="qwen2", arch="qwen2", seed=2), "qwen", "f32")
    from rich.console import Console

    console = Console(stderr=True, width=200)
    result = run(QuantBenchConfig(model="qwen", types=[], out=tmp_path / "out", ctx=128, chunks=1, rounds=1),
                 console)
    assert [r["type"] for r in result["rows"]] == ["F32"] and result["rows"][0]["gen_tps"] > 0
    assert [line.split(":")[0] for line in result["not_measured"]] == ["ONNX Runtime not measured",
                                                                       "OpenVINO not measured"]
    assert "q/k/v biases" in result["not_measured"][0]
    assert result["not_measured"][0] in capsys.readouterr().err
