import pytest

from ember.core.options import OPTION_NAMES
from ember.store.modelfile import ModelfileError, parse_modelfile

FULL = '''# a comment
FROM smollm2

parameter temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER stop END
PARAMETER num_ctx 2048
PARAMETER seed """7"""
PARAMETER preset factual
  # an indented comment
SYSTEM """You are terse.
  Very terse."""
Template """{% for m in messages %}{{ m.content }}{% endfor %}"""
MESSAGE user Hi there
MESSAGE Assistant "Hello."
MESSAGE user """two
lines"""
LICENSE MIT
LICENSE """Second license"""
ADAPTER ./lora.gguf
'''


def test_every_instruction(tmp_path, tiny_adapter):
    tiny_adapter.rename(tmp_path / "lora.gguf")
    spec = parse_modelfile(FULL, tmp_path)
    assert spec.from_ == "smollm2"
    assert spec.parameters == {"temperature": 0.3, "stop": ["<|im_end|>", "END"], "num_ctx": 2048, "seed": 7,
                               "preset": "factual"}
    assert isinstance(spec.parameters["num_ctx"], int) and isinstance(spec.parameters["temperature"], float)
    assert spec.system == "You are terse.\n  Very terse."
    assert spec.template == "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert [(m.role, m.content) for m in spec.messages] == [("user", "Hi there"), ("assistant", "Hello."), ("user", "two\nlines")]
    assert spec.license == "MIT\n\nSecond license"
    assert spec.adapters == [str(tmp_path / "lora.gguf")]


def test_value_forms(tmp_path):
    spec = parse_modelfile('FROM "smollm2:135m"\nSYSTEM ""\nTEMPLATE "{{ bos_token }}"\n'
                           'MESSAGE user """He said "hi\"\"""\nLICENSE """\nMIT\n"""\n', tmp_path)
    assert spec.from_ == "smollm2:135m" and spec.system == "" and spec.template == "{{ bos_token }}"
    assert [(m.role, m.content) for m in spec.messages] == [("user", 'He said "hi"')]
    assert spec.license == "\nMIT\n"  # triple-quoted values are kept exactly as written
    assert spec.adapters == [] and spec.parameters == {}


def test_from_a_gguf_path_or_a_digest(tmp_path, tiny):
    (tmp_path / "sub").mkdir()
    assert parse_modelfile("FROM ./tiny.gguf", tmp_path).from_ == str(tiny)
    assert parse_modelfile("FROM tiny.gguf", tmp_path).from_ == str(tiny)
    assert parse_modelfile("FROM ../tiny.gguf", tmp_path / "sub").from_ == str(tiny)
    assert parse_modelfile(f"FROM {tiny}", tmp_path / "sub").from_ == str(tiny)
    digest = "sha256-" + "AB" * 32
    assert parse_modelfile(f"FROM {digest}\nADAPTER {digest}", tmp_path).from_ == "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, line, words", [
    ("", 1, "no FROM instruction"),
    ("# only a comment\nPARAMETER top_k 1", 1, "no FROM"),
    ("FROM a\nFROM b", 2, "FROM appears twice (first on line 1)"),
    ("FROM a\n\n# c\nWHATEVER x", 4, "unknown instruction 'WHATEVER'; expected one of FROM, PARAMETER"),
    ("FROM a\nPARAMETER temprature 1", 2, "unknown parameter 'temprature'; known: " + ", ".join(OPTION_NAMES)),
    ("FROM a\nPARAMETER top_k many", 2, "option 'top_k'"),
    ("FROM a\nPARAMETER top_p 7", 2, "less than or equal to 1"),
    ("FROM a\nPARAMETER num_ctx 2.5", 2, "num_ctx"),
    ("FROM a\nPARAMETER preset wild", 2, "unknown preset 'wild'; known: balanced"),
    ("FROM a\nPARAMETER top_k", 2, "PARAMETER top_k needs a value"),
    ("FROM a\nPARAMETER", 2, "PARAMETER needs a name and a value"),
    ('FROM a\nPARAMETER stop ""', 2, "PARAMETER stop needs a value"),
    ('FROM a\nSYSTEM """open\nstill open', 2, 'never closed'),
    ('FROM a\nSYSTEM """x""" trailing', 2, "unexpected text after the closing"),
    ('FROM a\nSYSTEM "open', 2, 'must end with " on the same line'),
    ("FROM a\nMESSAGE wizard hi", 2, "MESSAGE role 'wizard' must be one of system, user, assistant"),
    ("FROM a\nMESSAGE user", 2, "MESSAGE user needs a value"),
    ("FROM a\nADAPTER ./missing.gguf", 2, "ADAPTER file './missing.gguf' not found"),
    ("FROM ./missing.gguf", 1, "FROM file './missing.gguf' not found"),
    ("FROM a\nADAPTER sha256:123", 2, "invalid digest"),
    ("FROM a/../b:c", 1, "not found"),
    ("FROM bad:name:x", 1, "FROM: invalid model name"),
    ("FROM sha256:nothex", 1, "invalid digest"),
    ("FROM a\nSYSTEM", 2, "SYSTEM needs a value"),
    ('FROM a\n\nTEMPLATE """line one\n{% for x in %}"""', 3, "TEMPLATE is not a valid Jinja2 template: "
                                                             "chat template line 2"),
])
def test_errors_name_the_line(tmp_path, text, line, words):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(text, tmp_path)
    assert e.value.message.startswith(f"Modelfile line {line}: ") and words in e.value.message
    assert e.value.status == 400 and e.value.line == line
