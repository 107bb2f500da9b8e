"""From a request's model name and options to the stored model, its options in force and what to load."""

import logging
from dataclasses import dataclass

from ember.config import Settings
from ember.core.options import Options, resolve
from ember.engines.base import LoadSpec, Role
from ember.store.store import Model, ModelStore

log = logging.getLogger("ember.runtime")


@dataclass
class Plan:
    model: Model
    options: Options
    spec: LoadSpec


def plan(store: ModelStore, settings: Settings, name: str, options: Options, preset: str | None,
         role: Role) -> Plan:
    """Reads the store and the GGUF header: blocking, so callers on the event loop run it in a thread."""
    model = store.get(name)
    resolved = resolve(model.params, options, preset)
    trained = model.info.context_length or resolved.num_ctx or settings.context_length
    # An encoder's window is short (512 for BERT) and costs little: it gets all of it unless asked otherwise.
    encoder = role is Role.EMBED and model.info.model_info.get(f"{model.info.architecture}.attention.causal") is False
    num_ctx = resolved.num_ctx or (trained if encoder else settings.context_length)
    if num_ctx > trained:
        log.warning("%s: num_ctx %d is above the model's trained length; using %d", model.name, num_ctx, trained)
        num_ctx = trained
    spec = LoadSpec(model_path=model.model_path, role=role, adapter_paths=tuple(model.adapter_paths),
                    num_ctx=num_ctx, num_batch=resolved.num_batch, num_thread=resolved.num_thread,
                    num_parallel=settings.num_parallel or None)
    return Plan(model, resolved, spec)
