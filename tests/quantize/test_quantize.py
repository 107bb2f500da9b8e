"""Quantization into the store, with its quality report: through the CLI, through /api/create with the official
`ollama` client, and the refusals, which must leave the store exactly as it was.

The bundled smollm2 is stored as Q4_1; an F16 copy of it (made once, with allow_requantize) is the source the way a
user's F16 GGUF would be. Texts and chunks are small, so that the whole file runs in a couple of minutes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ollama
import pytest

from ember.core.errors import BadRequest
from ember.quantize.create import QuantizeJob, run
from ember.quantize.imatrix import compute_imatrix
from ember.quantize.quality import compare_many, sample_texts
from ember.quantize.quantizer import quantize_file
from ember.quantize.types import TYPES, parse_type
from ember.store.modelfile import CreateSpec
from ember.store.store import ModelStore

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "ember" / "quantize" / "samples"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("quant-home")
    store = ModelStore(home / "models")
    store.pull("smollm2")
    run(store, QuantizeJob("smol-f16", CreateSpec(from_="smollm2", system="Answer briefly."), "f16",
                           allow_requantize=True, report=False))
    return home


@pytest.fixture
def store(home) -> ModelStore:
    return ModelStore(home / "models")


def ember(*args: str, home: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def snapshot(store: ModelStore) -> tuple[set[str], set[str]]:
    """The blobs and model names; and no temp file anywhere under the store."""
    assert not [p for p in store.root.rglob(".tmp-*")], "a temp file was left"
    return {p.name for p in store.blobs.root.iterdir()}, {m.name for m in store.list()}


def test_type_names_are_case_insensitive_and_unknown_ones_list_the_known():
    assert parse_type("q4_K_M") is parse_type("Q4_K_M") is parse_type("q4_k_m") is TYPES["Q4_K_M"]
    assert parse_type("f16").is_float and parse_type("IQ2_XXS").needs_imatrix and not parse_type("Q2_K").needs_imatrix
    with pytest.raises(BadRequest, match=r"q4_K_X.*Q8_0.*Q4_K_M.*IQ4_XS"):
        parse_type("q4_K_X")


def test_the_f16_source_keeps_the_bundled_models_template_and_license(store):
    source, f16 = store.get("smollm2"), store.get("smol-f16")
    assert f16.info.quantization == "F16" and f16.system == "Answer briefly."
    assert f16.chat_template == source.chat_template and f16.license == source.license


def test_cli_quantizes_and_reports_what_it_cost(home, store):
    proc = ember("quantize", "smol-f16", "--type", "q4_K_M", "--name", "smol-q4", "--report-data",
                 str(SAMPLES / "en.txt"), "--ctx", "128", "--chunks", "2", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "quantizing F16 model to Q4_K_M" in proc.stderr and "created smol-q4:latest" in proc.stderr
    line = proc.stdout.splitlines()[0]
    assert line.startswith("Q4_K_M: ") and "smaller" in line and "KLD" in line and "same top token" in line
    model = store.get("smol-q4")
    assert model.info.quantization == "Q4_K_M" and model.system == "Answer briefly."
    assert model.license == store.get("smol-f16").license
    report = json.loads(next((home / "quantize").glob(f"{model.layers[0]['digest'].replace(':', '-')}.json"))
                        .read_text())
    t = report["all"]
    assert t["kld"] >= 0 and 0 <= t["same_top"] <= 1 and t["ppl_ref"] > 1 and t["ppl"] > 1 and t["tokens"] == 2 * 63
    assert 1 < report["smaller"] < 5 and report["prompt_tps"] > 0 and report["gen_tps"] > 0
    snapshot(store)


def test_refusals_say_what_to_do_and_leave_nothing(home, store):
    before = snapshot(store)
    proc = ember("quantize", "smollm2", "--type", "q4_K_M", "--name", "again", home=home)
    assert proc.returncode == 1 and "already quantized (Q4_1)" in proc.stderr and "--allow-requantize" in proc.stderr
    assert "F16/F32" in proc.stderr and "Traceback" not in proc.stderr
    proc = ember("quantize", "smol-f16", "--type", "q4_K_X", "--name", "bad", home=home)
    assert proc.returncode == 1 and "Q4_K_M" in proc.stderr and "IQ4_XS" in proc.stderr
    proc = ember("quantize", "smol-f16", "--type", "iq2_xxs", "--name", "bad", home=home)
    assert proc.returncode == 1 and "--imatrix-data" in proc.stderr
    proc = ember("quantize", "smol-f16", "--type", "q8_0", "--name", "bad", "--report-data", "/nonexistent.txt",
                 home=home)
    assert proc.returncode == 1 and "/nonexistent.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(store) == before


def test_ctrl_c_while_measuring_leaves_no_file(home, store):
    before = snapshot(store)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ember", "quantize", "smol-f16", "--type", "q8_0", "--name",
                             "interrupted", "--ctx", "64", "--chunks", "0"], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    seen = []
    while line := proc.stderr.readline():  # the quantized file exists (under its temp name) from here on
        seen.append(line)
        if line.startswith("quantized "):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    # (The "interrupted" line can be lost: llama-cpp-python points the process's stderr at /dev/null while a
    # Llama(verbose=False) loads.)
    assert proc.returncode == 130, "".join(seen) + rest
    assert not store.exists("interrupted")
    assert snapshot(store) == before


def test_ollama_client_creates_a_quantized_model(home, store, make_server):
    server = make_server(home=home)
    client = ollama.Client(host=server.url)
    statuses = [p.status for p in client.create(model="smol-q8", from_="smol-f16", quantize="q8_0", stream=True)]
    assert statuses[0] == "quantizing F16 model to Q8_0" and statuses[-1] == "success"
    summary = statuses[-2]
    assert summary.startswith("Q8_0: ") and "KLD" in summary, statuses
    model = store.get("smol-q8")
    assert model.info.quantization == "Q8_0" and model.system == "Answer briefly."
    answer = client.generate(model="smol-q8", prompt="The capital of France is", options={"num_predict": 4,
                                                                                          "temperature": 0})
    assert answer.response.strip()

    before = snapshot(store)
    with pytest.raises(ollama.ResponseError) as refused:
        client.create(model="requantized", from_="smollm2", quantize="q4_K_M")
    assert refused.value.status_code == 400 and "already quantized" in refused.value.error
    with pytest.raises(ollama.ResponseError) as unknown:
        client.create(model="unknown", from_="smol-f16", quantize="q9_K")
    assert unknown.value.status_code == 400 and "Q4_K_M" in unknown.value.error
    assert snapshot(store) == before


def test_create_with_quantize_keeps_the_modelfiles_settings(home, store, tmp_path):
    (tmp_path / "Modelfile").write_text('FROM smol-f16\nPARAMETER temperature 0.3\nSYSTEM "Be terse."\n')
    # (The report is the same code as `ember quantize`'s, measured above: left out here for time.)
    proc = ember("create", "terse", "-f", str(tmp_path / "Modelfile"), "--quantize", "Q5_K_M", "--no-report",
                 home=home)
    assert proc.returncode == 0, proc.stderr
    assert "quantizing F16 model to Q5_K_M" in proc.stderr and "created terse:latest" in proc.stderr
    model = store.get("terse")
    assert model.info.quantization == "Q5_K_M" and model.system == "Be terse." and model.params["temperature"] == 0.3


def test_an_importance_matrix_makes_q2_k_closer_to_the_original(store, tmp_path):
    source = store.get("smol-f16").model_path
    text = sample_texts()["en"]
    imatrix = compute_imatrix(source, text[:2500], ctx=128)
    means = imatrix.means()
    assert len(means) == 30 * 7 and all(k.startswith("blk.") for k in means)  # 30 blocks: q, k, v, o, gate, up, down
    assert all(np.isfinite(v).all() and (v >= 0).all() and v.any() for v in means.values())
    assert means["blk.0.attn_q.weight"].shape == (576,) and means["blk.0.ffn_down.weight"].shape == (1536,)
    plain = quantize_file(source, tmp_path / "plain.gguf", "q2_k")
    weighed = quantize_file(source, tmp_path / "weighed.gguf", "q2_k", imatrix=imatrix)
    without, with_it = (q.all for q in compare_many(source, [plain, weighed], {"en": text[2500:]}, ctx=128,
                                                     max_chunks=2, speed=False))
    assert with_it.kld < without.kld and with_it.ppl < without.ppl, (with_it, without)
