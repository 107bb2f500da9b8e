"""`ember train` and `ember sample`: make a model from your own text, try it, and put it in the store."""

import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ember.config import Settings
from ember.core.errors import BadRequest

err = Console(stderr=True, highlight=False)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")


def parse_time(text: str | None) -> float:
    """'10m', '1h30m', '90s' or plain seconds → seconds."""
    if not text:
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text.strip()):
        if m.start() != pos or not m.group(0):
            break
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "": 1}[m.group(2)]
        pos = m.end()
    if pos != len(text.strip()) or total <= 0:
        raise BadRequest(f"invalid --time {text!r}: use a duration like 10m, 1h30m or 90s")
    return total


def run_dir(name: str | None, out: Path | None) -> Path:
    if out:
        return out
    if not name:
        raise BadRequest("give the model a --name (or a checkpoint folder with --out)")
    return Settings.from_env().home / "train" / name.replace(":", "-")


def train(data: list[Path], name: Optional[str], out: Optional[Path], size: str, layers, dim, heads, kv_heads, ctx,
          time: Optional[str], steps: int, batch_size: int, grad_accum: int, lr: float, seed: int, device: str,
          tokenizer: str, vocab: Optional[int], chat: bool, resume: bool, fmt: str, eval_every: int) -> None:
    from ember.train.export import FORMATS, publish
    from ember.train.trainer import TrainConfig
    from ember.train.trainer import train as run_training

    if fmt not in FORMATS:
        raise BadRequest(f"unknown --format {fmt!r} (known: {', '.join(FORMATS)})")
    folder = run_dir(name, out)
    if not resume and not data:
        raise BadRequest("say what to train on: --data PATH (files or folders of .txt, .md, .jsonl)")
    if not resume and (folder / "ckpt.pt").exists():
        raise BadRequest(f"{folder} already holds a training run: continue it with --resume, or pick another --name")
    cfg = TrainConfig(data=[str(p.resolve()) for p in data], out_dir=str(folder), size=size, layers=layers, dim=dim,
                      heads=heads, kv_heads=kv_heads, ctx=ctx, steps=steps, time_s=parse_time(time),
                      batch_size=batch_size, grad_accum=grad_accum, lr=lr, seed=seed, device=device,
                      tokenizer=tokenizer, vocab=vocab, chat=chat, eval_every=eval_every)
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
        path = publish(folder, name, fmt, lambda s: None)
        err.print(f"exported {path.name} and created model '{name}'; try: ember run {name} \"…\"")


def sample(checkpoint: str, prompt: str, tokens: int, temperature: float, top_k: int, seed: Optional[int]) -> None:
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
