"""What a GGUF file says about itself: architecture, context length, size, quantization, chat template.

The header is parsed here rather than with `gguf.GGUFReader`, which builds a numpy view of every array element and
takes about 6 s on the bundled 98 MB model (its 49k-token vocabulary); this reader skips what it does not need and
takes milliseconds. The `gguf` package still names the file and tensor types. The format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

import mmap
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType, LlamaFileType

from ember.core.errors import BadRequest

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
SHORT_ARRAY = 16  # longer arrays (vocabularies, merges) stay out of model_info
_TOKENS = "tokenizer.ggml.tokens"


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


class _Header:
    """A cursor over the mapped file; every read is bounds-checked so that a damaged file is an error, not a crash."""

    def __init__(self, data: mmap.mmap):
        self.data, self.pos = data, 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError("the file ends inside its header")
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise ValueError("the file ends inside its header")
        self.pos += n

    def string(self) -> str:
        n = self.unpack("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.data[start:self.pos]).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self.unpack("<Q"))

    def value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind} for {key}")
        item, count = self.unpack("<I"), self.unpack("<Q")
        if count <= SHORT_ARRAY and item != _ARRAY:
            return [self.value(item, key) for _ in range(count)]
        start = self.pos
        self.skip_array(item, count)
        return _LongArray(item, count, start)

    def skip_array(self, item: int, count: int) -> None:
        if item in _SCALARS:
            self.skip(count * struct.calcsize(_SCALARS[item]))
        elif item == _STRING:
            for _ in range(count):
                self.skip_string()
        elif item == _ARRAY:
            for _ in range(count):
                self.skip_array(self.unpack("<I"), self.unpack("<Q"))
        else:
            raise ValueError(f"unknown array item type {item}")

    def strings_at(self, start: int, count: int, wanted: set[int]) -> dict[int, str]:
        """Read only the `wanted` items of a string array that begins at `start`."""
        self.pos, found = start, {}
        for index in range(count):
            if index in wanted:
                found[index] = self.string()
                if len(found) == len(wanted):
                    break
            else:
                self.skip_string()
        return found


@dataclass
class _LongArray:
    item: int
    count: int
    start: int


def _read(path: Path) -> tuple[dict[str, Any], list[tuple[int, int]], dict[int, str]]:
    """Metadata, (element count, ggml type) per tensor, and the BOS/EOS token strings by id."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise ValueError("it is too short to hold a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data)


def _parse(data: mmap.mmap) -> tuple[dict[str, Any], list[tuple[int, int]], dict[int, str]]:
    if data[:4] != b"GGUF":
        raise ValueError("it does not start with the GGUF magic bytes")
    h = _Header(data)
    h.skip(4)
    version = h.unpack("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old (ember reads version 2 and later)")
    n_tensors, n_kv = h.unpack("<Q"), h.unpack("<Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = h.string()
        meta[key] = h.value(h.unpack("<I"), key)
    tensors = []
    for _ in range(n_tensors):
        h.skip_string()
        count = 1
        for _ in range(h.unpack("<I")):
            count *= h.unpack("<Q")
        ggml_type = h.unpack("<I")
        h.unpack("<Q")  # offset
        tensors.append((count, ggml_type))
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


def _quantization(file_type: int | None, tensors: list[tuple[int, int]]) -> str:
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    by_type: dict[int, int] = {}
    for count, ggml_type in tensors:
        by_type[ggml_type] = by_type.get(ggml_type, 0) + count
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


@lru_cache(maxsize=64)
def _cached(path: str, size: int, mtime: float) -> GGUFInfo:
    try:
        meta, tensors, named = _read(Path(path))
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
        parameter_count=sum(count for count, _ in tensors),
        file_type=file_type if isinstance(file_type, int) else None,
        quantization=_quantization(file_type, tensors),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        bos_token=_token(meta, named, "bos"),
        eos_token=_token(meta, named, "eos"),
        is_lora_adapter=meta.get("general.type") == "adapter",
        model_info={k: v for k, v in meta.items()
                    if not isinstance(v, _LongArray) and k != "tokenizer.chat_template"},
    )


def read_gguf_info(path: Path) -> GGUFInfo:
    """Cached by (path, size, mtime): a file replaced in place is read again."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        raise BadRequest(f"cannot read model file {path}: {e.strerror}") from None
    return _cached(str(path), stat.st_size, stat.st_mtime)
