import hashlib

import pytest

from ember.core.errors import BadRequest, NotFound
from ember.fsutil import atomic_file
from ember.store.blobs import normalize_digest
from ember.store.names import ModelName, parse_name


@pytest.mark.parametrize("raw, parsed", [
    ("smollm2", ModelName("smollm2", "latest")), ("smollm2:135m", ModelName("smollm2", "135m")),
    ("My_model-1.5:v2.0", ModelName("My_model-1.5", "v2.0"))])
def test_good_names(raw, parsed):
    assert parse_name(raw) == parsed


@pytest.mark.parametrize("raw", ["", "../x", "a/b", "a\\b", "x:y:z", "sp ace", "x:", ":tag", "-lead", "a..b",
                                 "x" * 81, "имя"])
def test_bad_names(raw):
    with pytest.raises(BadRequest, match="invalid model name"):
        parse_name(raw)


def test_digests():
    hexd = "ab" * 32
    assert normalize_digest(f"sha256:{hexd}") == normalize_digest(f"sha256-{hexd.upper()}") == f"sha256:{hexd}"
    for bad in ("sha256:abc", f"md5:{hexd}", hexd, f"sha256:{'z' * 64}", None):
        with pytest.raises(BadRequest, match="invalid digest"):
            normalize_digest(bad)


def test_blob_write_verifies_and_leaves_nothing_on_mismatch(store):
    data = b"hello blobs"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.blobs.write_chunks([data], digest) == digest and store.blobs.has(digest)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BadRequest, match="digest mismatch"):
        store.blobs.write_chunks([b"other"], wrong)
    assert not store.blobs.has(wrong)
    assert [p.name for p in store.blobs.root.iterdir()] == [digest.replace(":", "-")]
    with pytest.raises(NotFound, match="upload it first"):
        store.blobs.require(wrong)


def test_atomic_file_keeps_the_old_content_when_the_write_fails(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_cleanup_removes_leftovers(store):
    (store.blobs.root / ".tmp-abc").write_bytes(b"partial")
    (store.manifests / "m").mkdir()
    (store.manifests / "m" / ".tmp-xyz").write_bytes(b"{")
    assert store.cleanup_partials() == 2
    assert store.list() == []
