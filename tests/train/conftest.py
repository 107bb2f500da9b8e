"""Small texts and one tiny trained checkpoint shared by the training tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"

RUSSIAN = """Над рекой стоял старый дом. В доме жила бабушка Анна и её кот Васька.
Каждое утро бабушка пекла пироги с капустой, а кот сидел у окна и смотрел на воробьёв.
— Васька, иди завтракать! — звала бабушка. Кот не спешил: воробьи были интереснее.
Осенью в доме пахло яблоками, зимой — дымом и мёдом. Летом приезжали внуки, Петя и Маша,
и тогда в доме становилось шумно: дети бегали к реке, ловили рыбу и читали книги на крыльце.
"""


def english_text() -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")[:40000]
    return ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n") * 400


TINY = ["--layers", "2", "--dim", "64", "--heads", "4", "--kv-heads", "2", "--ctx", "64", "--batch-size", "8"]


def ember(*args: str, home: Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ember {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def english_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("en") / "shakespeare.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def russian_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ru") / "сказка.txt"
    path.write_text(RUSSIAN * 30, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def char_run(tmp_path_factory, english_file) -> Path:
    """A tiny char-level model trained for 60 steps: peaked enough that greedy decoding is well defined."""
    from ember.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("char-run")
    train(TrainConfig(data=[str(english_file)], out_dir=str(out), tokenizer="char", layers=2, dim=64, heads=4,
                      kv_heads=2, ctx=64, batch_size=8, steps=60, lr=1e-2, warmup=10))
    return out
