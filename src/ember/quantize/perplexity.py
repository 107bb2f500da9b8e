"""Perplexity as llama.cpp's `llama-perplexity` computes it, so that figures compare with the ones it publishes.

The text is tokenized once (with BOS where the model wants one) and cut into chunks of `ctx` tokens; the last,
partial chunk is dropped. Each chunk is decoded from an empty cache, its first token replaced by BOS (where the model
adds one), and only its second half is scored: the token after each position from ctx/2 to ctx-2, so that every
scored token has at least ctx/2 tokens of context. Perplexity is exp of the mean negative log-likelihood over all
scored tokens; the uncertainty is that of the mean, carried through exp, as llama.cpp reports it.
"""

import math
import time
from collections.abc import Callable, Iterator, Sequence
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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Each row's log-probabilities, in float64 (a float32 log-sum-exp loses digits over 50k tokens)."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    rows -= top
    rows -= np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return rows


def scored_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) under each row of logits."""
    return log_softmax(logits)[np.arange(len(targets)), targets]


def open_model(model_path: Path, ctx: int, threads: int | None = None):
    """A llama.cpp model that keeps the logits of every position of a chunk of `ctx` tokens."""
    import llama_cpp

    if ctx < 8 or ctx % 2:
        raise BadRequest(f"--ctx {ctx}: give an even number of tokens, at least 8 (llama.cpp's default is 512)")
    return llama_cpp.Llama(str(model_path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                           n_threads=threads, verbose=False)


def tokenize(llm, text: str, ctx: int, what: str = "the text") -> list[int]:
    """The whole text's tokens (with BOS), refused when it holds less than one chunk."""
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) < ctx:
        raise BadRequest(f"{what} is {len(tokens)} tokens, less than one chunk of --ctx {ctx}: give more text or a "
                         "smaller --ctx")
    return tokens


@dataclass
class ChunkScores:
    logits: np.ndarray  # (ctx/2 - 1, vocab) float32, a view into the model's buffer, valid until its next eval
    targets: np.ndarray  # (ctx/2 - 1,) the token that follows each scored position
    seconds: float  # how long the model took to read the chunk


@dataclass
class Scorer:
    """A model outside llama.cpp (e.g. an ONNX export of it) that scores chunks as llama.cpp's do: `logits(ids)` is
    one row of logits per id, read from an empty cache; `n_vocab` the rows' width."""

    name: str
    logits: Callable[[list[int]], np.ndarray]
    n_vocab: int
    size: int = 0  # bytes on disk, for the report

    def close(self) -> None:
        pass


def scored_chunks(llms: Sequence, tokens: list[int], ctx: int) -> Iterator[list[ChunkScores]]:
    """The chunking every measure here shares: for each chunk, what each model in `llms` predicts over its second
    half. The models read each chunk one after the other, so that a drift in the machine's speed touches them alike,
    and only one chunk's logits per model are ever held (a 262k vocabulary makes all chunks' too many). The first is
    a llama.cpp model (its vocabulary says whether chunks start with BOS); the others may be Scorers, given the same
    token ids."""
    import llama_cpp

    chunks = len(tokens) // ctx
    first = ctx // 2
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llms[0].model)))
    for i in range(chunks):
        chunk = tokens[i * ctx:(i + 1) * ctx]
        if add_bos:
            chunk[0] = llms[0].token_bos()
        targets = np.asarray(chunk[first + 1:ctx])
        out = []
        for llm in llms:
            started = time.perf_counter()
            if isinstance(llm, Scorer):
                logits = llm.logits(list(chunk))[first:ctx - 1, :llms[0].n_vocab()]  # beyond: a padded embedding
            else:
                llm.reset()
                llm.eval(chunk)
                logits = np.asarray(llm.scores[first:ctx - 1])
            out.append(ChunkScores(logits, targets, time.perf_counter() - started))
        yield out


def summarize(nll: np.ndarray, ctx: int, chunks: int, running: list[float] | None = None) -> Perplexity:
    stderr = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    return Perplexity(ctx, chunks, len(nll), float(nll.mean()), stderr, running or [])


def perplexity(model_path: Path, text: str, *, ctx: int = 512, threads: int | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> Perplexity:
    """`progress(chunk, chunks, running perplexity)` after each chunk."""
    llm = open_model(model_path, ctx, threads)
    try:
        tokens = tokenize(llm, text, ctx)
        chunks = len(tokens) // ctx
        scores: list[np.ndarray] = []
        running: list[float] = []
        for i, (scored,) in enumerate(scored_chunks([llm], tokens, ctx)):
            scores.append(-scored_logprobs(scored.logits, scored.targets))
            running.append(math.exp(float(np.concatenate(scores).mean())))
            if progress:
                progress(i + 1, chunks, running[-1])
    finally:
        llm.close()
    return summarize(np.concatenate(scores), ctx, chunks, running)
