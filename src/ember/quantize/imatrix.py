"""Importance matrix: for each weight matrix, the mean square of every input column over the user's text.

llama.cpp's quantizer spends its precision where the activations are large when it is given these figures (what its
`llama-imatrix` tool computes). They are collected here with llama.cpp itself, as `llama-imatrix` does: an eval
callback sees every matrix multiplication's input while the model reads the text. That needs no PyTorch, works for
every architecture llama.cpp runs (a model trained by `ember train`, Gemma, a quantized source), and the weights are
named exactly as the quantizer will look them up, so no name mapping can go wrong. The quantizer takes the result as
a C array of (name, floats, count) ending in a null name (llama.h's `llama_model_imatrix_data`), which ctypes builds.
"""

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest, EmberError

GGML_MAX_SRC, GGML_MAX_NAME, GGML_MAX_OP_PARAMS, GGML_MAX_DIMS = 10, 64, 64, 4
GGML_TYPE_F32 = 0


class _Tensor(ctypes.Structure):
    """ggml.h's `struct ggml_tensor`, as far as the callback reads it; the layout is checked against ggml's own
    accessors on the first call (see _check_layout), so a changed ggml is an error, never a misread."""


_Tensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS), ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_Tensor) * GGML_MAX_SRC), ("view_src", ctypes.POINTER(_Tensor)),
    ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]


@cache
def _ggml() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    lib.ggml_nelements.restype, lib.ggml_nelements.argtypes = ctypes.c_int64, [ctypes.c_void_p]
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    return lib


@cache
def _mul_mat_op() -> int:
    lib = _ggml()
    for op in range(256):
        if lib.ggml_op_name(op) == b"MUL_MAT":
            return op
    raise EmberError("this llama.cpp build has no MUL_MAT operation; the importance matrix cannot be collected")


def _check_layout(address: int) -> None:
    lib, t = _ggml(), _Tensor.from_address(address)
    if lib.ggml_get_name(address) - address != _Tensor.name.offset or lib.ggml_nelements(address) != int(
            np.prod(t.ne)):
        raise EmberError("this llama.cpp build lays out its tensors differently from what ember reads; the "
                         "importance matrix cannot be collected (quantize without --imatrix-data)")


@dataclass
class ImportanceMatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # weight name -> sum of x² per input column (float64)
    counts: dict[str, int] = field(default_factory=dict)  # rows (tokens) seen by each weight
    tokens: int = 0
    chunks: int = 0

    def add(self, name: str, x: np.ndarray) -> None:
        """x: (rows, columns) activations entering the weight `name`."""
        squares = np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if name in self.sums:
            self.sums[name] += squares
            self.counts[name] += x.shape[0]
        else:
            self.sums[name], self.counts[name] = squares, x.shape[0]

    def means(self) -> dict[str, np.ndarray]:
        return {n: (s / max(self.counts[n], 1)).astype(np.float32) for n, s in self.sums.items()}

    def as_param(self) -> "ImatrixParam":
        return ImatrixParam(self.means())


class ImatrixParam:
    """The quantizer's `params.imatrix`: keeps the arrays alive as long as the pointer is in use."""

    def __init__(self, means: dict[str, np.ndarray]):
        import llama_cpp

        self._arrays = [np.ascontiguousarray(v, dtype=np.float32) for v in means.values()]
        self._names = [n.encode() for n in means]
        entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
        for entry, name, values in zip(entries, self._names, self._arrays):
            entry.name = name
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        entries[len(means)].name = None  # the terminator
        self.entries = entries

    @property
    def pointer(self):
        import llama_cpp

        return ctypes.cast(self.entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))


def compute_imatrix(model_path: Path, text: str, *, ctx: int = 512, threads: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ImportanceMatrix:
    """Read `text` in chunks of `ctx` tokens (each from an empty cache, as llama-imatrix does) and collect every
    `blk.*` weight's input. `progress(chunk, chunks)` after each chunk; it may raise to stop."""
    import llama_cpp
    from llama_cpp import _internals as internals

    import ember.engines.llamacpp  # noqa: F401  (routes llama.cpp's load chatter into ember's log)
    from ember.engines.llamacpp import default_threads

    found = ImportanceMatrix()
    mul_mat = _mul_mat_op()
    checked = []
    error: list[BaseException] = []

    def watch(address: int, ask: bool, _user) -> bool:
        try:
            if not checked:
                _check_layout(address)
                checked.append(True)
            t = _Tensor.from_address(address)
            if t.op != mul_mat or not t.src[0] or not t.src[1]:
                return False
            weight = t.src[0].contents.name
            # Attention's own products (K·Q, V) multiply activations, not weights; the tied output matrix is left
            # at llama.cpp's default as llama-imatrix leaves it.
            if not (weight.startswith(b"blk.") and weight.endswith(b".weight")):
                return False
            if ask:
                return True
            x = t.src[1].contents
            if x.type != GGML_TYPE_F32 or x.nb[0] != 4 or x.nb[1] != 4 * x.ne[0] or not x.data:
                return True  # not a plain f32 matrix on the CPU: skipped, as it is not what the quantizer weighs
            rows = x.ne[1] * x.ne[2] * x.ne[3]
            values = np.ctypeslib.as_array(ctypes.cast(x.data, ctypes.POINTER(ctypes.c_float)), shape=(rows, x.ne[0]))
            found.add(weight.decode(), values)
            return True
        except BaseException as e:  # an exception cannot cross into C: kept, and the computation is cut short
            error.append(e)
            return False

    callback = llama_cpp.ggml_backend_sched_eval_callback(watch)
    mparams = llama_cpp.llama_model_default_params()
    model = internals.LlamaModel(path_model=str(model_path), params=mparams, verbose=False)
    try:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = ctx
        cparams.n_threads = cparams.n_threads_batch = threads or default_threads()
        cparams.no_perf = True
        cparams.cb_eval = callback
        context = internals.LlamaContext(model=model, params=cparams, verbose=False)
        try:
            tokens = model.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            chunks = len(tokens) // ctx
            if chunks == 0:
                raise BadRequest(f"the importance-matrix text is {len(tokens)} tokens, less than one chunk of {ctx}: "
                                 "give more text (a few thousand tokens of what the model will read is typical)")
            memory = llama_cpp.llama_get_memory(context.ctx)
            for i in range(chunks):
                llama_cpp.llama_memory_clear(memory, True)
                chunk = (llama_cpp.llama_token * ctx)(*tokens[i * ctx:(i + 1) * ctx])
                if model.add_bos_token():  # each chunk starts as a text would, as in perplexity
                    chunk[0] = model.token_bos()
                rc = llama_cpp.llama_decode(context.ctx, llama_cpp.llama_batch_get_one(chunk, ctx))
                if error:
                    raise error[0]
                if rc != 0:
                    raise EmberError(f"llama.cpp could not read chunk {i + 1} of the importance-matrix text ({rc})")
                found.chunks, found.tokens = i + 1, (i + 1) * ctx
                if progress:
                    progress(i + 1, chunks)
        finally:
            context.close()
    finally:
        model.close()
    if not found.sums:
        raise EmberError(f"no weight inputs were seen while reading the text with {model_path.name}; the importance "
                         "matrix is empty (quantize without --imatrix-data)")
    return found
