"""`ember tune`: teach a stored model (or a Hugging Face folder) your own chats with LoRA; the result gets a name.

Like `ember train`, PyTorch and peft load only when the command runs, after a check that [tune] is installed.
"""

import sys
import time as clock  # `time` is the --time option's name
from pathlib import Path

import typer
from rich.console import Console

from ember.config import Settings
from ember.core.durations import parse_duration
from ember.core.errors import BadRequest
from ember.extras import require, torch_threads_yield

err = Console(stderr=True, highlight=False)


def tune(
    base: str = typer.Argument(..., help="a model in the store (smollm2, gemma3:270m, …) or a Hugging Face folder"),
    data: Path = typer.Option(None, "--data", help='a .jsonl of chats: {"messages": [{"role": "user", …}, '
                              '{"role": "assistant", …}]} or {"prompt": …, "completion": …} per line'),
    name: str = typer.Option(..., "--name", help="the tuned model's name in the store"),
    merge: bool = typer.Option(False, "--merge", help="write one full F16 GGUF instead of an adapter over BASE"),
    rank: int = typer.Option(16, "--rank", help="LoRA rank"),
    alpha: float = typer.Option(32.0, "--alpha", help="LoRA alpha (the update is scaled by alpha / rank)"),
    targets: str = typer.Option("all-linear", "--targets",
                                help="layers to adapt, comma-separated (q_proj,v_proj,…) or all-linear"),
    epochs: float = typer.Option(0.0, "--epochs", help="passes over the examples (default 3 when no budget is given)"),
    steps: int = typer.Option(0, "--steps", help="optimizer steps (a fixed seed then gives the same run)"),
    time: str | None = typer.Option(None, "--time", help="time budget, e.g. 10m"),
    lr: float = typer.Option(2e-3, "--lr", help="peak learning rate"),
    batch_size: int = typer.Option(4, "--batch-size", help="examples per step"),
    val: float = typer.Option(0.1, "--val", help="share of examples held out to measure (0: none)"),
    out: Path | None = typer.Option(None, "--out", help="run folder (default: $EMBER_HOME/tune/NAME)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in the run folder"),
    seed: int = typer.Option(1337, "--seed"),
    device: str = typer.Option("auto", "--device", help="cpu or cuda (default: cuda when present)"),
):
    """LoRA-tune BASE on your chat examples; NAME is served as an adapter over BASE, or merged with --merge."""
    started = clock.perf_counter()  # --time is the whole command's, imports and loading included
    torch_threads_yield()
    for module in ("torch", "peft", "transformers", "accelerate", "matplotlib"):
        require(module, "tune", "ember tune")
    from ember.store.store import ModelStore
    from ember.tune.lora import TuneConfig
    from ember.tune.run import run

    settings = Settings.from_env()
    store = ModelStore(settings.models)
    folder = out or settings.home / "tune" / name.replace(":", "-").replace("/", "-")
    if data is None and not resume:
        raise BadRequest("say what to learn from: --data CHATS.jsonl")
    base = _stored_base(base, name, store)
    if not (epochs or steps or time or resume):
        epochs = 3.0
    cfg = TuneConfig(base=base, data=str(data.resolve()) if data else "", out_dir=str(folder), rank=rank,
                     alpha=alpha, targets=[t.strip() for t in targets.split(",") if t.strip()], epochs=epochs,
                     steps=steps, time_s=parse_duration(time, "--time") if time else 0.0, lr=lr,
                     batch_size=batch_size, val_fraction=val, seed=seed, device=device)
    try:
        path = run(cfg, name, store, merge=merge, resume=resume, console=err, started=started)
    except KeyboardInterrupt:
        err.print(f"interrupted: the run is saved in {folder}; go on with: ember tune {base} --name {name} --resume "
                  "[--time …]")
        sys.exit(130)
    err.print(f"wrote {path}; try: ember run {name} \"…\"")


def _stored_base(base: str, name: str, store) -> str:
    """A Hugging Face folder is converted into the store first (F16), as `<name>-base`: an adapter needs a base
    that llama.cpp can load, and the weights are then read from it like any stored model's."""
    if not Path(base).is_dir():
        return base
    from ember.train.convert_llama import check, publish

    stored = f"{name.split(':')[0]}-base"
    check(Path(base), stored, "f16")
    err.print(f"converting {base} to GGUF (F16) as '{stored}'…")
    publish(Path(base), stored, "f16")
    return stored
