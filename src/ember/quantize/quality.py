"""What quantization cost: the new model against the one it was made from, on held-out text.

Measured as llama.cpp's `llama-perplexity --kl-divergence` measures it (same chunks, second half of each scored): the
perplexity of both, the mean KL divergence of the new model's next-token distribution from the original's, and how
often both put the same token first. Both models read every chunk in turn, so nothing but one chunk's logits is ever
held, and the time each takes to read the chunks gives the prompt speed of both under the same conditions;
generation speed is timed the same way, token by token, alternating.
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest
from ember.quantize.perplexity import Scorer, log_softmax, open_model, scored_chunks, summarize

ROWS = 32  # rows of logits turned into float64 at once: 32 x 262k x 8 bytes = 64 MB at most
GEN_TOKENS = 32
SAMPLES = ("en", "ru")


def sample_texts() -> dict[str, str]:
    """The held-out texts bundled with ember (English and Russian, written for it, public domain)."""
    folder = resources.files("ember.quantize") / "samples"
    return {lang: (folder / f"{lang}.txt").read_text(encoding="utf-8") for lang in SAMPLES}


@dataclass
class TextQuality:
    """One text's figures."""

    name: str
    chunks: int
    tokens: int  # scored tokens
    ppl_ref: float
    ppl: float
    kld: float  # mean KL(original || new), nats per token
    kld_stderr: float
    kld_p99: float
    same_top: float  # fraction of positions where both models' most likely token is the same


@dataclass
class Quality:
    reference: str  # what the new model is compared with (a name, or a file)
    candidate: str
    type: str
    ctx: int
    texts: list[TextQuality] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # texts too short for one chunk in this model's tokens
    size_ref: int = 0
    size: int = 0
    prompt_tps_ref: float = 0.0
    prompt_tps: float = 0.0
    gen_tps_ref: float = 0.0
    gen_tps: float = 0.0
    all: TextQuality | None = None  # every scored token together

    @property
    def smaller(self) -> float:
        return self.size_ref / self.size if self.size else 0.0

    @property
    def faster(self) -> float:
        return self.gen_tps / self.gen_tps_ref if self.gen_tps_ref else 0.0

    def summary(self) -> str:
        """One line, e.g. "Q4_K_M: 3.1× smaller, 2.0× faster, KLD 0.031, same top token 92 %"."""
        a = self.all
        size = f"{self.smaller:.1f}× smaller" if self.smaller >= 1 else f"{1 / self.smaller:.1f}× larger"
        speed = (f"{self.faster:.1f}× faster" if self.faster >= 1 else f"{1 / self.faster:.1f}× slower"
                 ) if self.faster else "speed not measured"
        return (f"{self.type}: {size}, {speed}, KLD {format_kld(a.kld)}, same top token "
                f"{100 * a.same_top:.0f} %, PPL {a.ppl_ref:.2f} → {a.ppl:.2f} ({100 * (a.ppl / a.ppl_ref - 1):+.1f} %)")

    def rows(self) -> list[list[str]]:
        """A small table: per text, PPL before and after, KLD, how often the top token is the same."""
        out = [[t.name, f"{t.ppl_ref:.3f}", f"{t.ppl:.3f}", f"{100 * (t.ppl / t.ppl_ref - 1):+.2f} %",
                f"{format_kld(t.kld)}±{format_kld(t.kld_stderr)}", format_kld(t.kld_p99), f"{100 * t.same_top:.1f} %"]
               for t in self.texts]
        return out

    HEADER = ("text", "PPL before", "PPL after", "change", "KLD mean", "KLD p99", "same top")

    def speed_rows(self) -> list[list[str]]:
        return [["file size", _mb(self.size_ref), _mb(self.size), f"{self.smaller:.2f}× smaller"],
                ["prompt tokens/s", f"{self.prompt_tps_ref:.0f}", f"{self.prompt_tps:.0f}",
                 f"{self.prompt_tps / self.prompt_tps_ref:.2f}×" if self.prompt_tps_ref else ""],
                ["generation tokens/s", f"{self.gen_tps_ref:.1f}", f"{self.gen_tps:.1f}", f"{self.faster:.2f}×"]]

    def to_json(self) -> dict:
        return {**asdict(self), "smaller": self.smaller, "faster": self.faster, "summary": self.summary()}

    def save(self, path: Path) -> Path:
        from ember.fsutil import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        return path


def format_kld(x: float) -> str:
    """Three decimals, as llama.cpp prints KLD, unless that would read as zero."""
    return f"{x:.3f}" if x >= 0.001 or x == 0 else f"{x:.1e}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _Accumulator:
    def __init__(self):
        self.nll_ref: list[np.ndarray] = []
        self.nll: list[np.ndarray] = []
        self.kld: list[np.ndarray] = []
        self.same: list[np.ndarray] = []
        self.chunks = 0

    def add(self, p_log: np.ndarray, q_log: np.ndarray, want: np.ndarray) -> None:
        """Log-probabilities of the original (p) and the new model (q) for some positions, and the true tokens."""
        at = np.arange(len(want))
        self.nll_ref.append(-p_log[at, want])
        self.nll.append(-q_log[at, want])
        # KL(P || Q) = Σ p (log p - log q); a tiny negative from rounding is clipped
        self.kld.append(np.maximum((np.exp(p_log) * (p_log - q_log)).sum(axis=1), 0.0))
        self.same.append(p_log.argmax(axis=1) == q_log.argmax(axis=1))

    def extend(self, other: "_Accumulator") -> None:
        for name in ("nll_ref", "nll", "kld", "same"):
            getattr(self, name).extend(getattr(other, name))
        self.chunks += other.chunks

    def result(self, name: str, ctx: int) -> TextQuality:
        kld = np.concatenate(self.kld)
        ref = summarize(np.concatenate(self.nll_ref), ctx, self.chunks)
        new = summarize(np.concatenate(self.nll), ctx, self.chunks)
        stderr = float(kld.std(ddof=1) / math.sqrt(len(kld))) if len(kld) > 1 else 0.0
        return TextQuality(name, self.chunks, len(kld), ref.ppl, new.ppl, float(kld.mean()), stderr,
                           float(np.percentile(kld, 99)), float(np.concatenate(self.same).mean()))


def _generation_tps(llms: list, prompt: list[int], rounds: int = 2) -> list[float]:
    """Tokens/s of one-token steps after a short prompt, best of `rounds`, the models alternating."""
    best = [0.0] * len(llms)
    steps = min(GEN_TOKENS, llms[0].n_ctx() - len(prompt) - 1)
    for _ in range(rounds):
        for i, llm in enumerate(llms):
            llm.reset()
            llm.eval(prompt)
            token = int(np.argmax(llm.scores[len(prompt) - 1]))
            started = time.perf_counter()
            for _step in range(steps):
                llm.eval([token])
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            best[i] = max(best[i], steps / (time.perf_counter() - started))
    return best


def compare(reference: Path, candidate: Path, texts: dict[str, str], **kwargs) -> Quality:
    """`candidate` against `reference`; see compare_many."""
    return compare_many(reference, [candidate], texts, **kwargs)[0]


def compare_many(reference: Path, candidates: list[Path | Scorer], texts: dict[str, str], *, ctx: int = 256,
                 threads: int | None = None, type_name: str | list[str] = "", reference_name: str = "",
                 candidate_name: str | list[str] = "", require_all: bool = True, max_chunks: int | None = None,
                 speed: bool = True, progress: Callable[[int, int], None] | None = None) -> list[Quality]:
    """Measure each candidate against `reference` on each text (its first `max_chunks` chunks, if given), all of
    them reading each chunk in turn, so that the reference reads it once. With require_all False, a text shorter than
    one chunk (e.g. Russian for a model that knows only English letters) is skipped rather than refused. With speed,
    generation is timed too (llama.cpp candidates only). A candidate may be a Scorer: a model outside llama.cpp,
    given the same token ids. `progress(chunk, chunks)` after each chunk; it may raise to stop."""
    if speed and any(isinstance(c, Scorer) for c in candidates):
        raise ValueError("generation speed is timed for llama.cpp models only")
    types = type_name if isinstance(type_name, list) else [type_name]
    names = candidate_name if isinstance(candidate_name, list) else [candidate_name]
    results = [Quality(reference_name or reference.name, names[i] if i < len(names) and names[i] else c.name,
                       types[i] if i < len(types) else "", ctx, size_ref=reference.stat().st_size,
                       size=c.size if isinstance(c, Scorer) else c.stat().st_size) for i, c in enumerate(candidates)]
    llms = [open_model(reference, ctx, threads)]
    try:
        for c in candidates:
            llms.append(c if isinstance(c, Scorer) else open_model(c, ctx, threads))
            n_vocab = c.n_vocab if isinstance(c, Scorer) else llms[-1].n_vocab()
            # A Scorer's rows may be wider (an embedding padded to a round size): scored_chunks cuts them.
            if n_vocab != llms[0].n_vocab() and not (isinstance(c, Scorer) and n_vocab > llms[0].n_vocab()):
                raise BadRequest(f"{c.name} has another vocabulary ({n_vocab} tokens, not "
                                 f"{llms[0].n_vocab()}); KL divergence compares models of one vocabulary")
        tokenized, skipped = {}, []
        for name, text in texts.items():
            tokens = llms[0].tokenize(text.encode("utf-8"), add_bos=True, special=False)
            if len(tokens) >= ctx:
                tokenized[name] = tokens[:max_chunks * ctx] if max_chunks else tokens
            elif require_all:
                raise BadRequest(f"{name} is {len(tokens)} tokens, less than one chunk of {ctx}: give more text or "
                                 "a smaller --ctx")
            else:
                skipped.append(name)
        if not tokenized:
            raise BadRequest(f"no text holds one chunk of {ctx} tokens; give more text or a smaller --ctx")
        total = sum(len(t) // ctx for t in tokenized.values())
        done, read, seconds = 0, 0, [0.0] * len(llms)
        everything = [_Accumulator() for _ in candidates]
        for name, tokens in tokenized.items():
            per_text = [_Accumulator() for _ in candidates]
            for scored in scored_chunks(llms, tokens, ctx):
                ref, targets = scored[0], scored[0].targets
                for start in range(0, len(targets), ROWS):
                    rows = slice(start, start + ROWS)
                    p_log = log_softmax(ref.logits[rows])
                    for acc, new in zip(per_text, scored[1:]):
                        acc.add(p_log, log_softmax(new.logits[rows]), targets[rows])
                for acc in per_text:
                    acc.chunks += 1
                read += ctx
                seconds = [s + c.seconds for s, c in zip(seconds, scored)]
                done += 1
                if progress:
                    progress(done, total)
            for q, acc, whole in zip(results, per_text, everything):
                q.texts.append(acc.result(name, ctx))
                whole.extend(acc)
        gen = _generation_tps(llms, next(iter(tokenized.values()))[:min(32, ctx // 2)]) if speed else []
        for i, (q, whole) in enumerate(zip(results, everything)):
            q.all, q.skipped = whole.result("all", ctx), skipped
            q.prompt_tps_ref, q.prompt_tps = read / seconds[0], read / seconds[i + 1]
            if gen:
                q.gen_tps_ref, q.gen_tps = gen[0], gen[i + 1]
    finally:
        for llm in llms:
            llm.close()
    return results
