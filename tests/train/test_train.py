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
from ember.train.trainer import CKPT, LADDER, TrainConfig, describe, lr_at, settle, train
from tests.train.helpers import ember

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


def test_warmup_is_a_share_of_the_run_when_not_given():
    timed = TrainConfig(data=[], out_dir="", lr=1e-3, time_s=60)  # warmup None: the first tenth of the time
    assert lr_at(timed, 0, 0.0) < 1e-4
    assert lr_at(timed, 7, 0.05) == pytest.approx(5e-4)
    assert lr_at(timed, 30, 0.11) == pytest.approx(1e-3, rel=0.03)
    counted = TrainConfig(data=[], out_dir="", lr=1e-3, steps=2000)  # of the steps: 200 of 2000, reproducibly
    assert lr_at(counted, 99, 99 / 2000) == pytest.approx(5e-4)
    assert lr_at(counted, 198, 198 / 2000) == pytest.approx(0.995e-3)
    assert lr_at(counted, 199, 199 / 2000) == pytest.approx(1e-3, rel=0.03)


def speeds(rates: dict):
    """A fake `measure` for settle: tokens per second by (layers, dim), and the shapes it was asked to time."""
    asked = []

    def measure(c):
        asked.append((c.layers, c.dim))
        return rates[(c.layers, c.dim)]
    return measure, asked


RATES = {(2, 64): 20000, (4, 128): 9000, (5, 160): 7500, (6, 192): 5500, (8, 256): 3000, (8, 384): 1500, (12, 512): 500}


@pytest.mark.parametrize("seconds, shape", [(20, (2, 64)), (40, (4, 128)), (82, (4, 128)), (300, (5, 160)),
                                            (900, (6, 192))])
def test_a_time_budget_picks_the_shape_it_can_train(seconds, shape):
    measure, asked = speeds(RATES)
    cfg, chosen = settle(TrainConfig(data=[], out_dir="", time_s=seconds), 65, 1_000_000, measure=measure)
    assert (cfg.layers, cfg.dim) == shape and cfg.heads == cfg.dim // 32
    rung = next(r for r in LADDER if (r.layers, r.dim) == shape)
    assert (cfg.ctx, cfg.batch_size, cfg.lr, cfg.warmup) == (rung.ctx, rung.batch, rung.lr, None)
    assert chosen["layers"] == shape[0] and chosen["warmup"] == "10%" and chosen["parameters"] > 0
    # Rungs are timed from the bottom up to one past the answer at most, and none when the budget is short.
    timed = [(r.layers, r.dim) for r in LADDER if (r.layers, r.dim) in asked]
    assert timed == asked and len(timed) <= [(r.layers, r.dim) for r in LADDER].index(shape) + 2
    assert seconds >= 30 or not asked
    # 1.0 M training characters hold at most a 3 M-parameter model, however long the budget.
    assert (8, 256) not in asked


def test_a_huge_budget_on_huge_data_climbs_higher():
    measure, _ = speeds(RATES)
    cfg, _ = settle(TrainConfig(data=[], out_dir="", time_s=3600), 65, 10**9, measure=measure)
    assert (cfg.layers, cfg.dim) == (8, 256)


def test_steps_alone_pick_by_the_tokens_they_process_without_timing():
    def never(c):
        raise AssertionError("a --steps run is chosen from its step count, not from the clock")
    short, _ = settle(TrainConfig(data=[], out_dir="", steps=50), 65, 1_000_000, measure=never)
    long, chosen = settle(TrainConfig(data=[], out_dir="", steps=2000), 65, 1_000_000, measure=never)
    small_data, _ = settle(TrainConfig(data=[], out_dir="", steps=2000), 65, 36_000, measure=never)
    assert (short.layers, short.dim) == (2, 64)
    assert (long.layers, long.dim) == (6, 192) and chosen["budget_tokens"] == 2000 * 32 * 128
    assert (small_data.layers, small_data.dim) == (2, 64)


def test_what_the_user_sets_wins():
    def measure(c):
        return 10_000  # 9 M tokens in 15 minutes: enough for the 8-layer rungs, not the 12

    cfg, chosen = settle(TrainConfig(data=[], out_dir="", time_s=900, dim=96, batch_size=8, lr=1e-3, warmup=7,
                                     ctx=200), 65, 1_000_000, measure=measure)
    assert (cfg.dim, cfg.batch_size, cfg.lr, cfg.warmup, cfg.ctx) == (96, 8, 1e-3, 7, 200)
    assert cfg.heads == 3 and cfg.layers == 8  # the rest still follows the budget
    named, _ = settle(TrainConfig(data=[], out_dir="", steps=50, size="tiny"), 65, 1_000_000)
    assert (named.model_config(65).n_layer, named.model_config(65).dim, named.batch_size) == (4, 128, 32)
    line = describe(cfg, chosen, 1_100_000)
    assert line.startswith("--time 15m on 1.1 M tokens: 8 layers × 96 dims (") and "batch 8 × 200" in line
    assert "peak lr 1e-3, warmup 7 steps" in line


def test_model_config_counts_parameters_as_the_model_does():
    for shape in [dict(n_layer=2, dim=64, n_head=2, n_kv_head=2), dict(n_layer=3, dim=96, n_head=6, n_kv_head=2)]:
        mcfg = ModelConfig(vocab_size=70, ctx=32, **shape)
        assert mcfg.num_params() == Llama(mcfg).num_params()


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


def test_the_bundled_corpus_trains_by_name_with_settings_chosen_for_the_budget(tmp_path):
    """--data tinyshakespeare needs no file: the corpus ships inside the package, and a run keeps its path. With
    only --time, the run says what it chose and why, logs it, and leaves its warmup long before the end."""
    corpus = D.data_path("tinyshakespeare")
    assert corpus.is_relative_to(Path(D.__file__).parent)  # package data, nothing outside the installed package
    assert D.read_documents(["tinyshakespeare"])[0].startswith("First Citizen:\nBefore we proceed any further")
    out = tmp_path / "run"
    proc = ember("train", "--data", "tinyshakespeare", "--out", str(out), "--tokenizer", "char", "--time", "4s",
                 home=tmp_path / "home")
    log = json.loads((out / "log.json").read_text())
    assert log["train_config"]["data"] == [str(corpus)] and log["train_config"]["time_s"] == 4
    assert log["steps"] > 0 and log["evals"]
    # Four seconds buy the bottom rung; its settings are printed first and kept in log.json.
    summary = log["chosen"]["summary"]
    assert summary.startswith("--time 4s on 1.1 M characters: 2 layers × 64 dims (") and "warmup 10%" in summary
    assert summary in " ".join(proc.stderr.split())  # printed (rich may wrap the line)
    assert log["model_config"]["n_layer"] == log["chosen"]["layers"] == 2
    lrs = [h[3] for h in log["history"]]
    peak = log["chosen"]["lr"]
    assert max(lrs) > 0.9 * peak and lrs[-1] < max(lrs)  # warmed up, then decayed
