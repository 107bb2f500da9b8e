import json
import os
from datetime import UTC

import pytest

from ember.core.errors import BadRequest, EmberError, NotFound
from ember.core.types import Message
from ember.engines.registry import capabilities
from ember.store.store import CreateSpec, ModelStore, describe
from tests.helpers import Reports, smollm2_gguf, write_gguf


def manifest_of(store: ModelStore, model: str, tag: str = "latest") -> dict:
    return json.loads((store.manifests / model / tag).read_text())


def test_pull_reports_progress_like_ollama(store):
    seen = Reports()
    pulled = store
    pulled.pull("smollm2", seen)
    statuses = seen.statuses
    assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest", "writing manifest",
                                                                    "success"]
    copying = [s for s in seen if s.item]
    digest, total = copying[0].item, smollm2_gguf().stat().st_size
    assert len(copying) > 3 and all(s.status == f"pulling {digest[7:19]}" and s.total == total for s in copying)
    assert [s.completed for s in copying] == sorted(s.completed for s in copying)
    assert copying[-1].completed == total
    model = pulled.get("smollm2")
    assert model.name == "smollm2:latest" and model.size > total and model.model_path.name == digest.replace(":", "-")
    assert model.modified_at.tzinfo == UTC and len(model.digest) == 64
    assert "Apache" in model.license and model.params == {} and model.messages == [] and model.template is None

    # Again, and under the other tag: the blob is there, so nothing is copied and the manifest is not rewritten.
    mtime = (pulled.manifests / "smollm2" / "latest").stat().st_mtime_ns
    again = Reports()
    assert pulled.pull("smollm2:latest", again).digest == model.digest
    assert again.statuses == ["pulling manifest", f"pulling {digest[7:19]}", "verifying sha256 digest",
                                            "writing manifest", "success"]
    assert (pulled.manifests / "smollm2" / "latest").stat().st_mtime_ns == mtime
    assert pulled.pull("smollm2:135m").model_path == model.model_path and len(pulled.blobs.all_digests()) == 3
    pulled.delete("smollm2:135m")
    assert len(pulled.blobs.all_digests()) == 3 and model.model_path.exists()


def test_pull_refuses_names_outside_the_catalog(store):
    seen = Reports()
    with pytest.raises(NotFound) as e:
        store.pull("llama3", seen)
    assert "smollm2:latest, smollm2:135m" in e.value.message and seen == []
    with pytest.raises(NotFound, match="catalog"):
        store.pull("smollm2:7b")
    with pytest.raises(BadRequest, match="invalid model name"):
        store.pull("../smollm2")


def test_a_bundled_model_ember_picks_is_pulled_once(store):
    assert store.ensure_bundled("minilm") and store.exists("minilm:latest")
    assert not store.ensure_bundled("minilm")  # already there
    assert not store.ensure_bundled("llama3") and not store.exists("llama3")  # not bundled: left to the caller's error


def test_show_smollm2(pulled):
    pulled.pull("smollm2")
    shown = describe(pulled.get("smollm2"))
    assert shown["details"] == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                "parameter_size": "134.52M", "quantization_level": "Q4_1"}
    assert shown["model_info"]["llama.context_length"] == 8192
    assert shown["model_info"]["general.architecture"] == "llama"
    assert shown["model_info"]["general.parameter_count"] == 134_515_008
    assert "<|im_start|>" in shown["template"] and "Apache" in shown["license"] and shown["system"] == ""
    assert capabilities(pulled.get("smollm2")) == ["completion", "tools"] and shown["parameters"] == ""
    assert shown["modified_at"].endswith("Z")
    assert f"FROM {pulled.get('smollm2').model_path}" in shown["modelfile"]
    info = pulled.get("smollm2").info
    assert (info.architecture, info.context_length, info.quantization) == ("llama", 8192, "Q4_1")


def test_list_get_exists(pulled):
    pulled.pull("smollm2")
    assert [m.name for m in pulled.list()] == ["smollm2:latest"]
    assert pulled.exists("smollm2") and pulled.exists("smollm2:latest") and not pulled.exists("smollm2:135m")
    with pytest.raises(NotFound) as e:
        pulled.get("nope:v1")
    assert e.value.message == "model 'nope:v1' not found, try pulling it first: ember pull nope:v1"


def test_create_from_a_gguf_path(store, tiny):
    reports = Reports()
    model = store.create("m:v1", CreateSpec(from_=str(tiny), template="{% for t in tools %}{{ t }}{% endfor %}",
                                            parameters={"stop": "x", "num_ctx": "512"}), reports)
    statuses = reports.statuses
    assert statuses[:2] == ["reading tiny.gguf", "copying tiny.gguf"]
    assert statuses[-2:] == ["writing manifest", "success"]
    copied = [r for r in reports if r.total]
    assert copied[-1].completed == copied[-1].total == tiny.stat().st_size
    created = [s for s in statuses if "layer" in s]
    assert created[0].startswith("creating new layer sha256:")
    assert model.model_path.read_bytes() == tiny.read_bytes() and model.params == {"stop": ["x"], "num_ctx": 512}
    manifest = manifest_of(store, "m", "v1")
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.ollama.image.model", "application/vnd.ollama.image.template",
        "application/vnd.ollama.image.params"]
    config = json.loads(store.blobs.path(manifest["config"]["digest"]).read_bytes())
    assert config["model_format"] == "gguf" and config["model_family"] == "llama"
    assert config["parameter_size"] == "136" and config["file_type"] == "F32"
    assert all(store.blobs.size(layer["digest"]) == layer["size"] for layer in manifest["layers"])
    assert model.size == sum(layer["size"] for layer in manifest["layers"])
    assert capabilities(model) == ["completion", "tools"]
    again = Reports()
    store.create("m:v2", CreateSpec(from_=str(tiny)), again)
    # the GGUF is not copied again
    assert again.statuses[:2] == ["reading tiny.gguf", created[0].replace("creating new", "using existing")]


def test_create_from_stored_model_inherits_and_overrides(store, tiny, tiny_adapter):
    base = store.create("base", CreateSpec(
        from_=str(tiny), parameters={"temperature": 0.1, "top_k": 5, "stop": ["a"]}, system="base",
        license="MIT", template="{{ messages }}", adapters=[str(tiny_adapter)], messages=[Message("user", "q")]))
    reports = Reports()
    child = store.create("child", CreateSpec(from_="base", parameters={"top_k": 9, "preset": "creative"},
                                             system="child", messages=[Message("user", "hi")]), reports)
    statuses = reports.statuses
    assert child.params == {"temperature": 0.1, "top_k": 9, "stop": ["a"], "preset": "creative"}
    assert (child.system, child.license, child.template) == ("child", "MIT", "{{ messages }}")
    assert [(m.role, m.content) for m in child.messages] == [("user", "hi")]
    assert child.model_path == base.model_path and child.adapter_paths == base.adapter_paths
    assert statuses[:2] == [f"using existing layer {layer['digest']}" for layer in base.layers[:2]]
    assert "using existing layer" in statuses[2] and "creating new layer" in statuses[3]  # template, then system

    # An empty SYSTEM clears the parent's; parameters from a stored model only merge.
    plain = store.create("plain", CreateSpec(from_="child:latest", system=""))
    assert plain.system is None and plain.params == child.params and plain.messages[0].content == "hi"


def test_create_from_digest_and_adapter(store, tiny, tiny_adapter):
    digest = store.blobs.import_file(tiny)
    adapter = store.blobs.import_file(tiny_adapter)
    reports = Reports()
    model = store.create("m", CreateSpec(from_=digest.replace(":", "-"), adapters=[adapter]), reports)
    assert reports.statuses == [f"using existing layer {digest}", f"using existing layer {adapter}", "writing manifest",
                        "success"]
    assert model.adapter_paths == [store.blobs.path(adapter)]


@pytest.mark.parametrize("spec, error, words", [
    (lambda t, a: CreateSpec(from_=str(t), adapters=[str(t)]), BadRequest, "not a LoRA adapter"),
    (lambda t, a: CreateSpec(from_=str(a)), BadRequest, "is a LoRA adapter; use it with ADAPTER"),
    (lambda t, a: CreateSpec(from_="sha256:" + "0" * 64), NotFound, "upload it first"),
    (lambda t, a: CreateSpec(from_="sha256:0"), BadRequest, "invalid digest"),
    (lambda t, a: CreateSpec(from_="missing"), NotFound, "model 'missing' not found"),
    (lambda t, a: CreateSpec(from_="./rel.gguf"), BadRequest, "absolute path"),
    (lambda t, a: CreateSpec(from_=str(t) + ".nope"), BadRequest, "no such file"),
    (lambda t, a: CreateSpec(from_=""), BadRequest, "create needs FROM"),
    (lambda t, a: CreateSpec(from_=str(t.parent / "x.gguf")), BadRequest, "'x.gguf' is not a GGUF file"),
    (lambda t, a: CreateSpec(from_=str(t), parameters={"temperature": "hot"}), BadRequest, "temperature"),
    (lambda t, a: CreateSpec(from_=str(t), parameters={"tempreture": 1}), BadRequest, "unknown option"),
    (lambda t, a: CreateSpec(from_=str(t), parameters={"preset": "wild"}), BadRequest, "unknown preset"),
    (lambda t, a: CreateSpec(from_=str(t), template="{% if %}"), BadRequest, "chat template line 1"),
    (lambda t, a: CreateSpec(from_=str(t), messages=[Message("tool", "x")]), BadRequest, "message role 'tool'"),
])
def test_create_refuses_bad_parts_before_writing_or_reporting(store, tiny, tiny_adapter, spec, error, words):
    (tiny.parent / "x.gguf").write_bytes(b"hello")
    statuses = Reports()
    with pytest.raises(error, match=words):
        store.create("x", spec(tiny, tiny_adapter), statuses)
    assert statuses == [] and store.list() == [] and not store.blobs.all_digests()
    with pytest.raises(BadRequest, match="invalid model name"):
        store.create("a/b", CreateSpec(from_=str(tiny)))


def test_create_from_modelfile(store, tiny, tmp_path):
    (tmp_path / "Modelfile").write_text("FROM ./tiny.gguf\nPARAMETER temperature 0.2\nSYSTEM be brief\n")
    reports = Reports()
    model = store.create_from_modelfile("mf", (tmp_path / "Modelfile").read_text(), tmp_path, reports)
    statuses = reports.statuses
    assert statuses[:2] == ["parsing modelfile", "reading tiny.gguf"]
    assert [s for s in statuses if "layer" in s][0].startswith("creating new layer sha256:")
    assert statuses[-1] == "success" and model.system == "be brief" and model.params == {"temperature": 0.2}
    statuses = Reports()
    with pytest.raises(NotFound):
        store.create_from_modelfile("mf2", "FROM nothing-here", tmp_path, statuses)
    assert statuses == []  # refused before the first report, so an API can still answer 404


def test_recreating_a_name_releases_what_only_it_used(store, tiny):
    store.create("m", CreateSpec(from_=str(tiny), system="one"))
    first = set(store.blobs.all_digests())
    store.create("m", CreateSpec(from_=str(tiny), system="two"))
    assert len(store.blobs.all_digests()) == len(first)  # the old system text and config are gone
    assert store.get("m").system == "two"


def test_copy_and_delete_keep_shared_blobs(store, tiny):
    store.create("a", CreateSpec(from_=str(tiny), system="a"))
    store.create("c", CreateSpec(from_="a", system="c"))
    store.copy("a", "b:v1")
    assert store.get("b:v1").digest == store.get("a").digest
    store.delete("a")
    assert store.get("b:v1").model_path.exists() and not store.exists("a")
    assert (store.manifests / "a").exists() is False  # empty folder pruned
    store.delete("b:v1")
    assert store.get("c").model_path.exists() and len(store.blobs.all_digests()) == 3  # model, system, config
    store.delete("c")
    assert not store.blobs.all_digests() and not list(store.manifests.iterdir())
    with pytest.raises(NotFound):
        store.delete("a")
    with pytest.raises(NotFound):
        store.copy("a", "c")
    with pytest.raises(BadRequest):
        store.copy("c", "../escape")


def test_damaged_store(store, tiny):
    store.create("good", CreateSpec(from_=str(tiny)))
    store.create("bad", CreateSpec(from_=str(tiny), system="s"))
    path = store.manifests / "bad" / "latest"
    path.write_text("{ not json")
    with pytest.raises(EmberError, match="model 'bad:latest' is damaged.*ember rm bad:latest"):
        store.get("bad")
    assert [m.name for m in store.list()] == ["good:latest"]
    store.delete("good")  # a manifest it cannot read: no blob may be collected
    assert len(store.blobs.all_digests()) == 3
    store.delete("bad")
    assert store.prune() == 3 and store.list() == []

    store.create("m", CreateSpec(from_=str(tiny), system="s"))
    system_blob = store.blobs.path(store.get("m").layers[1]["digest"])
    system_blob.write_bytes(b"\xff\xfe")
    with pytest.raises(EmberError, match="damaged.*cannot be read"):
        store.get("m")
    system_blob.unlink()
    with pytest.raises(EmberError, match="system blob sha256:.* is missing"):
        store.get("m")
    store.create("fine", CreateSpec(from_=str(tiny)))
    (store.manifests / "not a name").mkdir()
    (store.manifests / "not a name" / "latest").write_bytes((store.manifests / "fine" / "latest").read_bytes())
    assert [m.name for m in store.list()] == ["fine:latest"]  # skipped: m (damaged), a name no request could use


def test_cleanup_removes_leftovers(store):
    (store.blobs.root / ".tmp-abc").write_bytes(b"partial")
    (store.manifests / "m").mkdir()
    (store.manifests / "m" / ".tmp-xyz").write_bytes(b"{")
    assert store.cleanup_partials() == 2
    assert store.list() == [] and not list(store.blobs.root.iterdir())


def test_list_is_newest_first(store, tiny):
    store.create("old", CreateSpec(from_=str(tiny)))
    store.create("new", CreateSpec(from_=str(tiny), system="n"))
    os.utime(store.manifests / "old" / "latest", (1_000_000, 1_000_000))
    assert [m.name for m in store.list()] == ["new:latest", "old:latest"]


def test_export_then_recreate(store, tiny, tiny_adapter, tmp_path):
    store.create("m", CreateSpec(
        from_=str(tiny), adapters=[str(tiny_adapter)], system='Say "hi".\nTwice.', template="{{ messages }}",
        license="MIT", messages=[Message("user", 'a "quoted" ask"'), Message("assistant", "ok")],
        parameters={"stop": ["a b", "\n\n", 'q"', "<|end|>"], "top_k": 3, "temperature": 0.5, "preset": "concise"}))
    out = tmp_path / "out"
    files = store.export("m", out)
    assert [f.name for f in files] == ["m-latest.gguf", "m-latest-adapter-1.gguf", "Modelfile"]
    assert (out / "m-latest.gguf").read_bytes() == tiny.read_bytes()
    assert (out / "m-latest-adapter-1.gguf").read_bytes() == tiny_adapter.read_bytes()
    text = (out / "Modelfile").read_text()
    assert "FROM ./m-latest.gguf\nADAPTER ./m-latest-adapter-1.gguf\n" in text
    again = store.create_from_modelfile("again", text, out)
    original = store.get("m")
    for field in ("params", "system", "template", "license", "messages", "model_path", "adapter_paths"):
        assert getattr(again, field) == getattr(original, field), field
    assert again.digest == original.digest  # the very same model
    with pytest.raises(BadRequest, match="already exists"):
        store.export("m", out)
    (out / "blocker").write_text("")
    with pytest.raises(BadRequest, match="cannot export into"):
        store.export("m", out / "blocker")
    with pytest.raises(NotFound):
        store.export("nope", tmp_path / "x")

    # show's Modelfile recreates it too, from the blobs.
    shown = describe(store.get("m"))
    assert store.create_from_modelfile("third", shown["modelfile"], tmp_path).digest == original.digest
    assert 'stop "a b"' in shown["parameters"] and "top_k 3" in shown["parameters"]


def test_pulled_model_exports_under_a_readable_name(pulled, tmp_path):
    pulled.pull("smollm2")
    files = pulled.export("smollm2", tmp_path)
    assert [f.name for f in files] == ["smollm2-latest.gguf", "Modelfile"]
    assert files[0].stat().st_size == smollm2_gguf().stat().st_size
    copy = pulled.create_from_modelfile("copy", files[1].read_text(), tmp_path)  # same bytes: nothing is copied
    assert copy.digest == pulled.get("smollm2").digest and "Apache" in copy.license
    pulled.delete("copy")
    assert pulled.get("smollm2").model_path.exists()


def test_a_second_store_on_the_same_folder_sees_everything(store, tiny):
    store.create("m", CreateSpec(from_=str(write_gguf(tiny.parent / "t2.gguf", context=512))))
    assert ModelStore(store.root).get("m").info.context_length == 512
