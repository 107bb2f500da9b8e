"""Fixtures shared by the training tests: small texts on disk and one tiny trained checkpoint."""

from pathlib import Path

import pytest

from tests.train.helpers import RUSSIAN, english_text


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
