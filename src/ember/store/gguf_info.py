"""What a GGUF file says about itself: architecture, context length, size, quantization, chat template.

The header is parsed here rather than with `gguf.GGUFReader`, which builds a numpy view of every array element and
takes about 6 s on the bundled 98 MB model (its 49k-token vocabulary); this reader skips what it does not need and
takes milliseconds. The `gguf` package still names the file and tensor types. The format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md

The same pass refuses a hostile file before llama.cpp ever opens it: counts larger than the bytes that follow, tensors
whose shape, type, offset or size cannot be true, tensors that run past the end of the file or overlap (Ollama's
CVE-2026-7482 read heap memory through such offsets; CVE-2025-0315/0317 were allocation and division-by-zero crashes).
Nothing is allocated in proportion to a declared count before the bytes for it are known to be there.
"""

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType
from gguf.constants import GGML_QUANT_SIZES

from ember.core.errors import BadRequest

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
SHORT_ARRAY = 16  # longer arrays (vocabularies, merges) stay out of model_info
_TOKENS = "tokenizer.ggml.tokens"
_ALIGNMENT_KEY, _DEFAULT_ALIGNMENT = "general.alignment", 32
VERSIONS = (2, 3)

# Far above any real model (a few thousand tensors, a few dozen keys, vocabularies of ~256k), far below harm: string
# and nested arrays are walked item by item, and every tensor costs a Python object.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_ARRAY_ITEMS = 1 << 24
MAX_ARRAY_DEPTH = 3  # llama.cpp reads no nested arrays at all; the format allows them
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME (64) holds the terminating NUL too
_INT64_MAX = (1 << 63) - 1
_U64 = struct.Struct("<Q")
# The fewest bytes an entry can take: an empty key or name, its type fields, a one-byte value or one dimension.
_MIN_KV = 8 + 4 + 1
_MIN_TENSOR = 8 + 4 + 8 + 4 + 8
_MIN_ARRAY_ITEM = {**{kind: struct.calcsize(fmt) for kind, fmt in _SCALARS.items()}, _STRING: 8, _ARRAY: 4 + 8}


def _shown(text: str) -> str:
    """A key or name from the file as an error message quotes it: a hostile one can be megabytes long."""
    return repr(text if len(text) <= 80 else text[:80] + "…")


class _Unusable(ValueError):
    """The header parses, but what it says cannot be true of a model llama.cpp could load."""


@dataclass
class GGUFInfo:
    architecture: str
    name: str
    context_length: int
    embedding_length: int
    block_count: int
    parameter_count: int
    file_type: int | None
    quantization: str
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    is_lora_adapter: bool
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def parameter_size(self) -> str:
        """As Ollama writes it: 134.52M, 1.2B, 8.0B."""
        n = self.parameter_count
        for unit, scale, decimals in (("B", 10**9, 1), ("M", 10**6, 2)):
            if n >= scale:
                return f"{n // scale}{unit}" if n % scale == 0 else f"{n / scale:.{decimals}f}{unit}"
        return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


class _Tensor(NamedTuple):
    name: str
    count: int
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int
    shape: tuple[int, ...] = ()  # ggml's order: the fastest-varying dimension first
    data_start: int = 0  # where the data section begins in the file


class _Header:
    """A cursor over the mapped file; every read is bounds-checked so that a damaged file is an error, not a crash."""

    def __init__(self, data: mmap.mmap):
        self.data, self.pos = data, 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if size > self.left:
            raise ValueError("the file ends inside its header")
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def skip(self, n: int) -> None:
        if n > self.left:
            raise ValueError(f"the file ends inside its header ({n} bytes declared at offset {self.pos}, "
                             f"{self.left} left)")
        self.pos += n

    def raw_string(self) -> bytes:
        n = self.unpack("<Q")
        start = self.pos
        self.skip(n)  # checked before the slice: a declared length never becomes an allocation by itself
        return self.data[start:self.pos]

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        """The hot loop (vocabularies and merges: 100k strings in the bundled model), kept tight."""
        data, pos, end, read_length = self.data, self.pos, len(self.data), _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise ValueError("the file ends inside its header")
            pos += 8 + read_length(data, pos)[0]
            if pos > end:
                raise ValueError("the file ends inside its header (a string runs past the end of the file)")
        self.pos = pos

    def value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind} for {_shown(key)}")
        item, count = self.array_header(key, depth=1)
        if count <= SHORT_ARRAY and item != _ARRAY:
            return [self.value(item, key) for _ in range(count)]
        start = self.pos
        self.skip_array(item, count, key, depth=1)
        return _LongArray(item, count, start)

    def array_header(self, key: str, depth: int) -> tuple[int, int]:
        """An array's item type and count, once the bytes its items need at the least are known to be there."""
        if depth > MAX_ARRAY_DEPTH:
            raise ValueError(f"metadata {_shown(key)} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        item, count = self.unpack("<I"), self.unpack("<Q")
        if item not in _MIN_ARRAY_ITEM:
            raise ValueError(f"unknown array item type {item} for {_shown(key)}")
        if count > MAX_ARRAY_ITEMS:
            raise ValueError(f"metadata {_shown(key)} declares {count} items (ember reads arrays of at most "
                             f"{MAX_ARRAY_ITEMS})")
        least = count * _MIN_ARRAY_ITEM[item]
        if least > self.left:
            raise ValueError(f"the file ends inside its header (metadata {_shown(key)} declares {count} items, which "
                             f"need at least {least} bytes; {self.left} are left)")
        return item, count

    def skip_array(self, item: int, count: int, key: str, depth: int) -> None:
        if item in _SCALARS:
            self.skip(count * _MIN_ARRAY_ITEM[item])
        elif item == _STRING:
            self.skip_strings(count)
        else:
            for _ in range(count):
                self.skip_array(*self.array_header(key, depth + 1), key, depth + 1)

    def strings_at(self, start: int, count: int, wanted: set[int]) -> dict[int, str]:
        """Read only the `wanted` items of a string array that begins at `start`."""
        self.pos, found, index = start, {}, 0
        for wanted_index in sorted(i for i in wanted if 0 <= i < count):
            self.skip_strings(wanted_index - index)
            found[wanted_index] = self.string()
            index = wanted_index + 1
        return found


@dataclass
class _LongArray:
    item: int
    count: int
    start: int


def _read(path: Path) -> tuple[dict[str, Any], list[_Tensor], dict[int, str]]:
    """Metadata, the tensors, and the BOS/EOS token strings by id."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise ValueError("it is too short to hold a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data)


def _parse(data: mmap.mmap) -> tuple[dict[str, Any], list[_Tensor], dict[int, str]]:
    if data[:4] != b"GGUF":
        raise ValueError("it does not start with the GGUF magic bytes")
    h = _Header(data)
    h.skip(4)
    version = h.unpack("<I")
    if version < VERSIONS[0]:
        raise ValueError(f"GGUF version {version} is too old (ember reads versions 2 and 3)")
    if int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
        raise ValueError("it is a big-endian GGUF (ember reads little-endian ones)")
    if version > VERSIONS[-1]:
        raise ValueError(f"GGUF version {version} is newer than ember reads (versions 2 and 3)")
    n_tensors, n_kv = h.unpack("<Q"), h.unpack("<Q")
    if n_tensors > MAX_TENSORS:
        raise ValueError(f"it declares {n_tensors} tensors (ember reads at most {MAX_TENSORS})")
    if n_kv > MAX_KV:
        raise ValueError(f"it declares {n_kv} metadata entries (ember reads at most {MAX_KV})")
    least = n_kv * _MIN_KV + n_tensors * _MIN_TENSOR
    if least > h.left:
        raise ValueError(f"the file ends inside its header ({n_kv} metadata entries and {n_tensors} tensors need at "
                         f"least {least} bytes; {h.left} follow)")

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = h.string()
        if key in meta:
            raise _Unusable(f"metadata key {_shown(key)} appears twice")
        kind = h.unpack("<I")
        meta[key] = h.value(kind, key)
        if key == _ALIGNMENT_KEY and kind != _UINT32:
            raise _Unusable(f"{_ALIGNMENT_KEY} must be a uint32 (llama.cpp aborts on any other type)")
    alignment = meta.get(_ALIGNMENT_KEY, _DEFAULT_ALIGNMENT)
    if alignment <= 0 or alignment & (alignment - 1):
        raise _Unusable(f"{_ALIGNMENT_KEY} is {alignment}, not a power of two")

    tensors = [_tensor_info(h, alignment) for _ in range(n_tensors)]
    data_start = -(-h.pos // alignment) * alignment
    tensors = [t._replace(data_start=data_start) for t in tensors]
    _check_layout(tensors, data_start=data_start, file_size=len(data))

    tokens = meta.get(_TOKENS)
    ids = {meta.get(k) for k in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")}
    ids = {i for i in ids if isinstance(i, int)}
    if isinstance(tokens, list):
        named = {i: tokens[i] for i in ids if 0 <= i < len(tokens)}
    elif isinstance(tokens, _LongArray) and tokens.item == _STRING:
        named = h.strings_at(tokens.start, tokens.count, ids)
    else:
        named = {}
    return meta, tensors, named


def _tensor_info(h: _Header, alignment: int) -> _Tensor:
    """One tensor's descriptor, checked as ggml checks it, and its size in bytes."""
    raw_name = h.raw_string()
    name = raw_name.decode("utf-8", errors="replace")
    if len(raw_name) > MAX_TENSOR_NAME:
        raise _Unusable(f"tensor name {_shown(name)} is {len(raw_name)} bytes long (llama.cpp reads at most "
                        f"{MAX_TENSOR_NAME})")
    if b"\0" in raw_name:  # ggml keeps names as C strings: what follows a NUL would vanish (and could collide)
        raise _Unusable(f"tensor name {name!r} holds a NUL byte")
    n_dims = h.unpack("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise _Unusable(f"tensor {name!r} has {n_dims} dimensions (GGML tensors have 1 to {MAX_DIMS})")
    shape = [h.unpack("<Q") for _ in range(n_dims)]
    if 0 in shape:
        raise _Unusable(f"tensor {name!r} has a zero dimension (shape {shape})")
    count = 1
    for dim in shape:
        count *= dim
    if count > _INT64_MAX:
        raise _Unusable(f"tensor {name!r} has shape {shape}: more elements than a 64-bit count holds")
    code = h.unpack("<I")
    try:
        ggml_type = GGMLQuantizationType(code)
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError):
        raise _Unusable(f"tensor {name!r} has unknown ggml type {code}") from None
    if shape[0] % block_size:
        raise _Unusable(f"tensor {name!r} of type {ggml_type.name} has {shape[0]} elements per row, not a multiple "
                        f"of its block size {block_size}")
    offset = h.unpack("<Q")
    if offset % alignment:
        raise _Unusable(f"tensor {name!r} starts at data offset {offset}, not a multiple of the alignment {alignment}")
    return _Tensor(name, count, code, offset, count // block_size * type_size, tuple(shape))


def _check_layout(tensors: list[_Tensor], data_start: int, file_size: int) -> None:
    """Every tensor within the file, no two sharing a byte or a name."""
    names: set[str] = set()
    for t in tensors:
        if t.name in names:
            raise _Unusable(f"tensor name {t.name!r} appears twice")
        names.add(t.name)
        end = data_start + t.offset + t.nbytes
        if end > file_size:
            raise _Unusable(f"tensor {t.name!r} runs past the end of the file (needs bytes up to {end}, the file has "
                            f"{file_size})")
    in_order = sorted(tensors, key=lambda t: t.offset)
    for before, after in zip(in_order, in_order[1:]):
        if before.offset + before.nbytes > after.offset:
            raise _Unusable(f"tensors {before.name!r} and {after.name!r} overlap (data offsets {before.offset} + "
                            f"{before.nbytes} bytes and {after.offset})")


def _quantization(file_type: int | None, tensors: list[_Tensor]) -> str:
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    by_type: dict[int, int] = {}
    for t in tensors:
        by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.count
    if not by_type:
        return "unknown"
    dominant = max(by_type, key=by_type.__getitem__)
    try:
        return GGMLQuantizationType(dominant).name
    except ValueError:
        return f"type {dominant}"


def _token(meta: dict[str, Any], named: dict[int, str], which: str) -> str | None:
    index = meta.get(f"tokenizer.ggml.{which}_token_id")
    return named.get(index) if isinstance(index, int) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a float field can hold them) as None: JSON has no way to write them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


@lru_cache(maxsize=64)
def _cached(path: str, size: int, mtime: float) -> GGUFInfo:
    try:
        meta, tensors, named = _read(Path(path))
    except _Unusable as e:
        raise BadRequest(f"'{Path(path).name}' is not a usable GGUF file: {e}") from None
    except (ValueError, OSError, struct.error, OverflowError) as e:
        raise BadRequest(f"'{Path(path).name}' is not a GGUF file: {e}") from None
    arch = str(meta.get("general.architecture", "unknown"))
    template = meta.get("tokenizer.chat_template")
    file_type = meta.get("general.file_type")
    return GGUFInfo(
        architecture=arch, name=str(meta.get("general.name", "")),
        context_length=_int(meta.get(f"{arch}.context_length")),
        embedding_length=_int(meta.get(f"{arch}.embedding_length")),
        block_count=_int(meta.get(f"{arch}.block_count")),
        parameter_count=sum(t.count for t in tensors),
        file_type=file_type if isinstance(file_type, int) else None,
        quantization=_quantization(file_type, tensors),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        bos_token=_token(meta, named, "bos"),
        eos_token=_token(meta, named, "eos"),
        is_lora_adapter=meta.get("general.type") == "adapter",
        model_info={k: _json_safe(v) for k, v in meta.items()
                    if not isinstance(v, _LongArray) and k != "tokenizer.chat_template"},
    )


def read_gguf_info(path: Path) -> GGUFInfo:
    """Cached by (path, size, mtime): a file replaced in place is read again."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        raise BadRequest(f"cannot read model file {path}: {e.strerror}") from None
    return _cached(str(path), stat.st_size, stat.st_mtime)


def read_tensors(path: Path) -> dict[str, tuple[GGMLQuantizationType, tuple[int, ...], np.ndarray]]:
    """Each tensor's type, numpy shape (slowest dimension first) and raw bytes (a read-only numpy view of the
    mapped file), from the checked header: for engines that take the weights themselves (ONNX Runtime)."""
    _, tensors, _ = _read(Path(path))
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    return {t.name: (GGMLQuantizationType(t.ggml_type), tuple(reversed(t.shape)),
                     raw[t.data_start + t.offset: t.data_start + t.offset + t.nbytes]) for t in tensors}
