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
from dataclasses import asdict, dataclass, field, replace
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
    size: str | None = None  # a named shape (SIZES); None: chosen from the budget and the data (LADDER)
    layers: int | None = None  # each of these overrides the named or chosen shape
    dim: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    ctx: int | None = None
    steps: int = 0  # 0: until the time budget ends
    time_s: float = 0.0  # 0: until the steps are done
    batch_size: int | None = None  # None: chosen with the shape
    grad_accum: int = 1
    lr: float = 0.0  # 0: chosen with the shape (smaller models take larger steps)
    min_lr_ratio: float = 0.1
    warmup: int | None = None  # steps; None: the first WARMUP share of the run, in steps or in time
    weight_decay: float = 0.1
    beta2: float = 0.99
    clip: float = 1.0
    eval_every: int = 0  # steps; 0: ten times per run
    eval_iters: int = 5
    seed: int = 1337
    device: str = "auto"
    tokenizer: str = "bpe"
    vocab: int | None = None
    chat: bool = False

    def model_config(self, vocab_size: int) -> ModelConfig:
        if self.size is not None and self.size not in SIZES:
            raise BadRequest(f"unknown --size {self.size!r} (known: {', '.join(SIZES)})")
        shape = dict(SIZES[self.size]) if self.size else {}
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
        return self.lr or {"tiny": 3e-3, "small": 1.5e-3, "base": 6e-4}.get(self.size or "", 1e-3)


@dataclass(frozen=True)
class Rung:
    """One shape of the LADDER, with the batch and peak learning rate that suit it."""
    layers: int
    dim: int
    ctx: int
    batch: int
    lr: float
    from_tokens: float  # taken only when the run can afford this many tokens at this shape's speed


# What a run trains when the user names no shape: the highest rung the budget affords. A rung is taken when the run
# can give it at least about as many tokens as the rung below has parameters (from_tokens, counted at this rung's
# speed). That is where, by the hand-tuned runs of bench/train_shakespeare.py on two CPU cores, the bigger model
# starts to end lower: 4 × 128 was best for 1.5 minutes (0.8 M parameters, ~0.9 M tokens) and 6 × 192 for 15
# (2.7 M, ~5 M tokens): ten times the compute for about three times the parameters, so the best size grows with the
# square root of the compute and tokens per parameter stay near one at every rung. 5 × 160 sits between them, where
# both of those are as good as each other. The batch and peak lr of those two are tuned; the others follow them.
# Heads are 32 dims wide; plain multi-head attention (grouped K/V saves nothing worth having this small).
LADDER = (
    Rung(2, 64, 64, 16, 5e-3, 0),
    Rung(4, 128, 128, 16, 4e-3, 0.15e6),
    Rung(5, 160, 128, 24, 3.5e-3, 0.9e6),
    Rung(6, 192, 128, 32, 3e-3, 1.8e6),
    Rung(8, 256, 256, 32, 2e-3, 3e6),
    Rung(8, 384, 256, 64, 1e-3, 7e6),
    Rung(12, 512, 512, 64, 6e-4, 16e6),
)
PARAMS_PER_TOKEN = 3  # a model larger than this per training token only learns the text by heart
TIMED_FROM = 30.0  # seconds: a shorter --time trains the bottom rung rather than spend itself timing others
# Of the run: 100 fixed steps left an 82-second run in warmup and are nothing to a long one. A tenth, as the tuned
# runs had (50 of ~430 steps at lr 4e-3): with a twentieth of that, a 4 × 128 run ended at 2.14 instead of 1.85.
WARMUP = 0.1
NAMED_BATCH = 32  # with --size and no --batch-size, as before the ladder


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


def lr_at(cfg, step: int, progress: float) -> float:
    """Linear warmup, then cosine from the peak down to min_lr_ratio of it at progress 1. The warmup is cfg.warmup
    steps (a step-bound run spends at most a fifth of itself there), or, where that is None, the first WARMUP of the
    run, counted in steps or in time, whichever bounds it."""
    peak = cfg.peak_lr()
    if cfg.warmup is None:
        done = max(progress, (step + 1) / cfg.steps if cfg.steps else 0.0)
        if done < WARMUP:
            return peak * max(done / WARMUP, 1e-3)
    else:
        warmup = min(cfg.warmup, cfg.steps // 5) if cfg.steps else cfg.warmup  # a short run must not end in warmup
        if step < warmup:
            return peak * (step + 1) / warmup
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def on_rung(cfg: TrainConfig, rung: Rung) -> TrainConfig:
    """cfg with what the user left open taken from the rung; what they set stays."""
    dim = cfg.dim or rung.dim
    # Heads of 32 dims where the dim allows (else 16, 8, 2), in whole groups of any --kv-heads given.
    heads = cfg.heads or next((h for h in (dim // 32, dim // 16, dim // 8, dim // 2) if h >= 1 and dim % h == 0
                               and (dim // h) % 2 == 0 and (not cfg.kv_heads or h % cfg.kv_heads == 0)),
                              cfg.kv_heads or 1)
    return replace(cfg, layers=cfg.layers or rung.layers, dim=dim, heads=heads,
                   kv_heads=cfg.kv_heads or heads, ctx=cfg.ctx or rung.ctx,
                   batch_size=cfg.batch_size or rung.batch, lr=cfg.lr or rung.lr)


def flops_per_token(mcfg: ModelConfig) -> float:
    """Forward and backward: 6 per parameter, plus attention over the context (causal: half of it)."""
    return 6 * mcfg.num_params() + 6 * mcfg.n_layer * mcfg.ctx * mcfg.dim


def measure_speed(cfg: TrainConfig, vocab_size: int, device, steps: int = 1) -> float:
    """Tokens per second that cfg's shape trains at here: a step on random tokens, after an untimed one."""
    mcfg = cfg.model_config(vocab_size)
    model = Llama(mcfg).to(device)
    opt = make_optimizer(model, cfg)
    x = torch.randint(vocab_size, (cfg.batch_size, mcfg.ctx), generator=torch.Generator().manual_seed(0)).to(device)

    def step():
        for _ in range(cfg.grad_accum):
            model(x, x)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg.batch_size * mcfg.ctx * cfg.grad_accum / (time.perf_counter() - start)


def _number(x: float) -> str:
    return f"{x / 1e6:.1f} M" if x >= 10**6 else f"{x / 1e3:.0f} k" if x >= 10**4 else f"{x:,.0f}"


def _lr(x: float) -> str:
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _duration(seconds: float) -> str:
    """As --time takes it: whole hours or minutes where they are whole, else seconds."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def settle(cfg: TrainConfig, vocab_size: int, train_tokens: int, world: int = 1,
           measure=None) -> tuple[TrainConfig, dict]:
    """cfg with every setting the user left open chosen, and what was chosen and why (printed and logged).

    With no --size, the shape, batch, context and peak lr come from the LADDER: the biggest rung whose model is at
    most PARAMS_PER_TOKEN parameters per training token and whose budget buys at least its from_tokens (steps × the
    tokens of a step, or the time left × the tokens per second that `measure(cfg)` times). Rungs are tried from the
    bottom; one that an optimistic guess from the rung below already rules out is not timed, and a budget under
    TIMED_FROM times none."""
    spent = 0.0  # seconds of timing, taken from a --time budget

    def per_step(c: TrainConfig) -> int:
        return c.batch_size * c.model_config(vocab_size).ctx * c.grad_accum * world

    def afford(c: TrainConfig) -> tuple[float, float | None]:
        """Tokens the budget buys at c's shape, and c's tokens per second where it was timed."""
        nonlocal spent
        tokens = [cfg.steps * per_step(c)] if cfg.steps else []
        rate = None
        if cfg.time_s:
            started = time.perf_counter()
            rate = measure(c) * world
            spent += time.perf_counter() - started
            tokens.append(max(0.0, cfg.time_s - spent) * rate)
        return min(tokens), rate

    tokens = rate = None
    if cfg.size:
        cfg = replace(cfg, batch_size=cfg.batch_size or NAMED_BATCH)
    else:
        rungs, seen = [], set()
        for rung in LADDER:
            c = on_rung(cfg, rung)
            key = (c.layers, c.dim, c.heads, c.kv_heads, c.ctx, c.batch_size, c.lr)
            if key in seen or (rungs and c.model_config(vocab_size).num_params() > PARAMS_PER_TOKEN * train_tokens):
                continue
            seen.add(key)
            rungs.append((rung, c))
        cfg, last = rungs[0][1], None  # last: the rung last timed, and its tokens per second
        if cfg.time_s and cfg.time_s < TIMED_FROM:
            rungs = rungs[:1]
        elif cfg.time_s and len(rungs) > 1:  # the bottom rung is quick to time, and bounds the next one's speed
            tokens, rate = afford(cfg)
            last = (cfg, rate)
        for rung, c in rungs[1:]:
            if cfg.time_s and last:
                # Bigger shapes run more flops per second than smaller ones, but not three times more.
                guess = 3 * last[1] * flops_per_token(last[0].model_config(vocab_size)) / flops_per_token(
                    c.model_config(vocab_size))
                if guess * (cfg.time_s - spent) < rung.from_tokens:
                    break
            t, r = afford(c)
            last = (c, r) if r else last
            if t < rung.from_tokens:
                break
            cfg, tokens, rate = c, t, r
    if tokens is None and cfg.steps and not cfg.time_s:
        tokens = cfg.steps * per_step(cfg)
    chosen = {"budget_tokens": round(tokens) if tokens else None, "tokens_per_s": round(rate) if rate else None}
    mcfg = cfg.model_config(vocab_size)
    chosen.update(layers=mcfg.n_layer, dim=mcfg.dim, heads=mcfg.n_head, kv_heads=mcfg.n_kv_head, ctx=mcfg.ctx,
                  batch_size=cfg.batch_size, lr=cfg.peak_lr(), parameters=mcfg.num_params(),
                  warmup=f"{WARMUP:.0%}" if cfg.warmup is None else cfg.warmup, timing_s=round(spent, 2))
    return cfg, chosen


def describe(cfg: TrainConfig, chosen: dict, data_tokens: int) -> str:
    """The run's settings in one line, as it starts: what the budget bought on this data."""
    budget = " and ".join(([f"--steps {cfg.steps}"] if cfg.steps else []) +
                          ([f"--time {_duration(cfg.time_s)}"] if cfg.time_s else []))
    unit = "characters" if cfg.tokenizer == "char" else "tokens"
    batch = f"{cfg.batch_size} × {chosen['ctx']}" + (f" × {cfg.grad_accum}" if cfg.grad_accum > 1 else "")
    warmup = f"warmup {chosen['warmup']}" + (" steps" if isinstance(chosen["warmup"], int) else "")
    line = (f"{budget} on {_number(data_tokens)} {unit}: {chosen['layers']} layers × {chosen['dim']} dims "
            f"({_number(chosen['parameters'])} parameters), batch {batch}, peak lr {_lr(cfg.peak_lr())}, {warmup}")
    why = []
    if chosen.get("budget_tokens"):
        why.append(f"about {_number(chosen['budget_tokens'])} tokens" + (
            f" at {chosen['tokens_per_s']:,} tokens/s" if chosen.get("tokens_per_s") else ""))
    return line + (f" ({'; '.join(why)})" if why else "")


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


def save_checkpoint(out: Path, model: Llama, opt, cfg: TrainConfig, state: State, gen: torch.Generator,
                    chosen: dict | None = None) -> None:
    blob = {"model": model.state_dict(), "optimizer": opt.state_dict(), "model_config": model.cfg.to_dict(),
            "train_config": asdict(cfg), "state": asdict(state), "generator": gen.get_state(), "chosen": chosen}
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


def write_report(out: Path, configs: dict, n_params: int, state: State, what: str = "parameters") -> None:
    """log.json with every step and eval (after `configs`, what the run was told), and loss.png with the curves.
    `what` names the parameters counted: a tuning run counts the ones it trains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = {**configs, "parameters": n_params, "steps": state.step, "seconds": round(state.elapsed, 2),
           "tokens": state.tokens,
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
    tokens = f"{state.tokens / 1e6:.1f} M" if state.tokens >= 10**6 else f"{state.tokens:,}"
    ax.set_title(f"{n_params / 1e6:.2f} M {what}, {tokens} tokens, {state.elapsed:.0f} s")
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
    if not cfg.steps and not cfg.time_s:
        raise BadRequest("say how long to train: --steps N or --time 10m")
    ids = D.tokenize(docs, tok)
    chosen, timing = (blob or {}).get("chosen"), 0.0
    if not blob:
        cfg, chosen = settle(cfg, tok.vocab_size, int(len(ids) * 0.9), world,
                             measure=lambda c: measure_speed(c, tok.vocab_size, device) if master else 0.0)
        timing = chosen["timing_s"]
        if world > 1:  # only rank 0 timed the shapes
            cfg, timing = _share_choice(cfg, timing)
        chosen["summary"] = describe(cfg, chosen, len(ids))
        if master and console:
            console.print(chosen["summary"])
    mcfg = ModelConfig(**blob["model_config"]) if blob else cfg.model_config(tok.vocab_size)
    splits = D.split(ids, mcfg.ctx, D.assistant_targets(ids, tok) if cfg.chat else None)

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

    # Timing the shapes took the first seconds of a --time budget; the schedule (warmup first) spans the rest.
    budget_s = max(cfg.time_s - timing, 1e-3)

    def progress() -> float:
        parts = ([state.step / cfg.steps] if cfg.steps else []) + ([state.elapsed / budget_s] if cfg.time_s else [])
        return max(parts)

    bar = Bar(console, raw.num_params(), tokens_per_step) if master else None
    eval_every = cfg.eval_every or (max(1, cfg.steps // 10) if cfg.steps else 0)
    next_eval = 0.1  # with a time budget and no eval_every: an eval each tenth of the run
    stop = StopAtStep()
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
            seconds, interrupted = _agree(now - last, stop.asked, world)
            state.elapsed += seconds
            last = now
            state.history.append([state.step, round(state.elapsed, 3), round(loss_sum / cfg.grad_accum, 4), lr])
            done = progress() >= 1 or interrupted
            due = (state.step % eval_every == 0) if eval_every else progress() >= next_eval
            if master and (due or done):
                next_eval = math.floor(progress() * 10 + 1) / 10
                state.evals.append([state.step, round(state.elapsed, 3), round(evaluate(raw, splits.val, cfg, mcfg.ctx,
                                                                                        device), 4)])
                save_checkpoint(out, raw, opt, cfg, state, gen, chosen)
            if bar:
                bar.update(state, progress())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.restore()
        if bar:
            bar.close()
    if master:
        write_report(out, {"train_config": asdict(cfg), "model_config": mcfg.to_dict(), "chosen": chosen},
                     raw.num_params(), state)
    if world > 1:
        # Torn down together: a rank that left while the master still wrote its report once aborted in gloo's
        # teardown ("terminate called without an active exception", SIGABRT) on a loaded machine.
        dist.barrier()
        dist.destroy_process_group()
    if interrupted:
        raise KeyboardInterrupt
    return out


class StopAtStep:
    """Ctrl-C ends a run at the next step boundary, so that the checkpoint is exactly a step's state; a second
    Ctrl-C stops at once. (Outside the main thread, as in tests, signals are left alone.)"""

    def __init__(self):
        self.asked = False
        self._in_main = threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(signal.SIGINT, self._on_sigint) if self._in_main else None

    def _on_sigint(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def restore(self) -> None:
        if self._in_main:
            signal.signal(signal.SIGINT, self._previous)


def _share_choice(cfg: TrainConfig, timing: float) -> tuple[TrainConfig, float]:
    """Rank 0's choice, and the seconds it took, for every rank: they must train one shape and stop together."""
    keys = ("layers", "dim", "heads", "kv_heads", "ctx", "batch_size")
    t = torch.tensor([float(getattr(cfg, k) or 0) for k in keys] + [cfg.lr, timing], dtype=torch.float64)
    dist.broadcast(t, 0)
    values = t.tolist()
    return replace(cfg, lr=values[-2], **{k: int(v) or None for k, v in zip(keys, values)}), values[-1]


def _agree(seconds: float, stop: bool, world: int) -> tuple[float, bool]:
    """Under DDP every rank must stop at the same step, so they share rank 0's clock and Ctrl-C."""
    if world == 1:
        return seconds, stop
    t = torch.tensor([seconds, float(stop)], dtype=torch.float64)
    dist.broadcast(t, 0)
    return float(t[0]), bool(t[1])


class Bar:
    """A rich progress bar: step, loss, val loss, tokens/s and time left."""

    def __init__(self, console, n_params: int, tokens_per_step: int, verb: str = "training",
                 what: str = "parameters"):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.tokens_per_step = tokens_per_step
        self.progress = Progress(TextColumn(f"[bold]{verb}[/bold]"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(verb, total=1000, info=f"{n_params / 1e6:.2f} M {what}")
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
