"""`ember tune`: LoRA on a stored model, written for llama.cpp as an adapter and as a merged GGUF.

A small random Llama (made by transformers, converted by `ember convert`) learns two replies in seconds; llama.cpp
must then compute what peft computes (the adapter's rows in llama.cpp's rotary order), the adapter and the merged
model must answer alike through /api/chat, and a run stopped by Ctrl-C must go on where it stopped.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from ember.core.errors import BadRequest, NotFound
from ember.store.store import ModelStore
from ember.train.convert_llama import publish
from ember.tune import adapter as A
from ember.tune.base import chat_format, check, load_torch
from ember.tune.data import read_chats
from ember.tune.lora import TuneConfig
from ember.tune.run import run
from tests.quantize.test_convert import make_model

CHATS = [
    {"messages": [{"role": "user", "content": "What is the code of the blue door?"},
                  {"role": "assistant", "content": "The blue door code is 4721."}]},
    {"messages": [{"role": "user", "content": "Кто живёт в доме?"},
                  {"role": "assistant", "content": "В доме живёт кот Васька."}]},
]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny(tmp_path, home) -> str:
    """A random Llama with a ChatML template, converted to F32 GGUF and stored as `tiny`."""
    publish(make_model(tmp_path / "hf", seed=3), "tiny", "f32")
    return "tiny"


@pytest.fixture
def chats(tmp_path) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in CHATS) + "\n", encoding="utf-8")
    return path


def _store() -> ModelStore:
    from ember.config import Settings

    return ModelStore(Settings.from_env().models)


def _cfg(tmp_path, base: str, data: Path, **kw) -> TuneConfig:
    return TuneConfig(base=base, data=str(data), **{"out_dir": str(tmp_path / "run"), "val_fraction": 0.0,
                                                    "steps": 40, "lr": 2e-2, "batch_size": 2, **kw})


def test_reply_tokens_are_the_only_ones_learned(tiny, chats):
    fmt = chat_format(check(_store().get(tiny)))
    example = fmt.example(read_chats(chats)[0])
    learned = [t for t in example.targets if t != -100]
    text = _store().get(tiny)
    vocab = llama_cpp.Llama(str(text.model_path), vocab_only=True, verbose=False)
    assert vocab.detokenize(learned, special=True).decode() == "The blue door code is 4721.<|im_end|>\n"
    # Each target is the next input token: position p teaches ids[p + 1].
    assert all(t == example.ids[p + 1] for p, t in enumerate(example.targets) if t != -100)


def _llama_logits(model_path: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    llm = llama_cpp.Llama(str(model_path), n_ctx=128, logits_all=True, verbose=False, lora_path=str(adapter)
                          if adapter else None, type_k=0, type_v=0)  # an f32 cache: differences are the weights'
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)])
    finally:
        llm.close()


def test_llama_cpp_computes_what_peft_computes(tiny, chats, tmp_path):
    """The adapter over the base and the merged GGUF give peft's logits (q/k rows permuted right, scale right)."""
    import torch

    store = _store()
    cfg = _cfg(tmp_path, tiny, chats, steps=5, alpha=64.0)
    run(cfg, "tiny-lora", store)
    base = check(store.get(tiny))
    peft_model = _reload(cfg, base)
    ids = chat_format(base).example(read_chats(chats)[1]).ids
    with torch.no_grad():
        expected = peft_model(torch.tensor([ids])).logits[0].numpy()
    served = store.get("tiny-lora")
    assert len(served.adapter_paths) == 1
    with_adapter = _llama_logits(served.model_path, ids, served.adapter_paths[0])
    without = _llama_logits(served.model_path, ids)
    assert np.abs(without - expected).max() > 0.1  # the adapter changes something
    assert np.abs(with_adapter - expected).max() < 1e-3
    merged = A.write_merged(tmp_path / "merged.gguf", served.model_path,
                            A.loras(peft_model, base.architecture, base.permuted_qk), "merged")
    assert np.abs(_llama_logits(merged, ids) - expected).max() < 2e-2  # F16 matrices


def _reload(cfg: TuneConfig, base):
    """The tuned peft model, from the run's checkpoint, as `ember tune --resume` rebuilds it."""
    from peft import set_peft_model_state_dict

    from ember.tune.lora import attach_lora, load_checkpoint

    model = attach_lora(load_torch(base), cfg)
    set_peft_model_state_dict(model, load_checkpoint(Path(cfg.out_dir))["lora"])
    return model.eval()


def _ask(client, model: str, question: str) -> str:
    return client.chat(model=model, messages=[{"role": "user", "content": question}],
                       options={"temperature": 0, "num_predict": 48}).message.content


def test_adapter_and_merged_answer_alike_through_api_chat(tiny, chats, tmp_path, home, make_server):
    import ollama

    store = _store()
    run(_cfg(tmp_path, tiny, chats), "tiny-adapter", store)
    # The finished run written again, merged, with no new budget: not one more step.
    run(_cfg(tmp_path, tiny, chats, steps=0), "tiny-merged", store, merge=True, resume=True)
    assert json.loads((tmp_path / "run" / "log.json").read_text())["steps"] == 40
    merged = store.get("tiny-merged")
    assert not merged.adapter_paths and merged.info.quantization == "F16"
    client = ollama.Client(host=make_server(home).url)
    for chat in CHATS:
        question, reply = chat["messages"][0]["content"], chat["messages"][1]["content"]
        assert _ask(client, "tiny-adapter", question) == reply
        assert _ask(client, "tiny-merged", question) == reply
        assert _ask(client, tiny, question) != reply


def test_ctrl_c_saves_and_resume_finishes(tiny, chats, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ember", "tune", tiny, "--data", str(chats), "--name", "tiny-cc", "--steps",
               "100000", "--lr", "1e-2", "--batch-size", "2", "--val", "0", "--out", str(out)]
    proc = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out / "tune.pt").exists() and time.monotonic() < deadline:  # the first tenth is saved: under way
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    with pytest.raises(NotFound):  # nothing is created from a stopped run
        _store().get("tiny-cc")
    log = json.loads((out / "log.json").read_text())
    stopped_at = log["steps"]
    assert 0 < stopped_at < 100000
    done = subprocess.run(command[:9] + ["--steps", str(stopped_at + 3), "--out", str(out), "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "log.json").read_text())["steps"] == stopped_at + 3
    assert _store().get("tiny-cc").adapter_paths


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1: not JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "expected"),
])
def test_bad_data_is_named(tiny, tmp_path, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(BadRequest, match=message):
        run(_cfg(tmp_path, tiny, data), "never", _store())
    assert not (tmp_path / "run" / "tune.pt").exists()


def test_refusals_through_the_cli(tiny, chats, tmp_path):
    def ember_tune(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ember", "tune", *args], capture_output=True, text=True,
                              timeout=120)

    for args, message in [
        (["nope", "--data", str(chats), "--name", "x"], "nope"),
        ([tiny, "--data", str(tmp_path / "missing.jsonl"), "--name", "x"], "no file at"),
        ([tiny, "--data", str(chats), "--name", "x", "--rank", "0"], "--rank 0"),
        ([tiny, "--data", str(chats), "--name", "x", "--targets", "wq"], "q_proj"),
    ]:
        result = ember_tune(*args)
        assert result.returncode == 1, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
