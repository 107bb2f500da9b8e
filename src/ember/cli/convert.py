"""`ember convert`: a Hugging Face model folder → GGUF, straight into the model store.

Needs no optional part: safetensors are read with the gguf package, which a plain install has.
"""

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ember.cli.progress import run_job
from ember.core.humanize import size as human_size
from ember.runtime.jobs import Job

err = Console(stderr=True, highlight=False)


def convert(
    src: Path = typer.Argument(..., help="a Hugging Face model folder: config.json, *.safetensors, tokenizer.json"),
    name: str = typer.Option(..., "--name", help="the model's name in the store"),
    ftype: str = typer.Option("f16", "--type", help="f32, f16, bf16, or a quantization: q8_0, q4_k_m, …"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
):
    """Convert a Hugging Face model (Llama, Mistral, Qwen2 or a BERT encoder) to GGUF and add it to the store."""
    from ember.train.convert_llama import check, publish

    check(src, name, ftype)  # a plain error line, before any progress bar
    result = run_job(Job("convert", f"convert {src}", lambda report: publish(src, name, ftype, report)), err, quiet)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    model = _store_model(name)
    params = f"{result.parameters / 1e6:.1f} M parameters, " if result.parameters else ""
    err.print(f"converted {escape(result.architecture)} ({params}context {result.context_length}) to "
              f"{result.ftype}, {human_size(model.size)}", soft_wrap=True)
    err.print(f"tokenizer: {escape(result.tokenizer)}; chat template: {'yes' if result.chat_template else 'no'}",
              soft_wrap=True)
    err.print(f"created model '{escape(model.name)}'; try: ember run {escape(name)} \"Hello\"", soft_wrap=True)


def _store_model(name: str):
    from ember.config import Settings
    from ember.store.store import ModelStore

    return ModelStore(Settings.from_env().models).get(name)
