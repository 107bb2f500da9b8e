"""Perplexity as llama.cpp's `llama-perplexity` computes it, so that figures compare with the ones it publishes.

The text is tokenized once (with BOS where the model wants one) and cut into chunks of `ctx` tokens; the last,
partial chunk is dropped. Each chunk is decoded from an empty cache, its first token replaced by BOS (where the model
adds one), and only its second half is scored: the token after each position from ctx/2 to ctx-2, so that every
scored token has at least ctx/2 tokens of context. Perplexity is exp of the mean negative log-likelihood over all
scored tokens; the uncertainty is that of the mean, carried through exp, as llama.cpp reports it.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest


@dataclass
class Perplexity:
    ctx: int
    chunks: int
    scored_tokens: int
    nll: float  # mean negative log-likelihood per scored token, nats
    nll_stderr: float
    running: list[float] = field(default_factory=list)  # perplexity after each chunk, as llama-perplexity prints it

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def ppl_stderr(self) -> float:
        return self.ppl * self.nll_stderr


def scored_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) under each row of logits, in float64 (a float32 log-sum-exp loses digits over 50k tokens)."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
    return rows[np.arange(len(targets)), targets] - log_norm


def perplexity(model_path: Path, text: str, *, ctx: int = 512, threads: int | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> Perplexity:
    """`progress(chunk, chunks, running perplexity)` after each chunk."""
    import llama_cpp

    if ctx < 8 or ctx % 2:
        raise BadRequest(f"--ctx {ctx}: give an even number of tokens, at least 8 (llama.cpp's default is 512)")
    llm = llama_cpp.Llama(str(model_path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                          n_threads=threads, verbose=False)
    try:
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        chunks = len(tokens) // ctx
        if chunks == 0:
            raise BadRequest(f"the text is {len(tokens)} tokens, less than one chunk of --ctx {ctx}: give more "
                             "text or a smaller --ctx")
        first = ctx // 2
        scores: list[np.ndarray] = []
        running: list[float] = []
        for i in range(chunks):
            chunk = tokens[i * ctx:(i + 1) * ctx]
            if add_bos:
                chunk[0] = llm.token_bos()
            llm.reset()
            llm.eval(chunk)
            logits = np.asarray(llm.scores[first:ctx - 1])
            scores.append(-scored_logprobs(logits, np.asarray(chunk[first + 1:ctx])))
            running.append(math.exp(float(np.concatenate(scores).mean())))
            if progress:
                progress(i + 1, chunks, running[-1])
    finally:
        llm.close()
    nll = np.concatenate(scores)
    stderr = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    return Perplexity(ctx, chunks, len(nll), float(nll.mean()), stderr, running)
