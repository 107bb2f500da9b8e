"""Perplexity the llama-perplexity way, on the bundled model: sane figures, and clear refusals."""

import random

import numpy as np
import pytest

from ember.core.errors import BadRequest
from ember.quantize.perplexity import perplexity, scored_logprobs
from ember.store.store import ModelStore

TEXT = ("The weather station on the northern ridge recorded heavy snow during the night. Our team will repair the "
        "antenna next week, after the supply flight arrives. Please send the maintenance report to the engineering "
        "office before Friday, together with the list of tools that were used. ") * 6


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return ModelStore(tmp_path_factory.mktemp("ppl") / "models").pull("smollm2").model_path


def test_log_softmax_in_float64():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    expected = [3 - np.log(np.exp([1, 2, 3]).sum()), -np.log(3)]
    assert np.allclose(scored_logprobs(logits, np.array([2, 0])), expected)


def test_english_is_far_less_surprising_than_shuffled_words(smollm2):
    words = TEXT.split()
    random.Random(7).shuffle(words)
    ordered = perplexity(smollm2, TEXT, ctx=64)
    shuffled = perplexity(smollm2, " ".join(words), ctx=64)
    assert ordered.chunks >= 4 and ordered.scored_tokens == ordered.chunks * 31  # ctx/2 - 1 a chunk
    assert len(ordered.running) == ordered.chunks and ordered.running[-1] == pytest.approx(ordered.ppl)
    assert 1 < ordered.ppl < 50 and shuffled.ppl > 3 * ordered.ppl, (ordered.ppl, shuffled.ppl)
    assert ordered.ppl_stderr > 0


def test_refusals(smollm2):
    with pytest.raises(BadRequest, match="less than one chunk"):
        perplexity(smollm2, "Too short.", ctx=512)
    with pytest.raises(BadRequest, match="even number"):
        perplexity(smollm2, TEXT, ctx=63)
