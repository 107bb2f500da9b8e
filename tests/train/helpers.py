"""Texts and the `ember` command for the training tests (the fixtures that use them are in conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

from ember.train.data import bundled_corpora

RUSSIAN = """Над рекой стоял старый дом. В доме жила бабушка Анна и её кот Васька.
Каждое утро бабушка пекла пироги с капустой, а кот сидел у окна и смотрел на воробьёв.
— Васька, иди завтракать! — звала бабушка. Кот не спешил: воробьи были интереснее.
Осенью в доме пахло яблоками, зимой — дымом и мёдом. Летом приезжали внуки, Петя и Маша,
и тогда в доме становилось шумно: дети бегали к реке, ловили рыбу и читали книги на крыльце.
"""

# A model small enough to train in seconds on two cores.
TINY = ["--layers", "2", "--dim", "64", "--heads", "4", "--kv-heads", "2", "--ctx", "64", "--batch-size", "8"]


def english_text() -> str:
    """The first 40,000 characters of tinyshakespeare, the corpus that ships with ember."""
    return bundled_corpora()["tinyshakespeare"].read_text(encoding="utf-8")[:40000]


def ember(*args: str, home: Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m ember ARGS` with EMBER_HOME=home and no other EMBER_ settings, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ember {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
