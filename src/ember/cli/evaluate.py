"""`ember eval`: how good a model is on the user's own text, measured the way llama.cpp measures it."""

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ember.config import Settings
from ember.core.errors import EmberError

eval_app = typer.Typer(no_args_is_help=True, help="Measure how well a model predicts your text.")
out = Console()
err = Console(stderr=True, highlight=False)


@eval_app.command("perplexity", no_args_is_help=True)
def perplexity(
    model: str = typer.Argument(..., help="a model in the store"),
    data: Path = typer.Option(..., "--data", help="a UTF-8 text file (at least one chunk of --ctx tokens)"),
    ctx: int = typer.Option(512, "--ctx", help="tokens per chunk; the second half of each is scored (as llama.cpp)"),
    threads: int | None = typer.Option(None, "--threads", help="default: one per core"),
):
    """Perplexity over the text, computed as llama.cpp's llama-perplexity does, so figures compare with its own."""
    from ember.quantize.perplexity import perplexity as measure
    from ember.store.store import ModelStore

    stored = ModelStore(Settings.from_env().models).get(model)
    try:
        text = data.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EmberError(f"cannot read {data} as UTF-8 text: {getattr(e, 'strerror', None) or e}") from None
    if stored.is_speech:
        raise EmberError(f"{model} is a speech-to-text model; perplexity is measured on language models")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[ppl]}"),
                  TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal) as bars:
        bar = bars.add_task(f"{model} on {data.name}", total=None, ppl="")

        def chunk_done(i: int, chunks: int, running: float) -> None:
            bars.update(bar, completed=i, total=chunks, ppl=f"PPL {running:.4f}")

        result = measure(stored.model_path, text, ctx=ctx, threads=threads, progress=chunk_done)
    out.print(f"{model}: PPL = {result.ppl:.4f} +/- {result.ppl_stderr:.4f}  ({result.chunks} chunks of {ctx} tokens, "
              f"{result.scored_tokens} tokens scored, mean NLL {result.nll:.5f} nats)", highlight=False)
