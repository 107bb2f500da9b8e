"""The training loop: AdamW, warmup then cosine decay, clipping, accumulation, evals, checkpoints, resume.

Read it top to bottom like nanoGPT's train.py. One process trains on all cores; under `torchrun` each process
trains a replica through DistributedDataParallel (gloo on CPU, NCCL on CUDA) and rank 0 writes everything.
A run is reproducible for a given seed when it is bounded by --steps; a --time budget ends wherever the clock says.
"""

import contextlib
import io
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ember.core.errors import BadRequest
from ember.fsutil import atomic_file, atomic_write_bytes, atomic_write_text
from ember.train import data as D
from ember.train.model import SIZES, Llama, ModelConfig
from ember.train.tokenizer import Tokenizer

CKPT, TOKENIZER, LOG, PLOT = "ckpt.pt", "tokenizer.json", "log.json", "loss.png"


@dataclass
class TrainConfig:
    data: list[str]  # files, folders, or the names of bundled corpora (data.data_path)
    out_dir: str
    size: str = "tiny"
    layers: int | None = None  # each of these overrides the named size
    dim: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    ctx: int | None = None
    steps: int = 0  # 0: until the time budget ends
    time_s: float = 0.0  # 0: until the steps are done
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 0.0  # 0: by size (smaller models take larger steps)
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    clip: float = 1.0
    eval_every: int = 0  # steps; 0: ten times per run
    eval_iters: int = 10
    seed: int = 1337
    device: str = "auto"
    tokenizer: str = "bpe"
    vocab: int | None = None
    chat: bool = False

    def model_config(self, vocab_size: int) -> ModelConfig:
        if self.size not in SIZES:
            raise BadRequest(f"unknown --size {self.size!r} (known: {', '.join(SIZES)})")
        shape = dict(SIZES[self.size])
        for key, value in (("n_layer", self.layers), ("dim", self.dim), ("n_head", self.heads),
                           ("n_kv_head", self.kv_heads), ("ctx", self.ctx)):
            if value is not None:
                shape[key] = value
        if self.heads is not None and self.kv_heads is None:
            shape["n_kv_head"] = shape["n_head"]
        try:
            return ModelConfig(vocab_size=vocab_size, **shape)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def peak_lr(self) -> float:
        return self.lr or {"tiny": 3e-3, "small": 1.5e-3, "base": 6e-4}.get(self.size, 1e-3)


@dataclass
class State:
    """Everything a checkpoint holds besides the weights and the optimizer."""
    step: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumes
    tokens: int = 0
    history: list = field(default_factory=list)  # [step, seconds, train loss, lr]
    evals: list = field(default_factory=list)  # [step, seconds, val loss]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadRequest("--device cuda asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise BadRequest(f"unknown --device {name!r}; use cpu or cuda")
    return torch.device(name)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over cfg.warmup steps, then cosine from the peak down to min_lr_ratio of it at progress 1."""
    peak = cfg.peak_lr()
    warmup = min(cfg.warmup, cfg.steps // 5) if cfg.steps else cfg.warmup  # a short run must not end in warmup
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def make_optimizer(model: Llama, cfg: TrainConfig) -> torch.optim.AdamW:
    # As in nanoGPT: decay the matrices, not the norm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.peak_lr(), betas=(0.9, cfg.beta2))


@torch.no_grad()
def evaluate(model: Llama, val: torch.Tensor, cfg: TrainConfig, ctx: int, device) -> float:
    """Mean loss on the same eval_iters held-out batches every time, so evals compare."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.eval_iters):
        x, y = D.batch(val, cfg.batch_size, ctx, gen)
        losses.append(model(x.to(device), y.to(device))[1].item())
    model.train()
    return sum(losses) / len(losses)


def save_checkpoint(out: Path, model: Llama, opt, cfg: TrainConfig, state: State, gen: torch.Generator) -> None:
    blob = {"model": model.state_dict(), "optimizer": opt.state_dict(), "model_config": model.cfg.to_dict(),
            "train_config": asdict(cfg), "state": asdict(state), "generator": gen.get_state()}
    with atomic_file(out / CKPT) as f:
        torch.save(blob, f)


def load_model(out: Path, device="cpu") -> tuple[Llama, Tokenizer, dict]:
    """The model and tokenizer of a checkpoint folder, ready for sampling or export."""
    path = Path(out) / CKPT
    if not path.is_file():
        raise BadRequest(f"no checkpoint at {path}; train one first with: ember train --data PATH --name NAME")
    blob = torch.load(path, map_location=device, weights_only=True)
    model = Llama(ModelConfig(**blob["model_config"])).to(device)
    model.load_state_dict(blob["model"])
    model.eval()
    return model, Tokenizer.load(Path(out) / TOKENIZER, blob["train_config"]["tokenizer"]), blob


def write_report(out: Path, cfg: TrainConfig, mcfg: ModelConfig, n_params: int, state: State) -> None:
    """log.json with every step and eval, and loss.png with the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = {"train_config": asdict(cfg), "model_config": mcfg.to_dict(), "parameters": n_params,
           "steps": state.step, "seconds": round(state.elapsed, 2), "tokens": state.tokens,
           "final_val_loss": state.evals[-1][2] if state.evals else None,
           "history": state.history, "evals": state.evals}
    atomic_write_text(out / LOG, json.dumps(log, indent=1))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if state.history:
        steps = [h[0] for h in state.history]
        losses = [h[2] for h in state.history]
        k = max(1, len(losses) // 50)  # a running mean keeps the train curve readable
        windows = [losses[max(0, i - k + 1):i + 1] for i in range(len(losses))]
        smooth = [sum(w) / len(w) for w in windows]
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(steps, smooth, color="tab:blue", label="train")
    if state.evals:
        ax.plot([e[0] for e in state.evals], [e[2] for e in state.evals], "o-", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(f"{n_params / 1e6:.2f} M parameters, {state.tokens / 1e6:.1f} M tokens, {state.elapsed:.0f} s")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out / PLOT, buf.getvalue())


def _distributed() -> tuple[int, int]:
    """(rank, world size); sets up the process group when torchrun launched us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() and
                                os.environ.get("EMBER_DEVICE", "") != "cpu" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(cfg: TrainConfig, resume: bool = False, console=None) -> Path:
    """Train into cfg.out_dir (ckpt.pt, tokenizer.json, log.json, loss.png); returns that folder."""
    rank, world = _distributed()
    master = rank == 0
    out = Path(cfg.out_dir)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())

    blob = None
    if resume:
        if not (out / CKPT).is_file():
            raise BadRequest(f"nothing to resume: no checkpoint at {out / CKPT}")
        blob = torch.load(out / CKPT, map_location="cpu", weights_only=True)
        saved = blob["train_config"]
        # What the user can change on resume: how long to go on (else as before), and where it runs.
        for key in ("steps", "time_s", "device", "eval_every"):
            if getattr(cfg, key) or key == "device":
                saved[key] = getattr(cfg, key)
        cfg = TrainConfig(**saved)
        tok = Tokenizer.load(out / TOKENIZER, cfg.tokenizer)
    docs = D.read_documents(cfg.data, chat=cfg.chat)
    if not resume:
        tok = Tokenizer.train(docs, cfg.tokenizer, cfg.vocab)
    mcfg = ModelConfig(**blob["model_config"]) if blob else cfg.model_config(tok.vocab_size)
    ids = D.tokenize(docs, tok)
    splits = D.split(ids, mcfg.ctx, D.assistant_targets(ids, tok) if cfg.chat else None)
    if not cfg.steps and not cfg.time_s:
        raise BadRequest("say how long to train: --steps N or --time 10m")

    torch.manual_seed(cfg.seed)
    model = Llama(mcfg).to(device)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    state = State()
    if blob:
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        state = State(**blob["state"])
        if rank == 0:
            gen.set_state(blob["generator"])
    elif master:
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / TOKENIZER)
    raw = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)

    tokens_per_step = cfg.batch_size * mcfg.ctx * cfg.grad_accum * world

    def progress() -> float:
        parts = ([state.step / cfg.steps] if cfg.steps else []) + ([state.elapsed / cfg.time_s] if cfg.time_s else [])
        return max(parts)

    bar = _Bar(console, cfg, raw.num_params(), tokens_per_step) if master else None
    eval_every = cfg.eval_every or (max(1, cfg.steps // 10) if cfg.steps else 0)
    next_eval = 0.1  # with a time budget and no eval_every: an eval each tenth of the run
    # Ctrl-C ends the run at the next step boundary, so the checkpoint is exactly a step's state; a second one
    # stops at once.
    stop = []

    def on_sigint(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(True)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    last = time.perf_counter()
    interrupted = False
    try:
        while progress() < 1 and not interrupted:
            lr = lr_at(cfg, state.step, progress())
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                x, y = D.batch(splits.train, cfg.batch_size, mcfg.ctx, gen)
                sync = micro == cfg.grad_accum - 1 or world == 1
                with model.no_sync() if not sync else contextlib.nullcontext():
                    _, loss = model(x.to(device), y.to(device))
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.item()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens += tokens_per_step
            now = time.perf_counter()  # the clock includes evals and checkpoints: a budget is wall time
            seconds, interrupted = _agree(now - last, bool(stop), world)
            state.elapsed += seconds
            last = now
            state.history.append([state.step, round(state.elapsed, 3), round(loss_sum / cfg.grad_accum, 4), lr])
            done = progress() >= 1 or interrupted
            due = (state.step % eval_every == 0) if eval_every else progress() >= next_eval
            if master and (due or done):
                next_eval = math.floor(progress() * 10 + 1) / 10
                state.evals.append([state.step, round(state.elapsed, 3), round(evaluate(raw, splits.val, cfg, mcfg.ctx,
                                                                                        device), 4)])
                save_checkpoint(out, raw, opt, cfg, state, gen)
            if bar:
                bar.update(state, progress())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        if bar:
            bar.close()
    if master:
        write_report(out, cfg, mcfg, raw.num_params(), state)
    if world > 1:
        # Torn down together: a rank that left while the master still wrote its report once aborted in gloo's
        # teardown ("terminate called without an active exception", SIGABRT) on a loaded machine.
        dist.barrier()
        dist.destroy_process_group()
    if interrupted:
        raise KeyboardInterrupt
    return out


def _agree(seconds: float, stop: bool, world: int) -> tuple[float, bool]:
    """Under DDP every rank must stop at the same step, so they share rank 0's clock and Ctrl-C."""
    if world == 1:
        return seconds, stop
    t = torch.tensor([seconds, float(stop)], dtype=torch.float64)
    dist.broadcast(t, 0)
    return float(t[0]), bool(t[1])


class _Bar:
    """A rich progress bar: step, loss, val loss, tokens/s and time left."""

    def __init__(self, console, cfg: TrainConfig, n_params: int, tokens_per_step: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.tokens_per_step = tokens_per_step
        self.progress = Progress(TextColumn("[bold]training[/bold]"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=1000, info=f"{n_params / 1e6:.2f} M parameters")
        self.last = None

    def update(self, state: State, frac: float) -> None:
        recent = state.history[-20:]
        loss = sum(h[2] for h in recent) / len(recent)
        span = recent[-1][1] - (state.history[-21][1] if len(state.history) > 20 else 0)
        rate = len(recent) * self.tokens_per_step / span if span > 0 else 0
        val = f" val {state.evals[-1][2]:.3f}" if state.evals else ""
        info = f"step {state.step} loss {loss:.3f}{val} {rate:,.0f} tok/s"
        self.progress.update(self.task, completed=min(1000, int(frac * 1000)), info=info)

    def close(self) -> None:
        self.progress.stop()
