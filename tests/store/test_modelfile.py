import pytest

from ember.store.modelfile import ModelfileError, parse_modelfile

FULL = '''# a comment
FROM smollm2
parameter temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER stop END
PARAMETER num_ctx 2048
PARAMETER preset factual
SYSTEM """You are terse.
Very terse."""
TEMPLATE """{% for m in messages %}{{ m.content }}{% endfor %}"""
MESSAGE user Hi there
MESSAGE assistant "Hello."
LICENSE MIT
LICENSE """Second license"""
ADAPTER ./lora.gguf
'''


def test_every_instruction(tmp_path, tiny_adapter):
    tiny_adapter.rename(tmp_path / "lora.gguf")
    spec = parse_modelfile(FULL, tmp_path)
    assert spec.from_ == "smollm2"
    assert spec.parameters == {"temperature": 0.3, "stop": ["<|im_end|>", "END"], "num_ctx": 2048, "preset": "factual"}
    assert spec.system == "You are terse.\nVery terse."
    assert spec.template.startswith("{% for m in messages %}")
    assert spec.messages == [("user", "Hi there"), ("assistant", "Hello.")]
    assert spec.license == "MIT\n\nSecond license"
    assert spec.adapters == [str(tmp_path / "lora.gguf")]


def test_from_a_gguf_path_is_resolved(tmp_path, tiny):
    assert parse_modelfile("FROM ./tiny.gguf", tmp_path).from_ == str(tiny)


@pytest.mark.parametrize("text, line, words", [
    ("PARAMETER top_k 1", 1, "no FROM"),
    ("FROM a\nFROM b", 2, "FROM appears twice"),
    ("FROM a\n\n# c\nWHATEVER x", 4, "unknown instruction 'WHATEVER'"),
    ("FROM a\nPARAMETER temprature 1", 2, "unknown parameter 'temprature'"),
    ("FROM a\nPARAMETER top_k many", 2, "top_k"),
    ("FROM a\nPARAMETER top_p 7", 2, "top_p"),
    ("FROM a\nPARAMETER preset wild", 2, "unknown preset"),
    ("FROM a\nPARAMETER top_k", 2, "needs a value"),
    ('FROM a\nSYSTEM """open\nstill open', 2, 'never closed'),
    ("FROM a\nMESSAGE wizard hi", 2, "MESSAGE role"),
    ("FROM a\nADAPTER ./missing.gguf", 2, "not found"),
    ("FROM ./missing.gguf", 1, "not found"),
    ("FROM a\nSYSTEM", 2, "needs a value"),
    ('FROM a\nTEMPLATE """{% for x in %}"""', 2, "Jinja2"),
])
def test_errors_name_the_line(tmp_path, text, line, words):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(text, tmp_path)
    assert e.value.message.startswith(f"Modelfile line {line}: ") and words in e.value.message
