import pytest

from ember.core.errors import BadRequest
from ember.core.options import DEFAULTS, PRESETS, Options, parse_options, resolve


def test_precedence_defaults_modelfile_preset_request():
    modelfile = {"temperature": 0.1, "top_k": 5, "num_ctx": 1024, "preset": "creative"}
    merged = resolve(modelfile, Options(top_p=0.5), None)
    assert merged.top_p == 0.5  # request wins
    assert merged.temperature == PRESETS["creative"].temperature  # preset beats the Modelfile
    assert merged.num_ctx == 1024  # the Modelfile beats defaults where the preset says nothing
    assert merged.min_p == DEFAULTS.min_p


def test_request_preset_overrides_modelfile_preset():
    merged = resolve({"preset": "creative"}, Options(), "concise")
    assert merged.num_predict == 256 and merged.temperature == 0.4


def test_request_options_beat_preset():
    assert resolve({}, Options(temperature=0.0), "creative").temperature == 0.0


def test_all_presets_from_the_seed():
    assert {name: (p.temperature, p.top_p, p.top_k, p.repeat_penalty, p.num_predict) for name, p in PRESETS.items()} == {
        "balanced": (0.7, 0.9, 40, 1.1, 512), "creative": (0.9, 0.95, 60, 1.05, 512),
        "factual": (0.3, 0.85, 40, 1.15, 512), "concise": (0.4, 0.8, 30, 1.2, 256),
        "long-form": (0.7, 0.95, 60, 1.05, 1024)}


@pytest.mark.parametrize("raw, words", [
    ({"temperature": "hot"}, ["temperature"]),
    ({"top_p": 1.5}, ["top_p", "less than or equal to 1"]),
    ({"num_ctx": 10}, ["num_ctx", "greater than or equal to 64"]),
    ({"tempreture": 1}, ["unknown option 'tempreture'", "temperature"]),
    ({"stop": 5}, ["stop"]),
])
def test_bad_options_name_the_field(raw, words):
    with pytest.raises(BadRequest) as e:
        parse_options(raw)
    for word in words:
        assert word in e.value.message


def test_unknown_preset():
    with pytest.raises(BadRequest, match="unknown preset 'wild'"):
        resolve({}, Options(), "wild")


def test_ollama_gpu_options_are_accepted_and_ignored():
    assert parse_options({"num_gpu": 1, "use_mmap": True, "temperature": 0.2}) == Options(temperature=0.2)


def test_stop_string_becomes_list():
    assert parse_options({"stop": "END"}).stop == ["END"]
