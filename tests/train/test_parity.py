"""The exported GGUF computes what PyTorch computes: logits within 1e-3 (f32), the same 32 greedy tokens."""

import llama_cpp
import numpy as np
import pytest
import torch

from ember.train.export import export
from ember.train.trainer import load_model

PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?"


@pytest.fixture(scope="module")
def f32(char_run, tmp_path_factory):
    path = export(char_run, tmp_path_factory.mktemp("gguf") / "m-f32.gguf", "f32")
    return llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False)


def test_logits_match_llama_cpp(char_run, f32):
    model, tok, _ = load_model(char_run)
    ids = tok.encode(PROMPT)
    assert f32.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids
    f32.reset()
    f32.eval(ids)
    theirs = np.array(f32.scores[:len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].numpy()
    assert ours.std() > 0.5  # a trained model with peaked distributions, not near-uniform noise
    assert np.abs(ours - theirs).max() <= 1e-3


def test_greedy_generation_matches(char_run, f32):
    model, tok, _ = load_model(char_run)
    ids = tok.encode(PROMPT)
    ours = list(model.generate(torch.tensor([ids]), 32, temperature=0))
    f32.reset()
    theirs, tokens = [], list(ids)
    f32.eval(tokens)
    for _ in range(32):
        nxt = int(np.argmax(f32.scores[f32.n_tokens - 1]))
        theirs.append(nxt)
        f32.eval([nxt])
    assert ours == theirs


@pytest.mark.parametrize("fmt", ["f16", "q8_0"])
def test_smaller_formats_load_and_agree(char_run, tmp_path, fmt):
    model, tok, _ = load_model(char_run)
    path = export(char_run, tmp_path / f"m-{fmt}.gguf", fmt)
    assert not [p for p in tmp_path.iterdir() if p != path]  # no intermediate or partial files left
    llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False)
    ids = tok.encode(PROMPT)
    llm.eval(ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].numpy()
    theirs = np.array(llm.scores[:len(ids)])
    assert np.abs(ours - theirs).max() < (0.05 if fmt == "f16" else 0.5)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.9
