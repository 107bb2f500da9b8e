"""The training loop: reproducible, resumable, interruptible, reports; data and option errors say what to do."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ember.core.errors import BadRequest
from ember.train import data as D
from ember.train.model import Llama, ModelConfig
from ember.train.tokenizer import Tokenizer
from ember.train.trainer import CKPT, TrainConfig, lr_at, train
from tests.train.helpers import TINY, ember

SMALL = dict(tokenizer="char", layers=1, dim=32, heads=2, kv_heads=1, ctx=32, batch_size=4, warmup=2)


def history(out):
    return [h[2] for h in json.loads((out / "log.json").read_text())["history"]]


def test_same_seed_same_run(english_file, tmp_path):
    straight = train(TrainConfig(data=[str(english_file)], out_dir=str(tmp_path / "a"), steps=8, **SMALL))
    again = train(TrainConfig(data=[str(english_file)], out_dir=str(tmp_path / "b"), steps=8, **SMALL))
    assert history(straight) == history(again)
    log = json.loads((straight / "log.json").read_text())
    assert log["steps"] == 8 and log["evals"] and log["final_val_loss"] > 0
    png = (straight / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_loss_goes_down(char_run):
    log = json.loads((char_run / "log.json").read_text())
    losses = [h[2] for h in log["history"]]
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.5
    assert log["evals"][-1][2] < log["evals"][0][2]


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(data=[], out_dir="", lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9, 0.01) == pytest.approx(1e-3, rel=1e-3)
    assert lr_at(cfg, 500, 0.5) == pytest.approx(5.5e-4)
    assert lr_at(cfg, 1000, 1.0) == pytest.approx(1e-4)


def test_grouped_query_attention_shares_kv_heads():
    model = Llama(ModelConfig(vocab_size=50, n_layer=1, dim=32, n_head=4, n_kv_head=1, ctx=16))
    full = Llama(ModelConfig(vocab_size=50, n_layer=1, dim=32, n_head=4, n_kv_head=4, ctx=16))
    # One key and one value head of 8 dims instead of four: the K and V projections are a quarter the size.
    assert full.num_params() - model.num_params() == 2 * (4 - 1) * 8 * 32
    logits, loss = model(torch.randint(50, (2, 16)), torch.randint(50, (2, 16)))
    assert logits.shape == (2, 16, 50) and loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)


def test_model_is_causal():
    model = Llama(ModelConfig(vocab_size=50, n_layer=2, dim=32, n_head=4, n_kv_head=2, ctx=16))
    x = torch.randint(50, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 50
    with torch.no_grad():
        assert torch.allclose(model(x)[0][0, :10], model(y)[0][0, :10], atol=1e-6)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_chat_learns_only_the_assistants_replies(kind):
    chats = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Привет! How are you?"},
              {"role": "assistant", "content": "Хорошо, thanks."}, {"role": "user", "content": "And now?"},
              {"role": "assistant", "content": " Still fine.\nReally."}]] * 20
    docs = [D.render_chat(c) for c in chats]
    tok = Tokenizer.train(docs, kind, 300 if kind == "bpe" else None)
    ids = D.tokenize(docs, tok)
    targets = D.assistant_targets(ids, tok)
    learned = tok.decode(ids[targets != -100].tolist())
    assert learned == "Хорошо, thanks.<|im_end|> Still fine.\nReally.<|im_end|>" * 20
    assert torch.equal(targets[targets != -100], ids[targets != -100])
    x, y = D.batch(D.split(ids, 16, targets).train, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and (y == -100).any() and (y != -100).any()
    model = Llama(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, dim=32, n_head=2, n_kv_head=1, ctx=16))
    assert model(x, torch.full_like(y, -100))[1].item() == 0  # nothing to learn is no loss, not NaN


def test_data_errors_say_what_to_do(tmp_path):
    with pytest.raises(BadRequest, match="no file or folder .* bundled corpus: tinyshakespeare"):
        D.read_documents([tmp_path / "missing.txt"])
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(BadRequest, match="bad.jsonl line 2"):
        D.read_documents([tmp_path / "bad.jsonl"])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("# notes\nhello")
    (tmp_path / "sub" / "skip.bin").write_bytes(b"\x00")
    with pytest.raises(BadRequest, match="--chat trains on .jsonl"):
        D.read_documents([tmp_path / "sub"], chat=True)
    assert D.read_documents([tmp_path / "sub"]) == ["# notes\nhello"]
    with pytest.raises(BadRequest, match="too little"):
        D.split(torch.arange(50), ctx=64)


def test_bad_options_are_one_line_errors(tmp_path, english_file):
    proc = ember("train", "--data", str(english_file), "--name", "x", "--heads", "3", "--steps", "1",
                 home=tmp_path, check=False)
    assert proc.returncode == 1 and "must be a multiple of --heads" in proc.stderr
    proc = ember("train", "--data", str(english_file), "--name", "x", home=tmp_path, check=False)
    assert proc.returncode == 1 and "--steps N or --time 10m" in proc.stderr
    proc = ember("train", "--data", str(english_file), "--name", "x", "--time", "ten minutes", home=tmp_path,
                 check=False)
    assert proc.returncode == 1 and "invalid --time" in proc.stderr
    proc = ember("train", "--data", "nosuchcorpus", "--name", "x", "--steps", "1", home=tmp_path, check=False)
    assert proc.returncode == 1 and "nosuchcorpus" in proc.stderr and "tinyshakespeare" in proc.stderr
    assert not (tmp_path / "train" / "x").exists()
    proc = ember("train", "--data", str(english_file), "--name", "x", "--device", "cuda", "--steps", "1",
                 home=tmp_path, check=False)
    if not torch.cuda.is_available():
        assert proc.returncode == 1 and "no CUDA GPU" in proc.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_gives_the_uninterrupted_run(tmp_path, english_file):
    home, out = tmp_path / "home", tmp_path / "run"
    args = ["--data", str(english_file), "--tokenizer", "char", "--steps", "300", "--eval-every", "5", "--layers", "1",
            "--dim", "32", "--heads", "2", "--ctx", "32", "--batch-size", "4"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ember", "train", "--out", str(out), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / CKPT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err  # says how to go on
    stopped_at = json.loads((out / "log.json").read_text())["steps"]
    assert 5 <= stopped_at < 300
    ember("train", "--out", str(out), "--resume", "--steps", "300", home=home)
    ember("train", "--out", str(tmp_path / "straight"), *args, home=home)
    assert history(out) == history(tmp_path / "straight")
    assert not list(out.glob(".tmp-*"))


def test_the_bundled_corpus_trains_by_name(tmp_path):
    """--data tinyshakespeare needs no file: the corpus ships inside the package, and a run keeps its path."""
    corpus = D.data_path("tinyshakespeare")
    assert corpus.is_relative_to(Path(D.__file__).parent)  # package data, nothing outside the installed package
    assert D.read_documents(["tinyshakespeare"])[0].startswith("First Citizen:\nBefore we proceed any further")
    out = tmp_path / "run"
    ember("train", "--data", "tinyshakespeare", "--out", str(out), "--tokenizer", "char", "--time", "3s", *TINY,
          home=tmp_path / "home")
    log = json.loads((out / "log.json").read_text())
    assert log["train_config"]["data"] == [str(corpus)] and log["train_config"]["time_s"] == 3
    assert log["steps"] > 0 and log["evals"]
