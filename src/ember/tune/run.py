"""`ember tune` from start to finish: check, load, tune, write the adapter (or the merged model), name it."""

import time
from pathlib import Path

from ember.core.errors import BadRequest
from ember.store.modelfile import CreateSpec
from ember.store.store import ModelStore
from ember.tune import adapter as A
from ember.tune.base import chat_format, check, load_torch
from ember.tune.data import read_chats, split
from ember.tune.lora import CKPT, TuneConfig, load_checkpoint, tune

ADAPTER, MERGED = "adapter.gguf", "merged-f16.gguf"


def _say(console, text: str) -> None:
    if console:
        console.print(text)


def prepare(cfg: TuneConfig, store: ModelStore):
    """Everything that can be refused, before the minutes of loading: the base, the data and the split."""
    cfg.check()
    base = check(store.get(cfg.base))
    fmt = chat_format(base)
    examples = [fmt.example(messages) for messages in read_chats(Path(cfg.data))]
    train, val = split(examples, cfg.val_fraction, cfg.seed)
    return base, train, val


def run(cfg: TuneConfig, name: str, store: ModelStore, *, merge: bool = False, resume: bool = False,
        console=None, started: float | None = None) -> Path:
    """Tune cfg.base on cfg.data and create `name` in the store; returns the GGUF written (adapter or merged).
    `started` (a perf_counter reading) is when the command began, for a time budget that covers it all."""
    started = started or time.perf_counter()
    out = Path(cfg.out_dir)
    blob = None
    if resume:
        blob = load_checkpoint(out)
        saved = blob["tune_config"]
        if blob.get("finished") and not (cfg.epochs or cfg.steps or cfg.time_s):
            # A finished run resumed with no new budget is only written out again (e.g. --merge): not one more step.
            saved.update(epochs=0.0, time_s=0.0, steps=blob["state"]["step"])
        for key in ("epochs", "steps", "time_s", "device"):  # how long to go on, and where, may change
            if getattr(cfg, key) or key == "device":
                saved[key] = getattr(cfg, key)
        cfg = TuneConfig(**saved)
    elif (out / CKPT).exists():
        raise BadRequest(f"{out} already holds a tuning run: continue it with --resume, or pick another --name")
    base, train, val = prepare(cfg, store)
    _say(console, f"{len(train)} examples to learn from, {len(val)} held out; "
                  f"{sum(e.learned for e in train)} reply tokens; loading {cfg.base}…")
    torch_model = load_torch(base)
    peft_model = tune(torch_model, train, val, cfg, blob=blob, spent_s=time.perf_counter() - started,
                      console=console)
    loras = A.loras(peft_model, base.architecture, base.permuted_qk)
    model = base.model
    if merge:
        path = A.write_merged(out / MERGED, model.model_path, loras, name)
        # The merged GGUF carries the base's own template; a Modelfile TEMPLATE (a catalog model's) is kept too.
        spec = CreateSpec(from_=str(path), parameters=dict(model.params), template=model.template,
                          system=model.system, license=model.license)
    else:
        path = A.write_adapter(out / ADAPTER, loras, base.architecture, cfg.alpha, model.name)
        spec = CreateSpec(from_=model.name, adapters=[str(path)])
    store.create(name, spec)
    _say(console, f"created {name} ({'merged, F16' if merge else 'LoRA adapter over ' + model.name}); "
                  f"log.json and loss.png in {out}")
    return path
