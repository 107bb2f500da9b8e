import hashlib

import pytest

from ember.core.errors import BadRequest, NotFound
from ember.fsutil import remove_partials
from ember.store.blobs import BlobStore, normalize_digest
from ember.store.names import ModelName, parse_name


@pytest.mark.parametrize("raw, parsed", [
    ("smollm2", ModelName("smollm2", "latest")), ("smollm2:135m", ModelName("smollm2", "135m")),
    ("My_model-1.5:v2.0", ModelName("My_model-1.5", "v2.0")),
    ("x" * 80 + ":" + "y" * 80, ModelName("x" * 80, "y" * 80))])
def test_good_names(raw, parsed):
    assert parse_name(raw) == parsed
    assert str(parsed) == f"{parsed.model}:{parsed.tag}"


def test_names_keep_their_case():
    assert str(parse_name("SmolLM2:Big")) == "SmolLM2:Big"


@pytest.mark.parametrize("raw, why", [
    ("", "empty"), ("../x", "path separator"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("x:y:z", "more than one ':'"), ("sp ace", "must start with"), ("x:", "tag after ':' is empty"),
    (":tag", "model part before ':' is empty"), ("-lead", "must start with"), ("a..b", "'..'"), ("..", "'..'"),
    ("x" * 81, "longer than 80"), ("имя", "must start with"), ("a:.hidden", "must start with"), (None, "not a string")])
def test_bad_names(raw, why):
    with pytest.raises(BadRequest) as e:
        parse_name(raw)
    assert e.value.message.startswith(f"invalid model name {raw!r}: ") and why in e.value.message
    assert "names look like 'smollm2' or 'mymodel:v1'" in e.value.message


def test_digests():
    hexd = "ab" * 32
    assert normalize_digest(f"sha256:{hexd}") == normalize_digest(f"sha256-{hexd.upper()}") == f"sha256:{hexd}"
    for bad in ("sha256:abc", f"md5:{hexd}", hexd, f"sha256:{'z' * 64}", f"sha256:{hexd}0", f"sha512:{hexd}", "",
                None):
        with pytest.raises(BadRequest, match="invalid digest"):
            normalize_digest(bad)


def test_blob_write_verifies_and_leaves_nothing_on_mismatch(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    data = b"hello blobs"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert blobs.write_chunks([data[:5], data[5:]], digest) == digest and blobs.has(digest)
    assert blobs.path(digest).name == "sha256-" + digest[7:] and blobs.size(digest) == len(data)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BadRequest) as e:
        blobs.write_chunks([b"other"], wrong)
    assert wrong in e.value.message and "sha256:" + hashlib.sha256(b"other").hexdigest() in e.value.message
    assert not blobs.has(wrong)
    assert [p.name for p in blobs.root.iterdir()] == [blobs.path(digest).name]  # no temp file left
    with pytest.raises(NotFound, match="upload it first"):
        blobs.require(wrong)
    with pytest.raises(NotFound):
        blobs.size(wrong)


def test_existing_blob_is_not_rewritten(tmp_path):
    blobs = BlobStore(tmp_path)
    digest = blobs.write_chunks([b"same"])
    inode = blobs.path(digest).stat().st_ino
    assert blobs.write_chunks([b"same"]) == digest
    assert blobs.write_chunks(iter(()), digest) == digest  # known digest: the data is not even read
    assert blobs.path(digest).stat().st_ino == inode


def test_a_failing_source_leaves_no_temp(tmp_path):
    blobs = BlobStore(tmp_path)

    def chunks():
        yield b"part"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        blobs.write_chunks(chunks())
    assert list(tmp_path.iterdir()) == []


def test_import_file_reports_progress(tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * (9 << 20))
    blobs = BlobStore(tmp_path / "blobs")
    seen = []
    digest = blobs.import_file(source, lambda done, total: seen.append((done, total)))
    assert digest == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    assert seen[-1] == (9 << 20, 9 << 20) and len(seen) == 3 and all(t == 9 << 20 for _, t in seen)
    assert blobs.path(digest).stat().st_mode & 0o777 == 0o644
    with pytest.raises(BadRequest, match="cannot read"):
        blobs.import_file(tmp_path / "missing.gguf")
    source.write_bytes(b"changed")  # after it was hashed
    with pytest.raises(BadRequest, match="changed while it was being copied"):
        blobs.import_file(source, digest="sha256:" + "1" * 64)
    assert blobs.all_digests() == {digest}


def test_remove_and_list(tmp_path):
    blobs = BlobStore(tmp_path)
    a, b = blobs.write_chunks([b"a"]), blobs.write_chunks([b"b"])
    (tmp_path / ".tmp-x").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert blobs.all_digests() == {a, b}
    blobs.remove(a)
    blobs.remove(a)  # already gone: fine
    assert blobs.all_digests() == {b}
    assert remove_partials(tmp_path) == 1 and not (tmp_path / ".tmp-x").exists()
