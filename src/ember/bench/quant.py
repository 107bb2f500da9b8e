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

Where the model can be read into PyTorch (the Llama family and Gemma 3, as `ember tune` reads them), the same is
measured for ONNX Runtime and OpenVINO through their own Python packages (see export.py): the FP32 ONNX export, ONNX
Runtime's INT8, and OpenVINO's INT8 and INT4, reading the token ids llama.cpp scores and generating with their KV
cache. Where it cannot (a package missing, another architecture), one line says so and the llama.cpp rows are
measured alone.
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

from ember.bench import export
from ember.core.errors import BadRequest
from ember.quantize.quality import Quality, format_kld
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
    runtimes: list[str] = field(default_factory=lambda: list(export.RUNTIMES))  # gguf: the llama.cpp types


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
    runtime: str = "llama.cpp"  # or "onnxruntime", "openvino"
    per_text: dict[str, dict] = field(default_factory=dict)

    def measured(self, q: Quality) -> None:
        a = q.all
        self.ppl, self.ppl_change = a.ppl, a.ppl / a.ppl_ref - 1
        self.kld, self.kld_p99, self.same_top = a.kld, a.kld_p99, a.same_top
        self.per_text = {t.name: {"ppl_ref": t.ppl_ref, "ppl": t.ppl, "kld": t.kld, "same_top": t.same_top,
                                  "tokens": t.tokens} for t in q.texts}


def _speed(path: str, prompt: list[int], threads: int) -> dict:
    """In a fresh process: load, read the prompt, generate; the process's peak resident memory. Each step is
    repeated for at least MIN_SECONDS, so that a tiny model's figures are not a scheduler's noise."""
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
            "peak_rss": export.peak_rss()}


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


LABELS = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}


def _export(model, runtimes: list[str], folder: Path, threads: int, console: Console) -> tuple[list[Row], list, object]:
    """The rows outside llama.cpp, made in `folder`: their rows, what loads each (export.Exported), and the PyTorch
    model they come from (its own distance from llama.cpp tells what the export costs from what quantization does)."""
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    torch_model = export.load_torch(model)
    fp32 = export.export_onnx(torch_model, folder / "onnx-fp32")
    made = []  # the FP32 ONNX graph is OpenVINO's source too, but a row only with onnx
    if "onnx" in runtimes:
        made += [export.Exported(export.ONNX_FP32, fp32, "onnx"),
                 export.Exported(export.ONNX_INT8, export.quantize_onnx(fp32, folder / "onnx-int8"), "onnx")]
    if "openvino" in runtimes:
        made += [export.Exported(export.OV_INT8, export.convert_openvino(fp32, folder / "ov-int8", 8), "openvino"),
                 export.Exported(export.OV_INT4, export.convert_openvino(fp32, folder / "ov-int4", 4), "openvino")]
    console.print(f"exported {', '.join(f'{e.name} ({e.size / 1e6:.1f} MB)' for e in made)} in "
                  f"{time.perf_counter() - started:.1f} s")
    n_params = max(model.info.parameter_count, 1)
    rows = [Row(e.name, e.size, 8 * e.size / n_params, runtime="onnxruntime" if e.runtime == "onnx" else e.runtime)
            for e in made]
    return rows, made, torch_model


def _not_measured(model, runtimes: list[str]) -> tuple[list[str], list[str]]:
    """The runtimes beyond llama.cpp that can run here, and a line for each that cannot."""
    can, lines = [], []
    for r in (r for r in runtimes if r != "gguf"):
        why = export.why_not(model, r)
        if why:
            lines.append(f"{LABELS[r]} not measured: {why}")
        else:
            can.append(r)
    return can, lines


def run(config: QuantBenchConfig, console: Console | None = None) -> dict:
    from ember.config import Settings
    from ember.engines.llamacpp import default_threads
    from ember.quantize.perplexity import Scorer
    from ember.quantize.quality import compare_many, sample_texts
    from ember.quantize.quantizer import quantize_file
    from ember.store.store import ModelStore

    console = console or Console(stderr=True, highlight=False)
    threads = config.threads or default_threads()
    unknown = sorted(set(config.runtimes) - set(export.RUNTIMES))
    if unknown:
        raise BadRequest(f"--runtimes {','.join(unknown)}: known are {', '.join(export.RUNTIMES)}")
    types = [parse_type(t, "--types") for t in config.types] if "gguf" in config.runtimes else []
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
    exporting, not_measured = _not_measured(model, config.runtimes)
    for line in not_measured:
        console.print(line)
    texts = config.texts if config.texts is not None else sample_texts()
    trained = model.info.context_length or config.ctx
    ctx = min(config.ctx, trained - trained % 2)
    rows = [Row(have, source.stat().st_size, 8 * source.stat().st_size / max(model.info.parameter_count, 1),
                reference=True)]
    config.out.mkdir(parents=True, exist_ok=True)
    exported_quality: dict = {}
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
        gguf_rows = len(rows)

        def measure(indices: list[int], candidates: list) -> list[Quality]:
            results = compare_many(source, candidates, texts, ctx=ctx, threads=threads,
                                   type_name=[rows[i].type if i is not None else c.name
                                              for i, c in zip(indices, candidates)],
                                   require_all=False, max_chunks=config.chunks, speed=False)
            for i, q in zip(indices, results):
                if i is not None:
                    rows[i].measured(q)
                rows[0].ppl = q.all.ppl_ref
            console.print(f"quality measured: {', '.join(q.type for q in results)}")
            return results

        made, vocab = [], 0
        if exporting:
            try:
                more, made, torch_model = _export(model, exporting, Path(tmp), threads, console)
                rows += more
            except Exception as e:  # the bench is for the llama.cpp rows first: a failed export costs only its own
                line = (f"{' and '.join(LABELS[r] for r in exporting)} not measured: the export failed "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
                console.print(line)
                not_measured.append(line)
            else:
                # PyTorch's own distance from llama.cpp, then its weights are freed before anything is timed
                vocab = torch_model.config.get_text_config().vocab_size
                (q,) = measure([None], [Scorer("PyTorch FP32", export.torch_logits(torch_model), vocab)])
                del torch_model
                exported_quality["pytorch_fp32"] = {"ppl": q.all.ppl, "ppl_change": q.all.ppl / q.all.ppl_ref - 1,
                                                    "kld": q.all.kld, "kld_p99": q.all.kld_p99,
                                                    "same_top": q.all.same_top}
                if q.all.kld > 0.05:  # ~ what Q4_K_M costs: transformers did not read this GGUF as llama.cpp does
                    line = (f"PyTorch's reading of the GGUF is already KLD {format_kld(q.all.kld)} from llama.cpp's: "
                            f"the {', '.join(e.name for e in made)} rows carry that difference")
                    console.print(line)
                    not_measured.append(line)

        prompt = _prompt_tokens(source, next(iter(texts.values())))
        jobs = ([(_speed, (str(p), prompt, threads)) for p in paths]
                + [(export.speed, (str(e.path), e.runtime, prompt, threads, GEN_TOKENS, MIN_SECONDS)) for e in made])
        spawn = multiprocessing.get_context("spawn")
        for r in range(config.rounds):
            order = list(range(len(rows)))
            order = order[r % len(order):] + order[:r % len(order)]  # a different type first each round
            for i in order:
                with spawn.Pool(1) as pool:
                    got = pool.apply(*jobs[i])
                row = rows[i]
                if r == 0 or got["gen_tps"] > row.gen_tps:
                    row.gen_tps = got["gen_tps"]
                row.prompt_tps = max(row.prompt_tps, got["prompt_tps"])
                row.load_s = got["load_s"] if r == 0 else min(row.load_s, got["load_s"])
                row.peak_rss = max(row.peak_rss, got["peak_rss"])
            console.print(f"speed round {r + 1}/{config.rounds} done")

        for start in range(1, gguf_rows, GROUP):
            group = list(range(start, min(start + GROUP, gguf_rows)))
            measure(group, [paths[i] for i in group])
        for start in range(0, len(made), GROUP):  # the runtimes' models loaded a group at a time
            group = list(range(start, min(start + GROUP, len(made))))
            measure([gguf_rows + i for i in group],
                    [Scorer(made[i].name, export.Graph(made[i].path, made[i].runtime, threads).logits, vocab,
                            made[i].size) for i in group])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    advice = _recommend(rows, ram)
    result = {
        "model": model.name, "stored_as": have, "note": note, "ctx": ctx,
        "chunks_per_text": config.chunks, "texts": list(texts), "threads": threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                    "ram": ram, "load_average": os.getloadavg()},
        "runtimes": config.runtimes, "not_measured": not_measured, "rows": [asdict(r) for r in rows],
        "recommendation": advice,
    }
    if made:
        result["export"] = {**export.describe(), "pytorch_fp32_vs_reference": exported_quality["pytorch_fp32"]}
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


COLORS = {"llama.cpp": "tab:blue", "onnxruntime": "tab:green", "openvino": "tab:purple"}


def _plot(rows: list[Row], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((left, "size", "file size, MB"), (right, "gen_tps", "generation, tokens/s")):
        seen: set[str] = set()
        for r in rows:
            x = r.size / 1e6 if key == "size" else r.gen_tps
            if r.reference:  # its KLD is 0, off a log scale: a line where it stands
                ax.axvline(x, color="tab:red", linestyle="--", linewidth=1, label=f"{r.type}, the reference")
                continue
            ax.scatter([x], [r.kld], color=COLORS.get(r.runtime, "tab:blue"),
                       label=r.runtime if r.runtime not in seen else None)
            seen.add(r.runtime)
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
