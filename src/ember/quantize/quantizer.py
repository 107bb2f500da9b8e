"""One GGUF to another type with llama.cpp's own quantizer (what `llama-quantize` runs), atomically.

Used by `ember quantize`, /api/create with `quantize`, `ember create --quantize` and `ember train --format`.
"""

import ctypes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ember.core.errors import BadRequest, EmberError
from ember.fsutil import open_temp
from ember.quantize.imatrix import ImportanceMatrix
from ember.quantize.types import FLOAT_TYPES, QuantType, known_types, parse_type
from ember.store.gguf_info import read_gguf_info


def source_type(path: Path) -> str:
    """The file's type as llama.cpp names it (F16, Q4_1, …)."""
    return read_gguf_info(path).quantization.upper()


def check(src: Path, target: QuantType, *, allow_requantize: bool, imatrix: bool, what: str = "the model") -> str:
    """Refuse what llama.cpp would refuse or what would quietly make a worse model; returns the source's type."""
    info = read_gguf_info(src)
    if info.is_lora_adapter:
        raise BadRequest(f"{what} is a LoRA adapter, not a model: quantize the base model (the adapter stays as it "
                         "is and is applied on top)")
    have = info.quantization.upper()
    if have not in FLOAT_TYPES and not allow_requantize:
        if target.is_float:
            raise BadRequest(f"{what} is already quantized ({have}); converting it to {target.name} makes a larger "
                             f"file of the same quality (what {have} lost is not restored). If you want that anyway "
                             "(e.g. as a reference for other tools), add --allow-requantize (over the API: "
                             "\"allow_requantize\": true)")
        raise BadRequest(f"{what} is already quantized ({have}); quantizing it again to {target.name} adds the new "
                         f"type's error on top of {have}'s, so the result is worse than {target.name} made from the "
                         "original weights. Quantize from an F16/F32 (or BF16) GGUF if you have one; to go on "
                         "anyway, add --allow-requantize (over the API: \"allow_requantize\": true)")
    if target.needs_imatrix and not imatrix:
        raise BadRequest(f"{target.name} has so few bits that llama.cpp makes it only with an importance matrix: "
                         "give `ember quantize` --imatrix-data FILE (a few thousand tokens of text like what the model "
                         "will read; the API has no field for it), or pick a type that needs none, such as "
                         "Q3_K_M, IQ3_S or Q4_K_M")
    return have


@contextmanager
def quantized(src: Path, folder: Path, kind: QuantType | str, *, imatrix: ImportanceMatrix | None = None,
              allow_requantize: bool = False, threads: int | None = None) -> Iterator[Path]:
    """`src` as `kind` in a locked `.tmp-*` file in `folder`, for the block's duration: whatever happens (an error,
    a cancel, Ctrl-C) the file is gone afterwards unless the block moved it, and while it exists another process's
    cleanup (`remove_partials`) leaves it alone."""
    import llama_cpp

    import ember.engines.llamacpp  # noqa: F401  (routes llama.cpp's per-tensor chatter into ember's log)

    target = parse_type(kind) if isinstance(kind, str) else kind
    check(src, target, allow_requantize=allow_requantize, imatrix=imatrix is not None, what=src.name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = target.ftype
    params.nthread = threads or len(os.sched_getaffinity(0))
    params.allow_requantize = allow_requantize
    held = imatrix.as_param() if imatrix is not None else None
    if held is not None:
        params.imatrix = held.pointer
    lock, tmp = open_temp(folder)
    errors = _Errors()
    logging.getLogger("ember.engine.llama").addHandler(errors)
    try:
        with lock:
            # llama.cpp writes the file by its name; the lock stays on the same inode.
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            logging.getLogger("ember.engine.llama").removeHandler(errors)
            if rc != 0:
                why = f": {errors.last}" if errors.last else ""
                raise EmberError(f"llama.cpp could not quantize {src.name} to {target.name}{why}; try another type, "
                                 "e.g. Q8_0 or Q4_K_M")
            os.fsync(lock.fileno())
            yield tmp
    finally:
        logging.getLogger("ember.engine.llama").removeHandler(errors)
        tmp.unlink(missing_ok=True)


class _Errors(logging.Handler):
    """llama.cpp's last error line while it quantizes, to say why it failed."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().strip()


def quantize_file(src: Path, dst: Path, kind: QuantType | str, *, imatrix: ImportanceMatrix | None = None,
                  allow_requantize: bool = False, threads: int | None = None) -> Path:
    """`src` as `kind` at `dst`, which appears only once complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with quantized(src, dst.parent, kind, imatrix=imatrix, allow_requantize=allow_requantize,
                   threads=threads) as tmp:
        os.replace(tmp, dst)
    return dst


__all__ = ["check", "known_types", "parse_type", "quantize_file", "quantized", "source_type"]
