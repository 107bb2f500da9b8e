"""Trained models go into the store and are served like any other: Russian BPE, English char, and --chat."""

import json

import httpx
import llama_cpp
import pytest

from ember.store.store import ModelStore
from tests.helpers import Server
from tests.train.helpers import TINY, ember


@pytest.fixture(scope="module")
def home(tmp_path_factory, russian_file, english_file):
    home = tmp_path_factory.mktemp("train-home")
    ember("train", "--data", str(russian_file), "--name", "skazka", "--vocab", "400", "--steps", "80", "--lr", "1e-2",
          *TINY, home=home)
    chats = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    turns = [("Привет!", "Здравствуй, чем помочь?"), ("How are you?", "Fine, thank you."),
             ("Как дела?", "Хорошо, спасибо.")]
    chats.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                        {"role": "assistant", "content": a}]}, ensure_ascii=False)
                               for q, a in turns * 40), encoding="utf-8")
    ember("train", "--data", str(chats), "--name", "helper", "--chat", "--vocab", "400", "--steps", "60",
          "--lr", "1e-2", "--format", "q8_0", *TINY, home=home)
    return home


def test_models_are_in_the_store(home):
    names = {m.name for m in ModelStore(home / "models").list()}
    assert {"skazka:latest", "helper:latest"} <= names
    assert (home / "train" / "skazka" / "loss.png").is_file()


def test_ember_run_and_sample_speak_russian(home):
    out = ember("run", "skazka", "Бабушка", home=home).stdout
    assert sum("а" <= c <= "я" for c in out.lower()) > 10, out
    sampled = ember("sample", str(home / "train" / "skazka"), "Кот", "--tokens", "30", "--seed", "1", home=home)
    assert sampled.stdout.startswith("Кот") and len(sampled.stdout) > 20


def test_both_apis_serve_trained_models(home, tmp_path):
    server = Server(home, tmp_path / "server.log").start()
    try:
        r = httpx.post(f"{server.url}/api/generate", json={"model": "skazka", "prompt": "Над рекой", "raw": True,
                                                           "stream": False, "options": {"num_predict": 20}},
                       timeout=60).json()
        assert r["done"] and r["eval_count"] > 0 and r["response"]
        r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": "skazka", "max_tokens": 20, "messages": [{"role": "user", "content": "Кот"}]}).json()
        assert r["choices"][0]["message"]["content"]
        r = httpx.post(f"{server.url}/api/chat", timeout=60, json={
            "model": "helper", "stream": False, "options": {"temperature": 0, "num_predict": 40},
            "messages": [{"role": "user", "content": "Привет!"}]}).json()
        assert r["done"] and r["message"]["role"] == "assistant"
        assert "<|im_start|>" not in r["message"]["content"]
    finally:
        server.stop()


def test_chat_gguf_carries_its_template_and_special_tokens(home):
    path = next((home / "train" / "helper").glob("*.gguf"))
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
    ids = llm.tokenize(b"<|im_start|>user\nhi<|im_end|>", add_bos=False, special=True)
    assert llm.detokenize([ids[0]], special=True) == b"<|im_start|>"
    assert llm.token_eos() == ids[-1]
