"""Hostile GGUF files are refused at import with a 400, before llama.cpp could open them, and nothing is kept.

The headers are built byte by byte (the format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), so that
each one lies in exactly one way; then the reader is fuzzed from random bytes and from mutations of a real small file.
"""

import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.core.errors import BadRequest
from ember.store import gguf_info
from ember.store.gguf_info import GGUFInfo, read_gguf_info
from ember.store.modelfile import CreateSpec
from tests.helpers import smollm2_gguf, write_gguf

UINT8, UINT32, STRING, ARRAY, UINT64 = 0, 4, 8, 9, 10
F32, F16, Q4_0 = 0, 1, 2
HUGE = 2**64 - 1


def text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, kind: int, payload: bytes) -> bytes:
    return text(key) + struct.pack("<I", kind) + payload


def u32(key: str, value: int) -> bytes:
    return kv(key, UINT32, struct.pack("<I", value))


def array(item: int, count: int, items: bytes = b"") -> bytes:
    return struct.pack("<IQ", item, count) + items


def tensor(name: str | bytes, shape: tuple[int, ...], ggml_type: int = F32, offset: int = 0) -> bytes:
    return text(name) + struct.pack(f"<I{len(shape)}Q", len(shape), *shape) + struct.pack("<IQ", ggml_type, offset)


ARCH = kv("general.architecture", STRING, text("llama"))


def build(kvs: list[bytes] = (ARCH,), tensors: list[bytes] = (tensor("w", (8,)),), *, data: int = 32,
          version: int = 3, n_kv: int | None = None, n_tensors: int | None = None, alignment: int = 32) -> bytes:
    """A GGUF file: header, metadata, tensor infos, padding to `alignment`, then `data` bytes of tensor data."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % alignment) + b"\0" * data


def nested(depth: int) -> bytes:
    """An array of arrays, `depth` deep, with one uint8 at the bottom."""
    return array(UINT8, 1, b"\x07") if depth == 1 else array(ARRAY, 1, nested(depth - 1))


def parse(path: Path) -> GGUFInfo:
    """What read_gguf_info does, without its cache (fuzzed files are many, and may share a size and an mtime)."""
    return gguf_info._cached.__wrapped__(str(path), 0, 0)


def test_the_builder_writes_real_gguf(tmp_path):
    """The baseline every hostile case departs from is a file the reference reader and ours both accept."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(build(tensors=[tensor("a", (8,)), tensor("b", (2, 4), F16, 32), tensor("q", (32,), Q4_0, 64)],
                           data=96))
    reader = gguf.GGUFReader(str(path))
    assert [(t.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors] == [("a", 8, 32), ("b", 8, 16),
                                                                                     ("q", 32, 18)]
    info = read_gguf_info(path)
    assert info.architecture == "llama" and info.parameter_count == 48


@pytest.mark.parametrize("content, words", [
    pytest.param(build()[:30], "ends inside its header", id="truncated-header"),
    pytest.param(build(n_tensors=2**63), "declares 9223372036854775808 tensors", id="absurd-n_tensors"),
    pytest.param(build(n_kv=2**63), "declares 9223372036854775808 metadata entries", id="absurd-n_kv"),
    pytest.param(build(n_tensors=4000), "4000 tensors need at least", id="n_tensors-past-end"),
    pytest.param(build(n_kv=5000), "5000 metadata entries", id="n_kv-past-end"),
    pytest.param(build([struct.pack("<Q", HUGE) + b"key"]), "ends inside its header", id="key-length-2**64-1"),
    pytest.param(build([kv("general.name", STRING, struct.pack("<Q", HUGE))]), "ends inside its header",
                 id="string-length-2**64-1"),
    pytest.param(build([kv("a", ARRAY, array(UINT8, 2**62))]), "declares 4611686018427387904 items",
                 id="array-count-huge"),
    pytest.param(build([kv("a", ARRAY, array(STRING, 1 << 20))]), "need at least 8388608 bytes",
                 id="array-count-past-end"),
    pytest.param(build([kv("a", ARRAY, nested(50))]), "nests arrays more than", id="nested-arrays-deep"),
    pytest.param(build([kv("a", 13, b"\0" * 8)]), "unknown value type 13", id="unknown-value-type"),
    pytest.param(build([kv("a", ARRAY, array(99, 1, b"\0" * 8))]), "unknown array item type 99",
                 id="unknown-array-item-type"),
    pytest.param(build([ARCH, ARCH]), "metadata key 'general.architecture' appears twice", id="duplicate-key"),
    pytest.param(build(tensors=[tensor("w", (8,), ggml_type=4)]), "unknown ggml type 4", id="removed-ggml-type"),
    pytest.param(build(tensors=[tensor("w", (8,), ggml_type=2**31)]), "unknown ggml type", id="unknown-ggml-type"),
    pytest.param(build(tensors=[tensor("w", (8, 0))]), "has a zero dimension", id="zero-dim"),
    pytest.param(build(tensors=[tensor("w", ())]), "has 0 dimensions", id="n_dims-0"),
    pytest.param(build(tensors=[tensor("w", (1, 1, 1, 1, 8))]), "has 5 dimensions", id="n_dims-5"),
    pytest.param(build(tensors=[tensor("w", (2**32, 2**32))]), "64-bit", id="element-count-overflow"),
    pytest.param(build(tensors=[tensor("w", (16,), Q4_0)]), "not a multiple of its block size 32", id="row-vs-block"),
    pytest.param(build(tensors=[tensor("w", (8,), offset=2**40)]), "runs past the end of the file",
                 id="offset-past-end"),
    pytest.param(build(tensors=[tensor("w", (8,), offset=2**64 - 32)]), "runs past the end", id="offset-wraps"),
    pytest.param(build(tensors=[tensor("w", (1 << 20,))]), "needs bytes up to 4194432, the file has 160",
                 id="size-past-end"),
    pytest.param(build(tensors=[tensor("w", (8,), offset=4)]), "offset 4, not a multiple of the alignment 32",
                 id="misaligned-offset"),
    pytest.param(build(tensors=[tensor("a", (16,)), tensor("b", (8,), offset=32)], data=96), "'a' and 'b' overlap",
                 id="overlapping-tensors"),
    pytest.param(build(tensors=[tensor("w", (8,)), tensor("w", (8,), offset=32)], data=64),
                 "tensor name 'w' appears twice", id="duplicate-tensor-names"),
    pytest.param(build(tensors=[tensor("x" * 64, (8,))]), "64 bytes long", id="tensor-name-too-long"),
    pytest.param(build(tensors=[tensor(b"w\0evil", (8,))]), "NUL byte", id="tensor-name-nul"),
    pytest.param(build([u32("general.alignment", 0)]), "general.alignment is 0, not a power of two", id="alignment-0"),
    pytest.param(build([u32("general.alignment", 3)]), "general.alignment is 3, not a power of two", id="alignment-3"),
    pytest.param(build([kv("general.alignment", UINT64, struct.pack("<Q", 32))]), "must be a uint32",
                 id="alignment-uint64"),
    pytest.param(build(version=1), "version 1 is too old", id="version-1"),
    pytest.param(build(version=99), "version 99 is newer than ember reads (versions 2 and 3)", id="version-99"),
    pytest.param(build(version=3 << 24), "big-endian", id="big-endian"),
])
def test_hostile_header_is_refused_quickly_and_cheaply(tmp_path, content, words):
    path = tmp_path / "hostile.gguf"
    path.write_bytes(content)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(BadRequest) as refused:
            read_gguf_info(path)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.status == 400 and refused.value.message.startswith("'hostile.gguf' is not a ")
    assert words in refused.value.message
    assert took < 1 and peak < 10 << 20


def test_valid_files_still_pass(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "wide.gguf"), "llama")
    writer.add_custom_alignment(64)
    writer.add_array("general.matrix", [[1, 2], [3, 4]])  # a nested array, which the format allows
    writer.add_tensor("a", np.ones((3, 5), dtype=np.float32))
    writer.add_tensor("b", np.ones((2, 2, 2, 2), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_gguf_info(tmp_path / "wide.gguf").parameter_count == 15 + 16
    assert read_gguf_info(write_gguf(tmp_path / "lora.gguf", adapter=True)).is_lora_adapter
    assert read_gguf_info(write_gguf(tmp_path / "v.gguf", template="{{ x }}")).chat_template == "{{ x }}"
    # The bundled model: every one of its 272 tensors checked, its 100k vocabulary strings walked, still fast.
    started = time.perf_counter()
    info = parse(smollm2_gguf())
    assert time.perf_counter() - started < 1 and info.parameter_count == 134_515_008


# -- through the store: refused before anything is written ----------------------------------------------------------


def files_under(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


HOSTILE = build(tensors=[tensor("blk.0.attn_q.weight", (8,), offset=2**40)])


def test_create_from_a_hostile_path_or_adapter_changes_nothing(models, tmp_path):
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(HOSTILE)
    before = files_under(models.root)
    with pytest.raises(BadRequest, match="tensor 'blk.0.attn_q.weight' runs past the end of the file"):
        models.create("evil", CreateSpec(from_=str(hostile)))
    with pytest.raises(BadRequest, match="'hostile.gguf' is not a usable GGUF file"):
        models.create("evil", CreateSpec(from_=str(tmp_path / "a.gguf"), adapters=[str(hostile)]))
    with pytest.raises(BadRequest, match="runs past the end"):
        models.create("a", CreateSpec(from_="a", adapters=[str(hostile)]))  # not even over an existing name
    assert files_under(models.root) == before and not models.exists("evil")


def test_create_from_a_hostile_uploaded_blob_writes_no_manifest(models):
    # As POST /api/blobs/{digest} stores it: the raw bytes first, checked only when a create names them.
    digest = models.blobs.write_chunks([HOSTILE])
    manifests = files_under(models.manifests)
    for spec in (CreateSpec(from_=digest), CreateSpec(from_="a", adapters=[digest])):
        with pytest.raises(BadRequest, match="runs past the end of the file"):
            models.create("evil", spec)
    assert files_under(models.manifests) == manifests and not models.exists("evil")
    assert models.prune() == 1 and not models.blobs.has(digest)


# -- fuzzing: any bytes at all give a GGUFInfo or a BadRequest, never another exception ------------------------------

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
with tempfile.TemporaryDirectory() as scratch:
    SMALL = write_gguf(Path(scratch) / "small.gguf", template="{{ messages }}").read_bytes()
# Values that sit on the edges of what the reader checks: zero, one, a power of two, the largest 32 and 64-bit ones.
EDGES = [0, 1, 2, 3, 5, 31, 32, 255, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, HUGE]


def survives(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "fuzzed.gguf"
        path.write_bytes(content)
        tracemalloc.start()
        try:
            parse(path)
        except BadRequest as e:
            assert e.status == 400 and " is not a " in e.message
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peak < 10 << 20


@FUZZ
@given(version=st.sampled_from([2, 3]), counts=st.tuples(st.integers(0, 4), st.integers(0, 4)) | st.none(),
       tail=st.binary(max_size=512))
def test_fuzz_random_bytes_after_the_magic(version, counts, tail):
    head = b"GGUF" + struct.pack("<I", version) + (struct.pack("<QQ", *counts) if counts else b"")
    survives(head + tail)


@FUZZ
@given(bytes_set=st.lists(st.tuples(st.integers(0, len(SMALL) - 1), st.integers(0, 255)), max_size=8),
       words_set=st.lists(st.tuples(st.integers(0, len(SMALL) - 8), st.sampled_from(EDGES)), max_size=3),
       cut=st.none() | st.integers(0, len(SMALL)))
def test_fuzz_mutations_of_a_valid_file(bytes_set, words_set, cut):
    content = bytearray(SMALL)
    for at, value in bytes_set:
        content[at] = value
    for at, value in words_set:  # an edge value written over whatever 8 bytes are there: a count, a length, a shape
        content[at:at + 8] = value.to_bytes(8, "little")
    survives(bytes(content[:cut]))
