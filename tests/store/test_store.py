import json

import pytest

from ember.core.errors import BadRequest, NotFound
from ember.core.types import Message
from ember.store.store import CreateSpec


def test_pull_reports_progress_and_shows_the_model(store):
    seen = []
    model = store.pull("smollm2", seen.append)
    statuses = [s["status"] for s in seen]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success" and "writing manifest" in statuses
    assert any(s.get("completed") == s.get("total") and s.get("digest") for s in seen)
    assert model.name == "smollm2:latest" and model.size > 98_000_000
    with pytest.raises(NotFound, match="catalog"):
        store.pull("llama3")


def test_show(pulled):
    shown = pulled.show("smollm2")
    assert shown["details"]["family"] == "llama" and shown["details"]["quantization_level"] == "Q4_1"
    assert shown["details"]["parameter_size"] == "134.52M"
    assert shown["model_info"]["llama.context_length"] == 8192
    assert "im_start" in shown["template"] and "Apache" in shown["license"]
    assert shown["capabilities"] == ["completion", "embedding"]


def test_create_from_stored_model_inherits_and_overrides(store, tiny):
    store.create("base", CreateSpec(from_=str(tiny), parameters={"temperature": 0.1, "top_k": 5}, system="base",
                                    license="MIT"))
    child = store.create("child", CreateSpec(from_="base", parameters={"top_k": 9, "preset": "creative"},
                                             messages=[Message("user", "hi")]))
    assert child.params == {"temperature": 0.1, "top_k": 9, "preset": "creative"}
    assert child.system == "base" and child.license == "MIT" and child.messages[0].content == "hi"
    assert child.model_path == store.get("base").model_path


def test_create_from_digest_and_adapter(store, tiny, tiny_adapter):
    digest = store.blobs.import_file(tiny)
    statuses = []
    model = store.create("m", CreateSpec(from_=digest, adapters=[str(tiny_adapter)]), statuses.append)
    assert f"using existing layer {digest}" in statuses and statuses[-1] == "success"
    assert len(model.adapter_paths) == 1
    with pytest.raises(BadRequest, match="not a LoRA adapter"):
        store.create("m2", CreateSpec(from_=digest, adapters=[str(tiny)]))
    with pytest.raises(BadRequest, match="is a LoRA adapter"):
        store.create("m3", CreateSpec(from_=str(tiny_adapter)))
    with pytest.raises(NotFound):
        store.create("m4", CreateSpec(from_="sha256:" + "0" * 64))


def test_create_refuses_bad_parts_before_writing(store, tiny, tmp_path):
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"hello")
    for spec, words in [(CreateSpec(from_=str(not_gguf)), "not a GGUF file"),
                        (CreateSpec(from_=str(tiny), parameters={"temperature": "hot"}), "temperature"),
                        (CreateSpec(from_=str(tiny), parameters={"preset": "wild"}), "unknown preset"),
                        (CreateSpec(from_="missing"), "not found")]:
        with pytest.raises((BadRequest, NotFound), match=words):
            store.create("x", spec)
    assert store.list() == [] and not store.blobs.all_digests()


def test_copy_and_delete_keep_shared_blobs(store, tiny):
    store.create("a", CreateSpec(from_=str(tiny), system="a"))
    store.copy("a", "b:v1")
    assert store.get("b:v1").digest == store.get("a").digest
    store.delete("a")
    assert store.get("b:v1").model_path.exists()
    store.delete("b:v1")
    assert not store.blobs.all_digests() and not list(store.manifests.iterdir())
    with pytest.raises(NotFound):
        store.delete("a")
    with pytest.raises(NotFound):
        store.copy("a", "c")


def test_manifest_layout(store, tiny):
    model = store.create("m:t", CreateSpec(from_=str(tiny), template="{{ messages }}", parameters={"stop": ["x"]}))
    manifest = json.loads((store.manifests / "m" / "t").read_text())
    kinds = [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]]
    assert kinds == ["model", "template", "params"]
    assert manifest["config"]["digest"].startswith("sha256:")
    assert all(store.blobs.has(layer["digest"]) for layer in manifest["layers"])
    assert model.params == {"stop": ["x"]}


def test_export_then_recreate(store, tiny, tiny_adapter, tmp_path):
    store.create("m", CreateSpec(from_=str(tiny), adapters=[str(tiny_adapter)], system='Say "hi".',
                                 parameters={"stop": ["a b"], "top_k": 3}))
    out = tmp_path / "out"
    files = store.export("m", out)
    assert [f.name for f in files] == ["m-latest.gguf", "m-latest-adapter-1.gguf", "Modelfile"]
    assert (out / "m-latest.gguf").read_bytes() == tiny.read_bytes()
    again = store.create_from_modelfile("again", (out / "Modelfile").read_text(), out)
    original = store.get("m")
    assert (again.params, again.system) == (original.params, original.system)
    with pytest.raises(BadRequest, match="already exists"):
        store.export("m", out)
