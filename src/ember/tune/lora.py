"""The LoRA tuning loop: the base frozen, low-rank matrices beside its Linear layers learned with AdamW.

Read it top to bottom like train/trainer.py, whose pieces it shares (learning-rate schedule, Ctrl-C at a step
boundary, progress bar, log.json and loss.png). Differences: batches are whole chat examples padded to the longest
in the batch (not windows of a token stream), and the loss is computed only where a reply is learned: the vocabulary
projection runs on those positions alone, which is most of the work saved for a 262k-token vocabulary like Gemma's.
"""

import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ember.core.errors import BadRequest
from ember.fsutil import atomic_file
from ember.train.trainer import Bar, State, StopAtStep, lr_at, pick_device, write_report
from ember.tune.data import Example

CKPT = "tune.pt"
# Noise for a user: transformers' deprecation inside peft, and peft looking for a Hugging Face config file beside
# the weights (a stored GGUF has none; the vocabulary is never changed here).
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)


@dataclass
class TuneConfig:
    base: str  # the stored model's name
    data: str  # a .jsonl of chats
    out_dir: str
    rank: int = 16
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: ["all-linear"])  # peft's names, or every Linear but the head
    epochs: float = 0.0  # each of epochs, steps and time_s bounds the run; the first reached ends it
    steps: int = 0
    time_s: float = 0.0
    lr: float = 2e-3
    batch_size: int = 4
    val_fraction: float = 0.1
    warmup: int = 10  # steps
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 1337
    device: str = "auto"

    def peak_lr(self) -> float:  # the name train's schedule (lr_at) asks for
        return self.lr

    def check(self) -> None:
        if self.rank < 1:
            raise BadRequest(f"--rank {self.rank}: give a positive rank (8 to 64 are usual)")
        if self.alpha <= 0:
            raise BadRequest(f"--alpha {self.alpha}: give a positive alpha (usually twice the rank)")
        if not 0 < self.lr < 1:
            raise BadRequest(f"--lr {self.lr}: give a learning rate between 0 and 1 (1e-4 to 2e-3 are usual)")
        if self.batch_size < 1:
            raise BadRequest(f"--batch-size {self.batch_size}: give at least 1")
        if not 0 <= self.val_fraction < 1:
            raise BadRequest(f"--val {self.val_fraction}: give the held-out share, from 0 to below 1")
        if not (self.epochs or self.steps or self.time_s):
            raise BadRequest("say how long to tune: --epochs N, --steps N or --time 10m")


def attach_lora(model, cfg: TuneConfig):
    """The base frozen and wrapped by peft, with LoRA matrices on the target Linear layers."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.targets[0] if cfg.targets == ["all-linear"] else cfg.targets
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    unknown = [t for t in cfg.targets if t != "all-linear" and t not in names]
    if unknown:
        raise BadRequest(f"--targets {', '.join(unknown)}: this model's Linear layers are {', '.join(sorted(names))} "
                         "(or all-linear)")
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)  # B starts at zero, A at random: the seed makes a --steps run repeatable
    return get_peft_model(model, config)


def reply_loss(model, batch: list[Example], device) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the learned positions of a padded batch, and how many there were."""
    width = max(len(e.ids) for e in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    targets = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):  # padded on the right: under causal attention no real token sees a pad
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        mask[row, :len(e.ids)] = 1
        targets[row, :len(e.targets)] = torch.tensor(e.targets)
    causal = model.get_base_model()
    hidden = causal.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    learned = targets != -100
    logits = causal.lm_head(hidden[learned.to(device)])  # (learned positions, vocab)
    cap = getattr(causal.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), targets[learned].to(device)), int(learned.sum())


@torch.no_grad()
def evaluate(model, examples: list[Example], cfg: TuneConfig, device) -> float:
    """Mean loss per learned token over the held-out examples."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), cfg.batch_size):
        loss, n = reply_loss(model, examples[i:i + cfg.batch_size], device)
        total += loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)


def batches(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The example indices of a step: epochs in turn, each a fresh shuffle, so a resumed run draws what it would
    have drawn."""
    first = step * batch_size
    out = []
    for position in range(first, first + batch_size):
        epoch, at = divmod(position, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[at])
    return out


def save_checkpoint(out: Path, model, opt, cfg: TuneConfig, state: State, finished: bool = False) -> None:
    from peft import get_peft_model_state_dict

    blob = {"lora": get_peft_model_state_dict(model), "optimizer": opt.state_dict(), "tune_config": asdict(cfg),
            "state": asdict(state), "finished": finished}
    with atomic_file(out / CKPT) as f:
        torch.save(blob, f)


def load_checkpoint(out: Path) -> dict:
    path = out / CKPT
    if not path.is_file():
        raise BadRequest(f"nothing to resume: no tuning checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def tune(model, train: list[Example], val: list[Example], cfg: TuneConfig, *, blob: dict | None = None,
         spent_s: float = 0.0, console=None):
    """LoRA-tune `model` (a transformers causal LM) in place; returns the peft model. Writes tune.pt, log.json and
    loss.png into cfg.out_dir. Raises KeyboardInterrupt after saving when Ctrl-C stopped it.

    `spent_s`, the seconds this command already spent (loading the base), counts against a time budget: a user's
    `--time 10m` is the whole command's."""
    from peft import set_peft_model_state_dict

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = attach_lora(model, cfg).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = State()
    if blob:
        set_peft_model_state_dict(model, blob["lora"])
        opt.load_state_dict(blob["optimizer"])
        state = State(**blob["state"])
    model.train()
    epoch_steps = math.ceil(len(train) / cfg.batch_size)
    steps = min(s for s in (cfg.steps, math.ceil(cfg.epochs * epoch_steps) if cfg.epochs else 0) if s) \
        if (cfg.steps or cfg.epochs) else 0
    schedule = TuneConfig(**{**asdict(cfg), "steps": steps})  # lr_at shortens warmup for a short run

    def progress() -> float:
        # A time budget ends a step early rather than a step late: the next step's likely length counts as spent.
        ahead = state.elapsed / state.step if state.step else 0.0
        parts = ([state.step / steps] if steps else []) + \
            ([(state.elapsed + spent_s + ahead) / cfg.time_s] if cfg.time_s else [])
        return max(parts)

    tokens_per_step = cfg.batch_size * (sum(len(e.ids) for e in train) / len(train))
    bar = Bar(console, n_trainable, tokens_per_step, verb="tuning", what="LoRA parameters") if console else None
    next_eval = 0.1
    stop = StopAtStep()
    last = time.perf_counter()
    interrupted = False
    try:
        while progress() < 1 and not interrupted:
            lr = lr_at(schedule, state.step, progress())
            for group in opt.param_groups:
                group["lr"] = lr
            batch = [train[i] for i in batches(len(train), cfg.batch_size, cfg.seed, state.step)]
            loss, _ = reply_loss(model, batch, device)
            loss.backward()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens += sum(len(e.ids) for e in batch)
            now = time.perf_counter()
            state.elapsed += now - last
            last = now
            interrupted = stop.asked
            state.history.append([state.step, round(state.elapsed, 3), round(loss.item(), 4), lr])
            if progress() >= next_eval or progress() >= 1 or interrupted:
                next_eval = math.floor(progress() * 10 + 1) / 10
                if val:
                    state.evals.append([state.step, round(state.elapsed, 3), round(evaluate(model, val, cfg, device),
                                                                                    4)])
                # The clock goes on meanwhile: a budget is wall time, as train's.
                save_checkpoint(out, model, opt, cfg, state, finished=progress() >= 1)
            if bar:
                bar.update(state, progress())
    except KeyboardInterrupt:
        interrupted = True
        save_checkpoint(out, model, opt, cfg, state)
    finally:
        stop.restore()
        if bar:
            bar.close()
    write_report(out, {"tune_config": asdict(cfg), "train_examples": len(train), "val_examples": len(val)},
                 n_trainable, state, what="LoRA parameters")
    if interrupted:
        raise KeyboardInterrupt
    return model
