"""The quant bench's rows outside llama.cpp: ONNX Runtime and OpenVINO, through their own Python packages.

The stored GGUF is read into PyTorch as `ember tune` reads it (transformers dequantizes every weight to float32),
exported once to an FP32 ONNX graph whose KV cache is an input and an output (past.N.key/value in,
present.N.key/value out, every length dynamic), and from that graph come the quantized models: ONNX Runtime's dynamic
quantization (INT8 weights) and OpenVINO's conversion with NNCF weight compression (INT8, INT4). Every runtime then
reads the same inputs, so one class drives all of them, one token a step with the cache as llama.cpp generates.
"""

import contextlib
import importlib.util
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.store.store import Model

RUNTIMES = ("gguf", "onnx", "openvino")
ONNX_FP32, ONNX_INT8, OV_INT8, OV_INT4 = "ONNX FP32", "ONNX INT8", "OpenVINO INT8", "OpenVINO INT4"
INT4_GROUP = 64  # INT4 scales per 64 weights: 128 does not divide SmolLM2's width (576), 64 does (and Gemma 3's 640)
OPSET = 17


def why_not(model: Model, runtime: str) -> str | None:
    """Why `runtime` ("onnx" or "openvino") cannot measure this model here, or None when it can."""
    from ember.tune.base import ARCHITECTURES

    need = ["torch", "transformers", "onnx", "onnxruntime"] + (["openvino", "nncf"] if runtime == "openvino" else [])
    missing = [p for p in need if importlib.util.find_spec(p) is None]
    if missing:
        extra = "bench" if set(missing) <= {"openvino", "nncf"} else "train,tune,bench"  # torch is train's
        return f"{', '.join(missing)} not installed (pip install -e '.[{extra}]')"
    arch = model.info.architecture
    if arch not in ARCHITECTURES:
        return (f"{model.name} is a {arch!r} model, and ember reads only {', '.join(ARCHITECTURES)} GGUFs into "
                "PyTorch to export them (an embedding model such as BERT has no next-token logits to score anyway)")
    import gguf

    if any(t.name.endswith(("attn_q.bias", "attn_k.bias", "attn_v.bias"))
           for t in gguf.GGUFReader(str(model.model_path)).tensors):
        return (f"{model.name}'s attention has q/k/v biases (a Qwen2 stored as a Llama), which transformers' GGUF "
                "loader leaves out: the export would not be this model")
    return None


def describe() -> dict:
    """How the rows outside llama.cpp were made, for the bench's JSON."""
    from importlib.metadata import version

    return {"exporter": f"torch.onnx.export (TorchScript), opset {OPSET}, FP32, eager attention, KV cache as inputs",
            ONNX_INT8: "onnxruntime.quantization.quantize_dynamic: QInt8 weights per channel, reduce_range; "
                       "activations quantized per tensor at run time",
            OV_INT8: "openvino.convert_model of the FP32 ONNX, nncf.compress_weights INT8_ASYM per channel",
            OV_INT4: f"nncf.compress_weights INT4_SYM, group size {INT4_GROUP}; embeddings and output layer "
                     "INT8_ASYM (NNCF's default)",
            "versions": {p: version(p) for p in ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf")
                         if importlib.util.find_spec(p)}}


def folder_size(folder: Path) -> int:
    """What the runtime reads: the graph and its weights (ONNX file and external data; OpenVINO .xml and .bin)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def load_torch(model: Model):
    """The stored GGUF in PyTorch, float32, with eager attention: its causal mask is built from the traced
    attention_mask rather than chosen by a shape test that tracing would bake into the graph."""
    from ember.tune.base import Base
    from ember.tune.base import load_torch as load

    torch_model = load(Base(model))
    torch_model.set_attn_implementation("eager")
    torch_model.eval()
    return torch_model


def _with_cache(model):
    """forward(input_ids, attention_mask, position_ids, *past) → (logits, *present): the cache as flat tensors, which
    is what an exported graph can take and give (transformers' cache object is not a tensor). Built here, not at
    import: the spawned speed processes import this module without torch."""
    import torch
    from transformers import DynamicCache

    class WithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=model.config)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return WithCache()


def cache_shape(config) -> tuple[int, int, int]:
    """Layers, key/value heads and head size of a transformers config."""
    text = config.get_text_config(decoder=True)
    heads = text.num_key_value_heads or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers, heads, head_dim


def export_onnx(torch_model, folder: Path) -> Path:
    """folder/model.onnx (and model.onnx.data beyond 2 GB): FP32, the cache in and out, every length dynamic."""
    import warnings

    import torch

    layers, heads, head_dim = cache_shape(torch_model.config)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    # Traced with 3 new tokens after 5 cached ones: neither length is 1, so no size-1 shortcut is taken and kept.
    seq, past_len = 3, 5
    args = (torch.tensor([[1, 2, 3]], dtype=torch.int64), torch.ones(1, past_len + seq, dtype=torch.int64),
            torch.arange(past_len, past_len + seq, dtype=torch.int64)[None],
            *[torch.zeros(1, heads, past_len, head_dim) for _ in range(2 * layers)])
    past_names = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    axes = {"input_ids": {1: "seq"}, "attention_mask": {1: "total"}, "position_ids": {1: "seq"},
            "logits": {1: "seq"}, **{n: {2: "past"} for n in past_names}, **{n: {2: "total"} for n in present_names}}
    # The TorchScript exporter: the dynamo one needs onnxscript, which ember does not otherwise install.
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(_with_cache(torch_model), args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes)
    return path


def quantize_onnx(source: Path, folder: Path) -> Path:
    """ONNX Runtime's dynamic quantization: INT8 weights per output channel, activations quantized to 8 bits per
    tensor at each call (what costs most here: an LLM's activations have outliers that one scale flattens)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    # reduce_range (7-bit weights), as ONNX Runtime advises for CPUs without VNNI: on this AVX2 machine per-channel
    # INT8 without it saturated (smollm2 KLD 13.8 on one chunk), with it 0.50; per tensor 0.64.
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its advice to pre-process (shape inference) on every call
    try:
        quantize_dynamic(source, path, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         use_external_data_format=folder_size(source.parent) > 2e9)
    finally:
        root.setLevel(level)
    return path


def convert_openvino(source: Path, folder: Path, bits: int) -> Path:
    """The FP32 ONNX graph in OpenVINO, its weights compressed by NNCF without data: INT8_ASYM (per output channel),
    or INT4_SYM in groups of INT4_GROUP with NNCF's default of INT8_ASYM for the embeddings and the output layer."""
    import nncf
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(source))
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's table and progress bar would land in the bench's table
        if bits == 8:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        else:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=INT4_GROUP)
    path = folder / "model.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)  # only what NNCF compressed is smaller than FP32
    return path


class Graph:
    """An exported model in ONNX Runtime or OpenVINO with its cache: eval(ids) reads ids after what it has read and
    returns their logits, as llama.cpp's Llama.eval does."""

    def __init__(self, path: Path, runtime: str, threads: int):
        self.runtime = runtime
        if runtime == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.names = [i.name for i in session.get_inputs()]
            shape = next(i.shape for i in session.get_inputs() if i.name.startswith("past."))
            self.heads, self.head_dim = shape[1], shape[3]
            self._run = lambda feed: session.run(None, feed)
        else:
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                  "PERFORMANCE_HINT": "LATENCY"})
            self._compiled = compiled
            self.names = [i.get_any_name() for i in compiled.inputs]
            shape = next(i.get_partial_shape() for i in compiled.inputs if i.get_any_name().startswith("past."))
            self.heads, self.head_dim = shape[1].get_length(), shape[3].get_length()
            outputs = compiled.outputs

            def run(feed):
                result = self._request.infer(feed)
                return [result[o] for o in outputs]

            self._run = run
        self.reset()

    def reset(self) -> None:
        if self.runtime == "openvino":
            # A new request for each sequence: with 2 threads, OpenVINO 2026.4's CPU plugin reusing one request
            # from a long cache back to an empty one failed its shape check in the attention's Expand (GQA) node;
            # a fresh request (cheap, and outside every timed span) does not.
            self._request = self._compiled.create_infer_request()
        empty = np.zeros((1, self.heads, 0, self.head_dim), np.float32)
        self.past = [empty] * sum(n.startswith("past.") for n in self.names)
        self.n_tokens = 0

    def eval(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        feed = {"input_ids": np.asarray([ids], np.int64),
                "attention_mask": np.ones((1, self.n_tokens + n), np.int64),
                "position_ids": np.arange(self.n_tokens, self.n_tokens + n, dtype=np.int64)[None],
                **{name: value for name, value in zip(self.names[3:], self.past)}}
        logits, *self.past = self._run(feed)
        self.n_tokens += n
        return logits[0]

    def logits(self, ids: list[int]) -> np.ndarray:
        """The logits of every position of ids, read from an empty cache (what the quality measures score)."""
        self.reset()
        return self.eval(ids)


def torch_logits(torch_model):
    """ids → logits of a PyTorch model, one full pass."""
    import torch

    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return torch_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()

    return run


def speed(path: str, runtime: str, prompt: list[int], threads: int, gen_tokens: int, min_seconds: float) -> dict:
    """In a fresh process, as the quant bench measures llama.cpp: load, read the prompt, generate one token a step
    with the cache; the process's peak resident memory."""
    started = time.perf_counter()
    graph = Graph(Path(path), runtime, threads)
    load = time.perf_counter() - started
    read = generated = 0
    prompt_s = gen_s = 0.0
    # Prompt and generation each repeated until they last min_seconds, apart: on a tiny model the prompt takes
    # milliseconds, and OpenVINO's steps slow down over hundreds of rounds of new shapes.
    while prompt_s < min_seconds:
        graph.reset()
        started = time.perf_counter()
        graph.eval(prompt)
        prompt_s, read = prompt_s + time.perf_counter() - started, read + len(prompt)
    while gen_s < min_seconds:
        graph.reset()
        graph.eval(prompt)
        started = time.perf_counter()
        for i in range(gen_tokens):  # as llama.cpp's rows: which token does not change the cost
            graph.eval([prompt[i % len(prompt)]])
        gen_s, generated = gen_s + time.perf_counter() - started, generated + gen_tokens
    return {"load_s": load, "prompt_tps": read / prompt_s, "gen_tps": generated / gen_s, "peak_rss": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident memory. On Linux VmHWM, not ru_maxrss: a spawned child's ru_maxrss starts at
    the resident size of the parent it was forked from (kept across exec), which a bench holding a model exceeds."""
    import resource

    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Exported:
    """One model made here: its row's name, the file a runtime loads, and that runtime."""

    name: str
    path: Path
    runtime: str  # "onnx" or "openvino"

    @property
    def size(self) -> int:
        return folder_size(self.path.parent)
