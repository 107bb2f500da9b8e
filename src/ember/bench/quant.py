"""`ember bench quant MODEL`: every quantization of one model side by side, on this machine.

For each type: file size; load time, prompt and generation tokens/s and peak memory, each measured in a fresh
process (so that one model's pages and allocator state never flatter the next), rounds alternating the types, best
round kept; and perplexity and KL divergence from the reference on held-out text, all types reading each chunk in
turn with the reference (it reads each chunk once per group of types). Writes quant-NAME.json and quant-NAME.png
(size vs KLD, speed vs KLD) and ends with a recommendation.

The reference is the stored file. A model stored in a float type (F32, F16, BF16) is the true original; a model stored
already quantized (the bundled smollm2 is Q4_1) is requantized with allow_requantize, so each figure is the cost of
the second quantization on top of the first, which is what a user of that file would pay (a dequantized F16 copy of it
would hold exactly the same information, at twice the size).

ONNX Runtime INT8 and OpenVINO are not measured.
"""

import json
import multiprocessing
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ember.core.errors import BadRequest
from ember.quantize.quality import format_kld
from ember.quantize.types import parse_type

DEFAULT_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
PROMPT_TOKENS = 128
GEN_TOKENS = 48
MIN_SECONDS = 1.0
GROUP = 4  # types measured for quality at once: each holds its weights and a chunk's logits


@dataclass
class QuantBenchConfig:
    model: str
    types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))
    out: Path = Path("bench/results")
    texts: dict[str, str] | None = None  # None: ember's English and Russian samples
    ctx: int = 256
    chunks: int | None = 4  # of each text; None: all
    rounds: int = 2  # of the speed measurements
    threads: int | None = None


@dataclass
class Row:
    type: str
    size: int
    bits_per_weight: float
    load_s: float = 0.0
    prompt_tps: float = 0.0
    gen_tps: float = 0.0
    peak_rss: int = 0
    ppl: float = 0.0
    ppl_change: float = 0.0  # relative to the reference
    kld: float = 0.0
    kld_p99: float = 0.0
    same_top: float = 1.0
    reference: bool = False
    per_text: dict[str, dict] = field(default_factory=dict)


def _speed(path: str, prompt: list[int], threads: int) -> dict:
    """In a fresh process: load, read the prompt, generate; the process's peak resident memory. Each step is
    repeated for at least MIN_SECONDS, so that a tiny model's figures are not a scheduler's noise."""
    import resource

    import llama_cpp

    import ember.engines.llamacpp  # noqa: F401  (llama.cpp's chatter into ember's log)

    started = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=PROMPT_TOKENS + GEN_TOKENS + 8, n_batch=PROMPT_TOKENS,
                          n_ubatch=PROMPT_TOKENS, n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - started
    read = generated = 0
    prompt_s = gen_s = 0.0
    while prompt_s < MIN_SECONDS or gen_s < MIN_SECONDS:
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        prompt_s, read = prompt_s + time.perf_counter() - started, read + len(prompt)
        started = time.perf_counter()
        for i in range(GEN_TOKENS):  # one token a step, as generation goes; which token does not change the cost
            llm.eval([prompt[i % len(prompt)]])
        gen_s, generated = gen_s + time.perf_counter() - started, generated + GEN_TOKENS
    llm.close()
    return {"load_s": load, "prompt_tps": read / prompt_s, "gen_tps": generated / gen_s,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _prompt_tokens(path: Path, text: str) -> list[int]:
    from llama_cpp import _internals as internals
    from llama_cpp import llama_model_default_params

    params = llama_model_default_params()
    params.vocab_only = True
    vocab = internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        tokens = vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    finally:
        vocab.close()
    while len(tokens) < PROMPT_TOKENS:
        tokens = tokens + tokens
    return tokens[:PROMPT_TOKENS]


def _recommend(rows: list[Row], ram: int) -> str:
    """The smallest file that costs under 1 % perplexity, and the smallest under 5 %, among those that fit."""
    fits = [r for r in rows if r.peak_rss < ram * 0.8] or rows
    by_size = sorted(fits, key=lambda r: r.size)
    near = next((r for r in by_size if r.ppl_change <= 0.01), None)
    good = next((r for r in by_size if r.ppl_change <= 0.05), None)
    fastest = max(fits, key=lambda r: r.gen_tps)
    parts = []
    if near and near.reference:
        parts.append(f"keep {near.type} as it is stored: no type tried is smaller and within 1 % of its perplexity")
    elif near:
        parts.append(f"{near.type} is the smallest that costs under 1 % perplexity (KLD {format_kld(near.kld)}, "
                     f"{near.size / 1e6:.1f} MB, {near.gen_tps:.0f} tokens/s)")
    if good and good is not near:
        parts.append(f"{good.type} if memory or disk is tight, within 5 % ({good.size / 1e6:.1f} MB, "
                     f"{100 * good.ppl_change:+.1f} % perplexity)")
    if fastest is not near:
        parts.append(f"{fastest.type} generates fastest here ({fastest.gen_tps:.0f} tokens/s, "
                     f"{100 * fastest.ppl_change:+.1f} % perplexity)")
    return "On this machine: " + "; ".join(parts) + "." if parts else "No type stays within 5 % perplexity."


def run(config: QuantBenchConfig, console: Console | None = None) -> dict:
    from ember.config import Settings
    from ember.engines.llamacpp import default_threads
    from ember.quantize.quality import compare_many, sample_texts
    from ember.quantize.quantizer import quantize_file
    from ember.store.store import ModelStore

    console = console or Console(stderr=True, highlight=False)
    threads = config.threads or default_threads()
    types = [parse_type(t, "--types") for t in config.types]
    model = ModelStore(Settings.from_env().models).get(config.model)
    if model.is_speech:
        raise BadRequest(f"{model.name} is a speech-to-text model; the quant bench measures language models")
    source = model.model_path
    have = model.info.quantization.upper()
    requantized = have not in ("F32", "F16", "BF16")
    note = (f"{model.name} is stored as {have}: the reference is that file, and each type is made from it with "
            f"allow_requantize (its cost comes on top of what {have} already cost)" if requantized
            else f"the reference is {model.name} as stored ({have}); every type is made from it")
    console.print(note)
    texts = config.texts if config.texts is not None else sample_texts()
    trained = model.info.context_length or config.ctx
    ctx = min(config.ctx, trained - trained % 2)
    rows = [Row(have, source.stat().st_size, 8 * source.stat().st_size / max(model.info.parameter_count, 1),
                reference=True)]
    config.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ember-quant-bench-") as tmp:
        paths = [source]
        for t in types:
            if t.name == have:
                continue
            started = time.perf_counter()
            path = quantize_file(source, Path(tmp) / f"{t.name}.gguf", t, allow_requantize=requantized,
                                 threads=threads)
            size = path.stat().st_size
            console.print(f"made {t.name}: {size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
            rows.append(Row(t.name, size, 8 * size / max(model.info.parameter_count, 1)))
            paths.append(path)

        prompt = _prompt_tokens(source, next(iter(texts.values())))
        spawn = multiprocessing.get_context("spawn")
        for r in range(config.rounds):
            order = list(range(len(rows)))
            order = order[r % len(order):] + order[:r % len(order)]  # a different type first each round
            for i in order:
                with spawn.Pool(1) as pool:
                    got = pool.apply(_speed, (str(paths[i]), prompt, threads))
                row = rows[i]
                if r == 0 or got["gen_tps"] > row.gen_tps:
                    row.gen_tps = got["gen_tps"]
                row.prompt_tps = max(row.prompt_tps, got["prompt_tps"])
                row.load_s = got["load_s"] if r == 0 else min(row.load_s, got["load_s"])
                row.peak_rss = max(row.peak_rss, got["peak_rss"])
            console.print(f"speed round {r + 1}/{config.rounds} done")

        for start in range(1, len(rows), GROUP):
            group = list(range(start, min(start + GROUP, len(rows))))
            results = compare_many(source, [paths[i] for i in group], texts, ctx=ctx, threads=threads,
                                   type_name=[rows[i].type for i in group], require_all=False,
                                   max_chunks=config.chunks, speed=False)
            for i, q in zip(group, results):
                row, a = rows[i], q.all
                row.ppl, row.ppl_change = a.ppl, a.ppl / a.ppl_ref - 1
                row.kld, row.kld_p99, row.same_top = a.kld, a.kld_p99, a.same_top
                row.per_text = {t.name: {"ppl_ref": t.ppl_ref, "ppl": t.ppl, "kld": t.kld, "same_top": t.same_top,
                                         "tokens": t.tokens} for t in q.texts}
                rows[0].ppl = a.ppl_ref
            console.print(f"quality measured: {', '.join(rows[i].type for i in group)}")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    advice = _recommend(rows, ram)
    result = {
        "model": model.name, "stored_as": have, "note": note, "ctx": ctx,
        "chunks_per_text": config.chunks, "texts": list(texts), "threads": threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                    "ram": ram, "load_average": os.getloadavg()},
        "not_measured": "ONNX Runtime INT8 and OpenVINO", "rows": [asdict(r) for r in rows],
        "recommendation": advice,
    }
    stem = "quant-" + model.name.replace(":", "-").replace("/", "-")
    (config.out / f"{stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    _plot(rows, model.name, config.out / f"{stem}.png")
    result["files"] = [str(config.out / f"{stem}.json"), str(config.out / f"{stem}.png")]
    return result


def table(result: dict) -> Table:
    t = Table("type", "size", "bits/w", "load", "prompt t/s", "gen t/s", "peak RSS", "PPL", "ΔPPL", "KLD",
              "same top", box=None, header_style="bold")
    for r in result["rows"]:
        t.add_row(r["type"] + (" (ref)" if r["reference"] else ""), f"{r['size'] / 1e6:.1f} MB",
                  f"{r['bits_per_weight']:.2f}", f"{r['load_s']:.2f} s", f"{r['prompt_tps']:.0f}",
                  f"{r['gen_tps']:.1f}", f"{r['peak_rss'] / 1e6:.0f} MB", f"{r['ppl']:.3f}",
                  "—" if r["reference"] else f"{100 * r['ppl_change']:+.2f} %",
                  "—" if r["reference"] else format_kld(r["kld"]), f"{100 * r['same_top']:.1f} %")
    return t


def _plot(rows: list[Row], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((left, "size", "file size, MB"), (right, "gen_tps", "generation, tokens/s")):
        for r in rows:
            x = r.size / 1e6 if key == "size" else r.gen_tps
            if r.reference:  # its KLD is 0, off a log scale: a line where it stands
                ax.axvline(x, color="tab:red", linestyle="--", linewidth=1, label=f"{r.type}, the reference")
                continue
            ax.scatter([x], [r.kld], color="tab:blue")
            ax.annotate(r.type, (x, r.kld), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("mean KL divergence from the reference (log)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    left.set_title(f"{name}: size vs quality loss")
    right.set_title("speed vs quality loss (this machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
