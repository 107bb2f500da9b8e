"""ember's trainer against nanoGPT's published CPU recipe on tinyshakespeare, char-level, in one run on one machine.

    .venv/bin/python bench/train_shakespeare.py            # recipe, ember at 2/3 of its time, ember for 15 min
    .venv/bin/python bench/train_shakespeare.py --quick    # a minute or two: short versions of the same runs

The recipe is nanoGPT's model.py/train.py reimplemented here (GPT: LayerNorm, learned positions, GELU MLP, tied
embeddings; 4 layers, 4 heads, 128 dims, block 64, batch 12, 2000 iterations, lr 1e-3 with 100 warmup steps and
cosine to 1e-4, AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0, no dropout, evals every 250 iterations with
20 batches as its CPU command says). Both models are scored the same way at the end: mean loss over the whole
held-out tenth of the text in windows of 64 characters. Writes bench/results/train_shakespeare.json and .png.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

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


def run_ember(text_path, seconds, out_dir, **overrides):
    """ember's trainer with a wall-time budget; returns (wall seconds, curve, model, tokenizer, log)."""
    from ember.train.trainer import TrainConfig, load_model, train

    cfg = TrainConfig(data=[str(text_path)], out_dir=str(out_dir), tokenizer="char", time_s=seconds, **overrides)
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    model, tok, blob = load_model(out_dir)
    curve = [(e[1], e[2]) for e in blob["state"]["evals"]]
    return wall, curve, model, tok, json.loads((Path(out_dir) / "log.json").read_text())


# Tuned on this machine kind (see the README section "Train your own model").
EMBER_FAST = dict(layers=4, dim=128, heads=4, kv_heads=4, ctx=128, batch_size=16, lr=4e-3, warmup=50, eval_iters=5)
EMBER_LONG = dict(layers=6, dim=192, heads=6, kv_heads=6, ctx=128, batch_size=32, lr=3e-3, warmup=100, eval_iters=5)


def main(argv=None):
    sys.path.insert(0, str(ROOT / "src"))
    from ember.train.data import data_path, tokenize
    from ember.train.tokenizer import Tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 recipe iterations and short ember runs")
    p.add_argument("--long", type=float, default=900, help="seconds for ember's long run (0: skip it)")
    p.add_argument("--data", default="tinyshakespeare", help="a text file, or a bundled corpus (default)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    text = data_path(args.data).read_text(encoding="utf-8")
    # The recipe's own data: nanoGPT's prepare.py, 65 characters, first 90% train, last 10% val.
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int32)
    n = int(0.9 * len(ids))
    r_train, r_val = ids[:n], ids[n:]
    # ember's split of the same text: its char tokenizer maps each character to its own id.
    tok = Tokenizer.train([text], "char")
    e_val = tokenize([text], tok)[n:len(text)]  # the same characters as r_val (ember's split differs by rounding)

    iters = 200 if args.quick else 2000
    print(f"nanoGPT recipe: {iters} iterations", flush=True)
    r_wall, r_curve, r_model = run_recipe(r_train, r_val, len(chars), iters)
    r_loss = full_val_loss(r_model, r_val)
    print(f"recipe: {r_wall:.1f} s, val loss {r_loss:.4f} (nanoGPT's own estimate {r_curve[-1][1]:.4f})", flush=True)

    results = {"machine": {"cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__},
               "recipe": {"iters": iters, "wall_s": round(r_wall, 1), "val_loss": round(r_loss, 4), "curve": r_curve}}
    # The budget covers the training loop; setup and the final report take a few seconds more, so aim under 2/3.
    runs = [("ember_fast", r_wall * 0.6, EMBER_FAST)]
    if args.long:
        runs.append(("ember_long", 60 if args.quick else args.long, EMBER_LONG))
    with tempfile.TemporaryDirectory() as tmp:
        for label, budget, hp in runs:
            print(f"{label}: {budget:.0f} s budget, {hp}", flush=True)
            wall, curve, model, _, log = run_ember(args.data, budget, Path(tmp) / label, **hp)
            loss = full_val_loss(model, e_val)
            print(f"{label}: {wall:.1f} s, val loss {loss:.4f}, {log['steps']} steps, {log['parameters']} params",
                  flush=True)
            results[label] = {"budget_s": round(budget, 1), "wall_s": round(wall, 1), "val_loss": round(loss, 4),
                              "steps": log["steps"], "parameters": log["parameters"], "hyper": hp, "curve": curve}

    rows = [("nanoGPT CPU recipe", results["recipe"])] + [(k, results[k]) for k, _, _ in runs]
    print("\n| run | wall time (s) | val loss (whole val split, 64-char windows) |\n| --- | --- | --- |")
    for label, r in rows:
        print(f"| {label} | {r['wall_s']} | {r['val_loss']} |")
    fast = results["ember_fast"]
    results["fast_ratio"] = round(fast["wall_s"] / r_wall, 3)
    print(f"\nember_fast used {results['fast_ratio']:.2f} of the recipe's wall time; "
          f"val loss {fast['val_loss']} vs recipe {results['recipe']['val_loss']}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_shakespeare.json").write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, r in rows:
        ax.plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]], "o-", label=f"{label} (final {r['val_loss']})")
    for level in (1.88, 1.60):
        ax.axhline(level, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("validation loss")
    ax.set_ylim(1.3, 3.5)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(args.out / "train_shakespeare.png", dpi=110, bbox_inches="tight")
    print(f"wrote {args.out / 'train_shakespeare.json'} and .png")


if __name__ == "__main__":
    main()
