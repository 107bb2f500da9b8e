"""How fast does ember embed text? /api/embed vs sentence-transformers, llama.cpp and ONNX Runtime, in texts/s.

One model (all-MiniLM-L6-v2, bundled: ember pulls it as `minilm`, converting its safetensors to an f32 GGUF), one
fixed set of texts, every engine measured in alternating rounds in one run (the harness in ember.bench), so the
machine's drift cancels in the per-round ratios:

- ember /api/embed on a real `ember serve` (its own EMBER_HOME in a temp dir), requests of 32 inputs from one client,
  and the same requests from 4 concurrent clients (ember combines concurrent requests into one batch). ember runs
  encoders on ONNX Runtime (ember.engines.onnx_bert: the graph built from the GGUF with ORT's fused operators);
- sentence-transformers in-process, encode(batch_size=32, normalize_embeddings=True): the peer the goal is set against;
- llama.cpp in-process through ember's other engine (LlamaCppEmbedder, EMBER_EMBED_ENGINE=llama.cpp), the same
  batches of 32;
- ONNX Runtime fp32, the model exported from torch once per run and optimised by onnxruntime.transformers (eager
  attention, so that its attention fuses), batches of 32 sorted by length in tokens: the usual way to ONNX, against
  which ember's own graph is checked.

Texts: generated from templates with a fixed seed, 10-120 words, alternately English and Russian. MiniLM's vocabulary
is English: Russian text comes out at 4-7 tokens a word, so most Russian texts reach 256 tokens, the window
sentence-transformers gives this model (max_seq_length). Every engine is held to that window, ember through
options.num_ctx = 256; a cut text keeps its closing [SEP] in every engine, as sentence-transformers does. The agreement
check still reports the texts that fit the window separately.

Goal: ember's /api/embed (one client, requests of 32) at least 1.5x sentence-transformers' texts/s, judged on the
median of the per-round ratios; printed as PASS or FAIL. Timed: the embedding only (models loaded and warmed first);
the client's own time (JSON) is in ember's figures, as a caller pays it. Writes bench/results/embed.json (every figure
and round, the machine, the versions) and bench/results/embed.png (median texts/s, min-max bars). The default of 160
texts (of the 1,000 the generator makes) keeps the run near 5 minutes on a 2-core machine; --texts 1000 for all.
Run it on a quiet machine: it reports the share of the CPU that other processes took and warns above 10 %.

    .venv/bin/python bench/embed.py [--rounds 5] [--texts 160] [--out bench/results]
"""

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from ember.bench.harness import concurrently, ember_server, in_turns, machine_cpu_s, ratios, spread

ROOT = Path(__file__).resolve().parent.parent
MODEL = "minilm"
BATCH = 32
CLIENTS = 4
WINDOW = 256  # tokens: sentence-transformers' max_seq_length for all-MiniLM-L6-v2
GOAL = 1.5

# -- the texts ------------------------------------------------------------------------------------------------------

EN = (
    ("The new library in the city centre", "Our small team", "My neighbour", "The planning committee",
     "A bakery on the corner of our street", "The research group", "The museum", "Most visitors",
     "The regional train service", "Every student in the class", "The old bridge over the river",
     "The local football club", "Her younger brother", "The hospital", "The weather service",
     "The company's support desk", "A group of volunteers", "The council", "The evening news", "The farmers' market"),
    ("opened earlier than anyone expected", "decided to postpone the meeting until next week",
     "published a detailed report on energy prices", "asked for more time to finish the project",
     "has been closed for repairs since the spring", "reported a sharp rise in the number of visitors",
     "announced a new timetable for the winter months", "struggled to find enough qualified staff",
     "received several complaints about the noise", "moved to a larger building near the station",
     "started offering free lessons on weekends", "replaced the old heating system",
     "warned residents about strong winds and heavy rain", "doubled its budget for public transport",
     "collected money for the children's hospital", "tested a new way of sorting household waste",
     "answered hundreds of questions in a single afternoon", "planted trees along the main road"),
    ("after a long discussion", "according to the local newspaper", "despite the cold weather",
     "for the first time in ten years", "because of the heavy rain", "at the end of the month",
     "without telling anyone in advance", "as part of a larger plan", "with help from the university",
     "to the surprise of many residents", "earlier this year", "on Tuesday morning"),
)
RU = (
    ("Новая библиотека в центре города", "Наша небольшая команда", "Мой сосед", "Городской совет",
     "Пекарня на углу нашей улицы", "Исследовательская группа", "Краеведческий музей",
     "Региональная железная дорога", "Каждый студент в группе", "Старый мост через реку",
     "Местный футбольный клуб", "Её младший брат", "Районная больница", "Метеорологическая служба",
     "Служба поддержки компании", "Группа волонтёров", "Вечерняя программа новостей", "Фермерский рынок",
     "Школьная администрация", "Небольшое издательство"),
    ("открывается раньше, чем все ожидали", "решает перенести встречу на следующую неделю",
     "публикует подробный отчёт о ценах на энергию", "просит больше времени, чтобы закончить проект",
     "закрыт на ремонт с самой весны", "сообщает о резком росте числа посетителей",
     "объявляет новое расписание на зимние месяцы", "с трудом находит квалифицированных сотрудников",
     "получает жалобы на шум по ночам", "переезжает в просторное здание рядом с вокзалом",
     "начинает проводить бесплатные занятия по выходным", "меняет старую систему отопления",
     "предупреждает жителей о сильном ветре и ливнях", "удваивает бюджет на общественный транспорт",
     "собирает деньги для детской больницы", "пробует новый способ сортировки бытовых отходов",
     "отвечает на сотни вопросов за один день", "высаживает деревья вдоль главной дороги"),
    ("после долгого обсуждения", "как пишет местная газета", "несмотря на холодную погоду",
     "впервые за десять лет", "из-за сильного дождя", "в конце месяца", "никого не предупредив заранее",
     "в рамках более широкого плана", "при поддержке университета", "к удивлению многих жителей",
     "в начале этого года", "во вторник утром"),
)


def make_texts(n: int = 1000, seed: int = 1) -> list[str]:
    """`n` texts of 10-120 words, English and Russian in turn, the same for the same seed (a shorter set is the start
    of a longer one). Sentences of subject + predicate + sometimes a circumstance, cut at the text's word count."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        subjects, predicates, tails = EN if i % 2 == 0 else RU
        target, words = rng.randint(10, 120), []
        while len(words) < target:
            parts = [rng.choice(subjects), rng.choice(predicates)]
            if rng.random() < 0.6:
                parts.append(rng.choice(tails))
            words += (" ".join(parts) + ".").split()
        texts.append(" ".join(words[:target]).rstrip(",.") + ".")
    return texts


def batches(items: list, size: int = BATCH) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def timed(run: Callable[[], np.ndarray], n: int, keep: dict, name: str) -> Callable[[], dict]:
    """A runner for `in_turns`: times `run`, keeps its latest vectors in `keep[name]` (out of the JSON)."""
    def runner() -> dict:
        started = time.perf_counter()
        vectors = run()
        seconds = time.perf_counter() - started
        keep[name] = np.asarray(vectors, dtype=np.float32)
        return {"seconds": seconds, "texts_per_s": n / seconds}
    return runner


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


# -- the engines ----------------------------------------------------------------------------------------------------

def ember_api(client: httpx.Client, url: str, texts: list[str], clients: int = 1) -> np.ndarray:
    """The texts in requests of BATCH inputs; with `clients` > 1, that many callers at once, each taking the next
    request as it is done with its last."""
    parts = batches(texts)
    out: list = [None] * len(parts)
    queue = iter(range(len(parts)))  # next() on a shared iterator: safe enough under the GIL for ints from range

    def caller() -> None:
        for i in queue:
            body = {"model": MODEL, "input": parts[i], "options": {"num_ctx": WINDOW}, "keep_alive": "30m"}
            response = client.post(f"{url}/api/embed", json=body, timeout=600)
            response.raise_for_status()
            out[i] = response.json()["embeddings"]

    if clients == 1:
        caller()
    else:
        concurrently([caller] * clients)
    return np.array([v for part in out for v in part], dtype=np.float32)


def llama_in_process(engine, texts: list[str]) -> np.ndarray:
    """What the server does for a request, without the server: tokenize, cut to the window, embed, normalise."""
    from ember.core.types import EmbedRequest
    from ember.runtime.embedding import _embed

    vectors = []
    for part in batches(texts):
        vectors += _embed(engine, EmbedRequest(MODEL, part), threading.Event())[0]
    return np.array(vectors, dtype=np.float32)


def export_onnx(model_dir: Path, folder: Path, threads: int):
    """all-MiniLM-L6-v2's BERT to ONNX (dynamic batch and length, opset 17), optimised for ONNX Runtime on CPU.

    Loaded with eager attention: the SDPA path exports a graph whose attention the optimiser cannot fuse (about a
    third of the speed here)."""
    import onnxruntime as ort
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import BertModel

    class LastHidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = torch.ones(2, 8, dtype=torch.long)
    raw, optimised = folder / "minilm.onnx", folder / "minilm.opt.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracing warnings
        torch.onnx.export(LastHidden(bert), (example, example, torch.zeros_like(example)), str(raw),
                          input_names=names, output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]})
    model = optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=384)
    model.save_model_to_file(str(optimised))
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(optimised), options, providers=["CPUExecutionProvider"]), fused


def onnx_in_process(session, tokenizer, texts: list[str]) -> np.ndarray:
    """Tokenised (cut to the window), sorted by length in tokens, batches of BATCH padded to their longest, mean-pooled
    over the mask, normalised."""
    encoded = tokenizer.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    out = np.empty((len(texts), 384), dtype=np.float32)
    for idx in batches(order):
        ids = np.zeros((len(idx), max(len(encoded[i].ids) for i in idx)), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, :len(encoded[i].ids)] = encoded[i].ids
            mask[row, :len(encoded[i].ids)] = 1
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        out[idx] = unit((hidden * weights).sum(1) / weights.sum(1))
    return out


# -- the report -----------------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    versions = {}
    for dist in ("ember", "llama_cpp_python", "torch", "onnxruntime", "sentence-transformers", "transformers",
                 "tokenizers", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def plot(engines: dict, labels: dict, title: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(engines)
    med = [engines[n]["texts_per_s"]["median"] for n in names]
    low = [m - engines[n]["texts_per_s"]["min"] for n, m in zip(names, med, strict=True)]
    high = [engines[n]["texts_per_s"]["max"] - m for n, m in zip(names, med, strict=True)]
    colours = ["#d9534f" if n.startswith("ember") else "#5b8def" if n == "sentence_transformers" else "#999999"
               for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.bar(range(len(names)), med, yerr=[low, high], capsize=4, color=colours)
    for bar, n, top in zip(bars, names, high, strict=True):
        ratio = engines[n]["ratio_to_st"]["median"]
        ax.annotate(f"{bar.get_height():.1f}\n×{ratio:.2f} ST", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height() + top), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)
    st = engines["sentence_transformers"]["texts_per_s"]["median"]
    ax.axhline(GOAL * st, color="#f0ad4e", linestyle=":", linewidth=1, label=f"goal: {GOAL}× sentence-transformers")
    ax.set_xticks(range(len(names)), [labels[n] for n in names], fontsize=8)
    ax.set_ylabel("texts / s (median, min–max over rounds)")
    ax.set_ylim(0, max(GOAL * st, *(m + h for m, h in zip(med, high, strict=True))) * 1.2)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=160, help="how many of the 1,000 texts (default 160: ~5 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    began = time.perf_counter()
    # Stopped with SIGTERM as with Ctrl-C: the `with` blocks below still stop the server and remove the temp dir.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cores = len(os.sched_getaffinity(0))
    cpu_before = machine_cpu_s()
    os.environ["HF_HUB_OFFLINE"] = "1"

    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from ember.engines.base import LoadSpec, Role
    from ember.engines.llamacpp import LlamaCppEmbedder
    from ember.store.bundled import CATALOG, locate
    from ember.store.store import ModelStore

    torch.set_num_threads(cores)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    texts = make_texts(max(args.texts, 1000))[:args.texts]
    model_dir = locate(next(b for b in CATALOG if b.model == MODEL)).parent
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    full_lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(texts)])
    fits = full_lengths <= WINDOW
    tokenizer.enable_truncation(WINDOW)  # as sentence-transformers: [SEP] kept at the end

    labels = {"ember_api": f"ember /api/embed\n1 client, {BATCH}/request",
              "ember_api_concurrent": f"ember /api/embed\n{CLIENTS} clients, {BATCH}/request",
              "sentence_transformers": "sentence-transformers\n(torch, in-process)",
              "llama_cpp": "llama.cpp in-process\n(EMBER_EMBED_ENGINE=llama.cpp)",
              "onnxruntime": "ONNX Runtime fp32, torch export\n(in-process)"}
    vectors: dict[str, np.ndarray] = {}
    n = len(texts)
    print(f"{n} texts ({int((~fits).sum())} longer than {WINDOW} tokens, cut), {args.rounds} rounds, {cores} cores",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="ember-bench-embed-") as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")} | {"EMBER_HOME": str(home)}
        subprocess.run([sys.executable, "-m", "ember", "pull", MODEL, "--quiet"], env=env, check=True)
        gguf = ModelStore(home / "models").get(MODEL).model_path
        st = SentenceTransformer(str(model_dir), device="cpu")
        session, fused = export_onnx(model_dir, home, cores)
        engine = LlamaCppEmbedder(LoadSpec(gguf, role=Role.EMBED, num_ctx=WINDOW))
        try:
            with ember_server(home, log_path=home / "server.log") as server, \
                    httpx.Client(limits=httpx.Limits(max_connections=CLIENTS)) as client:
                engines = {
                    "ember_api": lambda: ember_api(client, server.url, texts),
                    "ember_api_concurrent": lambda: ember_api(client, server.url, texts, CLIENTS),
                    "sentence_transformers": lambda: st.encode(texts, batch_size=BATCH, normalize_embeddings=True),
                    "llama_cpp": lambda: llama_in_process(engine, texts),
                    "onnxruntime": lambda: onnx_in_process(session, tokenizer, texts),
                }
                warm = texts[:BATCH]  # loads ember's model; first calls of every engine allocate
                ember_api(client, server.url, warm)
                st.encode(warm, batch_size=BATCH, normalize_embeddings=True)
                llama_in_process(engine, warm)
                onnx_in_process(session, tokenizer, warm)
                setup_s = time.perf_counter() - began
                print(f"set up in {setup_s:.0f} s; measuring", flush=True)
                runs = in_turns(args.rounds, {name: timed(run, n, vectors, name) for name, run in engines.items()},
                                after_round=lambda i: print(f"  round {i}/{args.rounds} done", flush=True))
        finally:
            engine.close()

    reference = vectors["sentence_transformers"]
    st_tps = [r["texts_per_s"] for r in runs["sentence_transformers"]]
    results = {}
    for name in engines:
        tps = [r["texts_per_s"] for r in runs[name]]
        cos = (unit(vectors[name]) * reference).sum(1)
        results[name] = {
            "label": labels[name].replace("\n", " "), "rounds": runs[name], "texts_per_s": spread(tps),
            "ratio_to_st": ratios(tps, st_tps),
            "cosine_vs_st": {"mean": float(cos.mean()), "min": float(cos.min()),
                             "min_fitting": float(cos[fits].min()) if fits.any() else None,
                             "min_cut": float(cos[~fits].min()) if (~fits).any() else None}}

    # Other work on the machine skews engines unevenly (llama.cpp's threads wait for each other and suffer most): the
    # CPU time the machine spent that was not this run's (this process and its children, the server included).
    mine = sum(os.times()[:4])
    others = max(0.0, machine_cpu_s() - cpu_before - mine) / ((time.perf_counter() - began) * cores)
    busy = others > 0.1
    goal_ratio = results["ember_api"]["ratio_to_st"]["median"]
    passed = goal_ratio >= GOAL
    print(f"\n{n} texts, {BATCH} a batch, {WINDOW}-token window, {args.rounds} alternating rounds, {cores} cores "
          f"({machine()['cpu']})")
    print(f"{'engine':<42}{'texts/s: min':>13}{'median':>8}{'max':>8}{'× ST':>7}{'cos: mean':>11}{'min':>8}"
          f"{'min fit':>9}")
    for r in results.values():
        t, c = r["texts_per_s"], r["cosine_vs_st"]
        fit = f"{c['min_fitting']:.5f}" if c["min_fitting"] is not None else "-"
        print(f"{r['label']:<42}{t['min']:>13.1f}{t['median']:>8.1f}{t['max']:>8.1f}"
              f"{r['ratio_to_st']['median']:>7.2f}{c['mean']:>11.5f}{c['min']:>8.4f}{fit:>9}")
    print("× ST: median of the per-round ratios to sentence-transformers; cos: vs sentence-transformers' vectors, "
          f"min fit: over the {int(fits.sum())} texts within {WINDOW} tokens")
    over_llama = ratios([r["texts_per_s"] for r in runs["ember_api"]], [r["texts_per_s"] for r in runs["llama_cpp"]])
    print(f"ember /api/embed (ONNX Runtime, HTTP included) / llama.cpp in-process per round: median "
          f"{over_llama['median']:.2f} (min {over_llama['min']:.2f}, max {over_llama['max']:.2f})")
    over_export = ratios([r["texts_per_s"] for r in runs["ember_api"]],
                         [r["texts_per_s"] for r in runs["onnxruntime"]])
    print(f"ember /api/embed / ONNX Runtime on the torch export in-process per round: median "
          f"{over_export['median']:.2f} (ember's graph and grouping against the usual export, HTTP included)")
    print(f"goal: ember /api/embed ≥ {GOAL}× sentence-transformers' texts/s: {goal_ratio:.2f}× → "
          f"{'PASS' if passed else 'FAIL'}")
    print(f"other processes' share of the CPU during the run: {100 * others:.1f} %")
    if busy:
        print(f"warning: other processes took {100 * others:.0f} % of the machine's CPU during the run: these "
              "figures are not to be trusted (llama.cpp suffers most); run it again on a quiet machine")

    words = [len(t.split()) for t in texts]
    lengths = {"en": full_lengths[0::2], "ru": full_lengths[1::2]}
    summary = {
        "config": {"texts": n, "rounds": args.rounds, "batch": BATCH, "clients_concurrent": CLIENTS,
                   "window_tokens": WINDOW, "threads": cores, "model": "all-MiniLM-L6-v2 (ember: minilm, f32 GGUF)",
                   "onnx_fused_operators": fused},
        "texts": {"words": {"min": min(words), "mean": float(np.mean(words)), "max": max(words)},
                  "tokens_before_cut": {lang: {"min": int(v.min()), "mean": float(v.mean()), "max": int(v.max())}
                                       for lang, v in lengths.items() if len(v)},
                  "cut_to_window": int((~fits).sum())},
        "machine": machine() | {"cpu_share_of_other_processes": others, "busy": busy},
        "engines": results, "ember_api_vs_llama_cpp": over_llama,
        "ember_api_vs_torch_export_onnxruntime": over_export,
        "goal": {"statement": f"ember's /api/embed at least {GOAL}x sentence-transformers' texts/s",
                 "ratio_median": goal_ratio, "passed": passed},
        "setup_s": setup_s, "wall_s": time.perf_counter() - began}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "embed.json", args.out / "embed.png"
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    title = (f"bench/embed.py: all-MiniLM-L6-v2, {n} texts (EN/RU), {args.rounds} rounds, {cores} cores — goal "
             f"{'PASS' if passed else 'FAIL'} ({goal_ratio:.2f}×)")
    drew = plot(results, labels, title, png_path)
    print(f"wrote {json_path}" + (f" and {png_path}" if drew else "") + f" ({summary['wall_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
