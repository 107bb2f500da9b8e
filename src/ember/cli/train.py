"""`ember train` and `ember sample`: make a model from your own text, try it, and put it in the store.

Importing this module is cheap: PyTorch and the training code load only when a command runs, after a check that
ember's optional part [train] is installed.
"""

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from ember.config import Settings
from ember.core.durations import parse_duration
from ember.core.errors import BadRequest
from ember.extras import require, torch_threads_yield

err = Console(stderr=True, highlight=False)


def _require_train_extra(command: str) -> None:
    torch_threads_yield()
    # All of [train] before any work: matplotlib is imported only when a run writes its report.
    for module in ("torch", "tokenizers", "matplotlib"):
        require(module, "train", command)


def run_dir(name: str | None, out: Path | None) -> Path:
    if out:
        return out
    if not name:
        raise BadRequest("give the model a --name (or a checkpoint folder with --out)")
    return Settings.from_env().home / "train" / name.replace(":", "-")


def train(
    data: list[str] = typer.Option([], "--data", help="text files or folders (.txt, .md, .jsonl), or a bundled "
                                   "corpus by name (tinyshakespeare); repeat for more"),
    name: str | None = typer.Option(None, "--name", help="the model's name in the store when training ends"),
    out: Path | None = typer.Option(None, "--out", help="checkpoint folder (default: $EMBER_HOME/train/NAME)"),
    size: str | None = typer.Option(None, "--size", help="tiny (~1 M), small (~10 M) or base (~50 M parameters); "
                                    "default: the shape the budget and the data can train best"),
    layers: int | None = typer.Option(None, "--layers"),
    dim: int | None = typer.Option(None, "--dim"),
    heads: int | None = typer.Option(None, "--heads"),
    kv_heads: int | None = typer.Option(None, "--kv-heads"),
    ctx: int | None = typer.Option(None, "--ctx", help="context length in tokens"),
    time: str | None = typer.Option(None, "--time", help="time budget, e.g. 10m"),
    steps: int = typer.Option(0, "--steps", help="optimizer steps (a fixed seed then gives the same run)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="windows per step (default: with the shape)"),
    grad_accum: int = typer.Option(1, "--grad-accum", help="micro-batches per step"),
    lr: float = typer.Option(0.0, "--lr", help="peak learning rate (default: with the shape)"),
    warmup: int | None = typer.Option(None, "--warmup", help="warmup steps (default: the first 10% of the run)"),
    seed: int = typer.Option(1337, "--seed"),
    device: str = typer.Option("auto", "--device", help="cpu or cuda (default: cuda when present)"),
    tokenizer: str = typer.Option("bpe", "--tokenizer", help="bpe (learned from the data) or char"),
    vocab: int | None = typer.Option(None, "--vocab", help="BPE vocabulary size (default: from the data size)"),
    chat: bool = typer.Option(False, "--chat", help="train on .jsonl chats ({\"messages\": [...]}) in ChatML"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in the checkpoint folder"),
    fmt: str = typer.Option("f16", "--format", help="GGUF for the store: f32, f16, q8_0, q4_k_m, …"),
    eval_every: int = typer.Option(0, "--eval-every", help="steps between evals (default: ten per run)"),
):
    """Train a small Llama-style model from scratch on your text; it ends up in the store as NAME."""
    _require_train_extra("ember train")
    from ember.train.data import data_path
    from ember.train.export import FORMATS, publish
    from ember.train.trainer import TrainConfig
    from ember.train.trainer import train as run_training

    if fmt not in FORMATS:
        raise BadRequest(f"unknown --format {fmt!r} (known: {', '.join(FORMATS)})")
    folder = run_dir(name, out)
    if not resume and not data:
        raise BadRequest("say what to train on: --data PATH (files or folders of .txt, .md, .jsonl) or --data "
                         "tinyshakespeare")
    if not resume and (folder / "ckpt.pt").exists():
        raise BadRequest(f"{folder} already holds a training run: continue it with --resume, or pick another --name")
    cfg = TrainConfig(data=[str(data_path(d)) for d in data], out_dir=str(folder), size=size, layers=layers, dim=dim,
                      heads=heads, kv_heads=kv_heads, ctx=ctx, steps=steps,
                      time_s=parse_duration(time, "--time") if time else 0.0, batch_size=batch_size,
                      grad_accum=grad_accum, lr=lr, warmup=warmup, seed=seed, device=device, tokenizer=tokenizer,
                      vocab=vocab, chat=chat, eval_every=eval_every)
    master = int(os.environ.get("RANK", "0")) == 0
    try:
        run_training(cfg, resume=resume, console=err)
    except KeyboardInterrupt:
        if master:
            err.print(f"interrupted: checkpoint saved in {folder}; go on with: ember train "
                      f"{'--name ' + name if name else '--out ' + str(folder)} --resume --time …")
        sys.exit(130)  # as a shell reports Ctrl-C
    if not master:
        return
    err.print(f"checkpoint, log.json and loss.png in {folder}")
    if name:
        path = publish(folder, name, fmt)
        err.print(f"exported {path.name} and created model '{name}'; try: ember run {name} \"…\"")


def sample(
    checkpoint: str = typer.Argument(..., help="a checkpoint folder, or the --name of a training run"),
    prompt: str = typer.Argument("", help="text to continue"),
    tokens: int = typer.Option(200, "--tokens", help="how many tokens to add"),
    temperature: float = typer.Option(0.8, "--temperature"),
    top_k: int = typer.Option(200, "--top-k"),
    seed: int | None = typer.Option(None, "--seed"),
):
    """Continue PROMPT with a training checkpoint, before (or without) exporting it."""
    _require_train_extra("ember sample")
    import torch

    from ember.train.trainer import load_model

    folder = Path(checkpoint)
    if not folder.is_dir():  # a run's name works too
        folder = run_dir(checkpoint, None)
    model, tok, blob = load_model(folder)
    if seed is not None:
        torch.manual_seed(seed)
    ids = tok.encode(prompt) or [tok.eot]
    stop = {tok.eot, tok.im_end} if blob["train_config"].get("chat") else {tok.eot}
    sys.stdout.write(prompt)
    pending: list[int] = []
    for t in model.generate(torch.tensor([ids]), tokens, temperature=temperature, top_k=top_k or None, stop=stop):
        if t in stop:
            break
        pending.append(t)
        text = tok.decode(pending)
        if not text.endswith("\ufffd"):  # wait for the rest of a character split across byte-level tokens
            sys.stdout.write(text)
            sys.stdout.flush()
            pending = []
    sys.stdout.write(tok.decode(pending) + "\n")
