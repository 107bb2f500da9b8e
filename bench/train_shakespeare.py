"""`ember train` with its defaults against nanoGPT's CPU recipe and ember's hand-tuned settings, on tinyshakespeare,
character-level, in one run on one machine.

    .venv/bin/python bench/train_shakespeare.py                 # recipe; default and tuned at 2/3 of it and at 5 min
    .venv/bin/python bench/train_shakespeare.py --minutes 5 15  # the same, and at 15 minutes too (about 70 min)
    .venv/bin/python bench/train_shakespeare.py --quick         # a few minutes: short versions of the same runs

The recipe is nanoGPT's model.py/train.py reimplemented here (GPT: LayerNorm, learned positions, GELU MLP, tied
embeddings; 4 layers, 4 heads, 128 dims, block 64, batch 12, 2000 iterations, lr 1e-3 with 100 warmup steps and
cosine to 1e-4, AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0, no dropout, evals every 250 iterations with
20 batches as its CPU command says). ember's default run is the command a user types, `ember train --data FILE
--tokenizer char --time T --name …` and nothing else, with T two thirds of the recipe's measured wall time, then
5 minutes (and 15 with --minutes); the tuned runs are the hand-picked settings below with the same budgets.

Every model is scored the same way at the end: mean next-character loss over the whole held-out tenth of the text
in windows of 64 characters; ember's models through llama.cpp on the GGUF that `ember train` exported (f16, what
goes into the store), the recipe's GPT in PyTorch. Writes bench/results/train_shakespeare.json and .png.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


# ---- nanoGPT's recipe, reimplemented (karpathy/nanoGPT model.py, bias=False, dropout=0) ----

class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class LayerNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class GPTBlock(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(n_embd), CausalSelfAttention(n_embd, n_head)
        self.ln_2 = LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=False))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer=4, n_head=4, n_embd=128):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block, n_embd)
        self.h = nn.ModuleList(GPTBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("attn.c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def run_recipe(train_ids, val_ids, vocab, iters=2000, seed=1337):
    """nanoGPT's CPU command; returns (wall seconds, curve of (seconds, val loss), model)."""
    torch.manual_seed(seed)
    block, batch, lr, min_lr, warmup = 64, 12, 1e-3, 1e-4, 100
    model = GPT(vocab, block)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)

    def get_batch(data):
        ix = torch.randint(len(data) - block, (batch,), generator=gen)
        x = torch.stack([data[i:i + block] for i in ix.tolist()]).long()
        y = torch.stack([data[i + 1:i + 1 + block] for i in ix.tolist()]).long()
        return x, y

    def get_lr(it):
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (iters - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    curve = []
    start = time.perf_counter()
    for it in range(iters + 1):
        if it % 250 == 0 or it == iters:  # estimate_loss: 20 batches of train and of val, as nanoGPT does
            model.eval()
            with torch.no_grad():
                losses = {s: sum(model(*get_batch(d))[1].item() for _ in range(20)) / 20
                          for s, d in (("train", train_ids), ("val", val_ids))}
            model.train()
            curve.append((time.perf_counter() - start, losses["val"]))
            print(f"  recipe iter {it}: val {losses['val']:.4f} at {curve[-1][0]:.0f} s", flush=True)
        if it == iters:
            break
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        _, loss = model(*get_batch(train_ids))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - start, curve, model


@torch.no_grad()
def full_val_loss(model, val_ids, window=64):
    """Mean next-character loss over the whole held-out text in windows of 64: one scale for both models."""
    model.eval()
    n = (len(val_ids) - 1) // window
    x = val_ids[:n * window].long().view(n, window)
    y = val_ids[1:n * window + 1].long().view(n, window)
    total = 0.0
    for i in range(0, n, 256):
        logits, _ = model(x[i:i + 256])
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[i:i + 256].reshape(-1), reduction="sum").item()
    return total / (n * window)


def gguf_val_loss(path: Path, val_ids: torch.Tensor, window: int = 64) -> float:
    """full_val_loss through llama.cpp: the GGUF reads each 64-character window from an empty cache."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=window, n_batch=window, n_ubatch=window, logits_all=True, verbose=False,
                          n_threads=len(os.sched_getaffinity(0)))
    n = (len(val_ids) - 1) // window
    ids = val_ids.long().tolist()
    total = 0.0
    for i in range(n):
        x, y = ids[i * window:(i + 1) * window], np.asarray(ids[i * window + 1:(i + 1) * window + 1])
        llm.reset()
        llm.eval(x)
        logits = np.asarray(llm.scores[:window], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= logp[np.arange(window), y].sum()
    llm.close()
    return float(total / (n * window))


def run_default(data: Path, seconds: float, home: Path, name: str) -> tuple[float, Path, dict]:
    """`ember train` as a user runs it: only --data, --tokenizer char and --time; returns (wall s, GGUF, log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ember", "train", "--data", str(data), "--tokenizer", "char", "--time",
                    f"{seconds:.0f}s", "--name", name], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    folder = home / "train" / name
    return wall, next(folder.glob("*.gguf")), json.loads((folder / "log.json").read_text())


def run_tuned(data: Path, seconds: float, out_dir: Path, hyper: dict) -> tuple[float, Path, dict]:
    """ember's trainer with hand-tuned settings and the same budget, exported the way `ember train` exports."""
    from ember.train.export import export
    from ember.train.trainer import TrainConfig, train

    cfg = TrainConfig(data=[str(data)], out_dir=str(out_dir), tokenizer="char", time_s=seconds, **hyper)
    start = time.perf_counter()
    train(cfg)
    gguf = export(out_dir, out_dir / "model-f16.gguf", "f16")
    wall = time.perf_counter() - start
    return wall, gguf, json.loads((out_dir / "log.json").read_text())


# Tuned by hand on this machine kind (see the README section "Train your own model"): the first for about 1.5
# minutes, the second for 15.
TUNED_FAST = dict(layers=4, dim=128, heads=4, kv_heads=4, ctx=128, batch_size=16, lr=4e-3, warmup=50, eval_iters=5)
TUNED_LONG = dict(layers=6, dim=192, heads=6, kv_heads=6, ctx=128, batch_size=32, lr=3e-3, warmup=100, eval_iters=5)


def tuned_for(seconds: float) -> tuple[str, dict]:
    return ("tuned 4×128", TUNED_FAST) if seconds < 180 else ("tuned 6×192", TUNED_LONG)


def _label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds:.0f} s"


def main(argv=None):
    sys.path.insert(0, str(ROOT / "src"))
    from ember.train.data import data_path, tokenize
    from ember.train.tokenizer import Tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 recipe iterations and 1-minute long runs")
    p.add_argument("--minutes", type=float, nargs="*", default=[5],
                   help="budgets beyond 2/3 of the recipe where the default meets the tuned settings (default: 5)")
    p.add_argument("--data", default="tinyshakespeare", help="a text file, or a bundled corpus (default)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    data = data_path(args.data)
    text = data.read_text(encoding="utf-8")
    # The recipe's own data: nanoGPT's prepare.py, 65 characters, first 90% train, last 10% val.
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int32)
    n = int(0.9 * len(ids))
    r_train, r_val = ids[:n], ids[n:]
    # ember's ids for the same characters: its char tokenizer (and so the GGUF's vocabulary) numbers them its way.
    tok = Tokenizer.train([text], "char")
    e_val = tokenize([text], tok)[n:len(text)]

    iters = 200 if args.quick else 2000
    print(f"nanoGPT recipe: {iters} iterations", flush=True)
    r_wall, r_curve, r_model = run_recipe(r_train, r_val, len(chars), iters)
    r_loss = full_val_loss(r_model, r_val)
    print(f"recipe: {r_wall:.1f} s, val loss {r_loss:.4f} (nanoGPT's own estimate {r_curve[-1][1]:.4f})", flush=True)

    results = {"machine": {"cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__},
               "recipe": {"label": "nanoGPT CPU recipe", "iters": iters, "wall_s": round(r_wall, 1),
                          "val_loss": round(r_loss, 4), "settings": "GPT 4 layers × 128 dims, batch 12 × 64, "
                          f"{iters} iterations", "curve": r_curve}, "runs": [], "comparisons": []}
    budgets = [r_wall * 2 / 3] + [60.0 if args.quick else m * 60 for m in args.minutes]
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            pair = {}
            tuned_name, hyper = tuned_for(budget)
            for kind in ("default", "tuned"):
                label = f"ember default, {_label(budget)}" if kind == "default" else f"{tuned_name}, {_label(budget)}"
                print(f"{label}: {budget:.0f} s budget", flush=True)
                if kind == "default":
                    wall, gguf, log = run_default(data, budget, Path(tmp) / "home", f"default-{budget:.0f}")
                    settings = log["chosen"]["summary"]
                else:
                    wall, gguf, log = run_tuned(data, budget, Path(tmp) / f"tuned-{budget:.0f}", hyper)
                    settings = ", ".join(f"{k} {v}" for k, v in hyper.items() if k != "eval_iters")
                loss = gguf_val_loss(gguf, e_val)
                print(f"  {wall:.1f} s, val loss {loss:.4f} (llama.cpp, {gguf.name}), {log['steps']} steps, "
                      f"{log['parameters']} parameters; {settings}", flush=True)
                run = {"label": label, "kind": kind, "budget_s": round(budget, 1), "wall_s": round(wall, 1),
                       "train_s": log["seconds"], "val_loss": round(loss, 4), "steps": log["steps"],
                       "tokens": log["tokens"], "parameters": log["parameters"], "settings": settings,
                       "curve": [(e[1], e[2]) for e in log["evals"]]}
                results["runs"].append(run)
                pair[kind] = run
            against = results["recipe"] if budget == budgets[0] else pair["tuned"]
            results["comparisons"].append(
                {"budget_s": round(budget, 1), "default": pair["default"]["val_loss"], "against": against["label"],
                 "their_loss": against["val_loss"], "tuned": pair["tuned"]["val_loss"],
                 "at_or_below": bool(pair["default"]["val_loss"] <= against["val_loss"])})

    rows = [results["recipe"]] + results["runs"]
    print("\n| run | settings | budget | wall time | val loss |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        budget = f"{r['budget_s']:.0f} s" if "budget_s" in r else f"{r['iters']} iterations"
        print(f"| {r['label']} | {r['settings']} | {budget} | {r['wall_s']} s | {r['val_loss']} |")
    print()
    for c in results["comparisons"]:
        verdict = "at or below" if c["at_or_below"] else "ABOVE"
        print(f"default with --time {c['budget_s']:.0f}s: {c['default']} vs {c['against']} {c['their_loss']}: "
              f"{verdict}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_shakespeare.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in rows:
        style = "s--" if r.get("kind") == "tuned" else "o-"
        ax.plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]], style, ms=3,
                label=f"{r['label']} (final {r['val_loss']})")
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("validation loss (curves: in-run estimates; legend: whole val split)")
    ax.set_ylim(1.3, 3.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(args.out / "train_shakespeare.png", dpi=110, bbox_inches="tight")
    print(f"wrote {args.out / 'train_shakespeare.json'} and .png")


if __name__ == "__main__":
    main()
