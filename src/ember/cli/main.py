"""The `ember` command: a thin layer over the store, the scheduler and the server."""

import sys
from datetime import UTC
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from typer.exceptions import TyperException

from ember import __version__
from ember.cli import backup as backup_cli
from ember.cli import chat as chat_cli
from ember.cli import convert as convert_cli
from ember.cli import doctor as doctor_cli
from ember.cli import evaluate as eval_cli
from ember.cli import keys as keys_cli
from ember.cli import quantize as quantize_cli
from ember.cli import rag as rag_cli
from ember.cli import train as train_cli
from ember.cli import tune as tune_cli
from ember.cli.client import HttpClient, server_running
from ember.cli.progress import run_job
from ember.config import Settings
from ember.core.errors import EmberError, disk_error
from ember.core.humanize import size as _human
from ember.engines.tesseract import DEFAULT_LANGUAGES
from ember.runtime.jobs import Job

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run, serve and manage local language models.")
out = Console()
err = Console(stderr=True, highlight=False)


def _settings() -> Settings:
    return Settings.from_env()


def _store():
    from ember.store.store import ModelStore

    return ModelStore(_settings().models)


def _ago(moment) -> str:
    from datetime import datetime

    seconds = (datetime.now(UTC) - moment).total_seconds()
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


@app.command()
def serve(
    insecure: bool = typer.Option(False, "--insecure", help="listen beyond this machine without API keys"),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object a line"),
):
    """Start the server (Ollama API on /api, OpenAI API on /v1) at EMBER_HOST (default 127.0.0.1:11434)."""
    from ember.cli.serve import serve as run_server

    if log_format not in ("text", "json"):
        raise EmberError(f"--log-format {log_format!r}: use text or json")
    run_server(_settings(), insecure=insecure, log_format=log_format)


@app.command()
def run(
    model: str = typer.Argument(..., help="model name, e.g. smollm2"),
    prompt: list[str] | None = typer.Argument(None, help="ask once and exit; without it, an interactive chat"),
    preset: str | None = typer.Option(None, help="balanced, creative, factual, concise or long-form"),
    keep_alive: str | None = typer.Option(None, "--keepalive", help="how long the server keeps the model loaded"),
    verbose: bool = typer.Option(False, "--verbose", help="print timings after each answer"),
    memory: bool | None = typer.Option(None, "--memory/--no-memory",
                                       help="keep this chat's turns, recall earlier ones (default: the Modelfile's)"),
    image: list[Path] | None = typer.Option(None, "--image", help="an image to ask about (repeat for more)"),
):
    """Chat with a model, or answer one PROMPT (also read from standard input) and exit."""
    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{text}\n\n{piped}".strip() if text else piped.strip()
    chat_cli.run(_settings(), model, text or None, preset=preset, keep_alive=keep_alive, verbose=verbose,
                 memory=memory, images=image)


@app.command(no_args_is_help=True)
def transcribe(
    files: list[Path] = typer.Argument(..., help="audio files: WAV, MP3, M4A, OGG, FLAC, WebM"),
    language: str | None = typer.Option(None, "--language", "-l", help="en, ru…; detected when left out"),
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="a speech model (default: whisper:tiny.en for en, else whisper:base)"),
    output_format: str = typer.Option("text", "--format", "-f", help="text, srt, vtt or json"),
    translate: bool = typer.Option(False, "--translate", help="English text from speech in any language"),
    prompt: str | None = typer.Option(None, "--prompt", help="words to expect: names, terms, spelling"),
    words: bool = typer.Option(False, "--word-timestamps", help="time each word (json)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
):
    """Speech to text, with timestamps; files that cannot be read are reported and the rest go on."""
    from ember.cli.transcribe import transcribe_command

    code = transcribe_command(files, out, err, model=model, language=language, response_format=output_format,
                              translate=translate, prompt=prompt, words=words, quiet=quiet)
    raise typer.Exit(code)


@app.command(no_args_is_help=True)
def ocr(
    files: list[Path] = typer.Argument(..., help="images (PNG, JPEG, TIFF, WebP…) and PDFs"),
    lang: str = typer.Option(DEFAULT_LANGUAGES, "--lang", help="Tesseract languages, in order of preference"),
    output_format: str = typer.Option("text", "--format", "-f", help="text, json (lines, boxes, confidence) or hocr"),
    workers: int | None = typer.Option(None, "--workers", help="pages read at once (default: one per core)"),
):
    """The text of images and scanned PDFs (OCR); files that cannot be read are reported and the rest go on."""
    from ember.cli.ocr import ocr_command

    raise typer.Exit(ocr_command(files, lang, output_format, workers, out=out, err=err))


@app.command("list")
def list_models():
    """List the models in the store."""
    table = Table("NAME", "ID", "SIZE", "MODIFIED", box=None, header_style="bold")
    for m in _store().list():
        table.add_row(m.name, m.digest[:12], _human(m.size), _ago(m.modified_at))
    out.print(table)


@app.command()
def ps():
    """List the models the running server has loaded."""
    settings = _settings()
    if not server_running(settings):
        out.print(f"no ember server is running at {settings.base_url}; nothing is loaded")
        return
    # The name and its expiry whole; the other columns give way in a narrow terminal.
    table = Table(Column("NAME", no_wrap=True), "ID", "SIZE", "FOR", "CONTEXT", "SLOTS", "THREADS",
                  Column("UNTIL", no_wrap=True), box=None, header_style="bold")
    for m in HttpClient(settings).request("GET", "/api/ps")["models"]:
        table.add_row(m["name"], m["digest"][:12], _human(m["size"]), ", ".join(m.get("loaded_for", [])),
                      str(m["context_length"]), f"{m.get('slots_busy', 0)}/{m.get('slots', 1)}",
                      str(m.get("threads", "")), m["expires_at"])
    out.print(table)


@app.command()
def stop(model: str):
    """Unload a model from the running server."""
    settings = _settings()
    if not server_running(settings):
        out.print(f"no ember server is running at {settings.base_url}; nothing to stop")
        return
    HttpClient(settings).request("POST", "/api/generate", json={"model": model, "keep_alive": 0})
    out.print(f"stopped {model}")


@app.command()
def show(
    model: str,
    modelfile: bool = typer.Option(False, "--modelfile", help="only the Modelfile"),
    parameters: bool = typer.Option(False, "--parameters", help="only the parameters"),
    template: bool = typer.Option(False, "--template", help="only the chat template"),
    system: bool = typer.Option(False, "--system", help="only the system prompt"),
    license: bool = typer.Option(False, "--license", help="only the license"),
):
    """Show a model's details, parameters, template, system prompt and license."""
    from ember.engines import registry

    info = registry.show(_store().get(model))
    for flag, key in ((modelfile, "modelfile"), (parameters, "parameters"), (template, "template"),
                      (system, "system"), (license, "license")):
        if flag:
            out.print(info.get(key) or "", markup=False, highlight=False)
            return
    details, model_info = info["details"], info.get("model_info", {})
    arch = details.get("family", "")
    table = Table(box=None, show_header=False)
    for label, value in (("architecture", arch), ("parameters", details.get("parameter_size")),
                         ("context length", model_info.get(f"{arch}.context_length")),
                         ("embedding length", model_info.get(f"{arch}.embedding_length")),
                         ("quantization", details.get("quantization_level")),
                         ("capabilities", ", ".join(info.get("capabilities", [])))):
        table.add_row(f"  {label}", str(value))
    out.print("[bold]Model[/bold]")
    out.print(table)
    for title, key in (("Parameters", "parameters"), ("System", "system"), ("License", "license")):
        if info.get(key):
            out.print(f"\n[bold]{title}[/bold]")
            text = info[key].strip()
            lines = text.splitlines()
            out.print("\n".join("  " + line for line in lines[:6]) + ("\n  …" if len(lines) > 6 else ""),
                      markup=False, highlight=False)


@app.command(no_args_is_help=True)
def embed(model: str, texts: list[str] = typer.Argument(None, help="texts to embed; none: one text a line from stdin")):
    """Print one embedding per text, a JSON array a line (normalised to length 1, as /api/embed returns them)."""
    import json

    from ember.cli.client import connect

    if not texts:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise EmberError("nothing to embed: give texts as arguments or one a line on stdin")
    client = connect(_settings())
    try:
        for vector in client.embed(model, texts):
            out.print(json.dumps([round(x, 7) for x in vector]), markup=False, highlight=False, soft_wrap=True)
    finally:
        client.close()


@app.command()
def pull(model: str, quiet: bool = typer.Option(False, "--quiet", help="no progress bar")):
    """Install a model from the catalog of bundled models (nothing is downloaded)."""
    store = _store()
    run_job(Job("pull", f"pull {model}", lambda report: store.pull(model, report)), err, quiet)


@app.command()
def create(model: str, file: Path = typer.Option(Path("Modelfile"), "-f", "--file", help="the Modelfile"),
           quantize: str | None = typer.Option(None, "--quantize", "-q",
                                               help="quantize FROM's weights, e.g. q4_K_M (as `ember quantize`)"),
           no_report: bool = typer.Option(False, "--no-report", help="with --quantize: skip the quality report")):
    """Create a model from a Modelfile."""
    if not file.is_file():
        raise EmberError(f"no Modelfile at {file}; pass one with -f PATH")
    store, text, folder = _store(), file.read_text(encoding="utf-8"), file.resolve().parent
    if quantize:
        from ember.store.modelfile import parse_modelfile

        quantize_cli.run_quantize(model, parse_modelfile(text, folder), quantize, report=not no_report)
        return
    run_job(Job("create", f"create {model}", lambda report: store.create_from_modelfile(model, text, folder, report)),
            err)


@app.command()
def cp(source: str, destination: str):
    """Copy a model under a new name (no data is duplicated)."""
    _store().copy(source, destination)
    out.print(f"copied '{source}' to '{destination}'")


@app.command()
def rm(models: list[str]):
    """Remove models; their files go when no other model uses them."""
    store = _store()
    for model in models:
        store.delete(model)
        out.print(f"deleted '{model}'")


@app.command()
def export(model: str, directory: Path):
    """Write a model's GGUF (and adapter, and a Modelfile) under readable names, for use with other tools."""
    for path in _store().export(model, directory):
        out.print(str(path))


app.add_typer(keys_cli.keys_app, name="keys")
app.add_typer(rag_cli.rag_app, name="rag")
app.command()(doctor_cli.doctor)
app.add_typer(backup_cli.backup_app, name="backup")
app.command()(backup_cli.restore)

app.add_typer(eval_cli.eval_app, name="eval")
bench_app = typer.Typer(no_args_is_help=True, help="Measure speed against the tools ember replaces.")
app.add_typer(bench_app, name="bench")


@bench_app.command("serve")
def bench_serve(
    quick: bool = typer.Option(False, "--quick", help="only W1 and W2"),
    out: Path = typer.Option(Path("bench/results"), "--out", help="where the JSON, the PNG and the servers' logs go"),
    threads: int | None = typer.Option(None, "--threads", help="threads for every peer (default: one per core)"),
    rounds: int = typer.Option(5, "--rounds", min=1, help="rounds of W1 and W2 (figures: min / median / max)"),
    llama_server: Path | None = typer.Option(
        None, "--llama-server", help="a llama-server binary (default: built once from the pinned llama.cpp, cached)"),
):
    """Concurrent serving: ember vs llama.cpp's llama-server, llama-cpp-python's server and llama.cpp in-process."""
    from ember.bench.serve import ServeBench, run

    run(ServeBench(quick=quick, out=out, threads=threads, rounds=rounds, llama_server=llama_server))


@bench_app.command("quant", no_args_is_help=True)
def bench_quant(
    model: str = typer.Argument(..., help="a model in the store"),
    types: str | None = typer.Option(None, "--types", help="comma-separated, e.g. q8_0,q4_K_M (default: F16, Q8_0, "
                                     "Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K)"),
    data: list[Path] | None = typer.Option(None, "--data", help="held-out UTF-8 text (repeat for more; default: "
                                           "ember's English and Russian samples)"),
    ctx: int = typer.Option(256, "--ctx", help="tokens per chunk; the second half of each is scored"),
    chunks: int = typer.Option(4, "--chunks", help="chunks of each text (0: all)"),
    rounds: int = typer.Option(2, "--rounds", min=1, help="rounds of the speed measurements (best kept)"),
    out: Path = typer.Option(Path("bench/results"), "--out", help="where the JSON and the PNG go"),
    threads: int | None = typer.Option(None, "--threads", help="default: one per core"),
    runtimes: str = typer.Option("gguf,onnx,openvino", "--runtimes", help="comma-separated: gguf (llama.cpp's "
                                 "types), onnx (FP32 export and ONNX Runtime INT8), openvino (INT8, INT4); the "
                                 "stored model is always the reference"),
):
    """Every quantization of MODEL side by side: size, load time, speed, memory, perplexity and KL divergence."""
    from ember.bench.quant import QuantBenchConfig, table
    from ember.bench.quant import run as run_bench

    texts = {p.name: quantize_cli.read_text(p, "--data") for p in data} if data else None
    config = QuantBenchConfig(model=model, out=out, texts=texts, ctx=ctx, chunks=chunks or None, rounds=rounds,
                              threads=threads, runtimes=[r.strip().lower() for r in runtimes.split(",") if r.strip()])
    if types:
        config.types = [t for t in types.split(",") if t.strip()]
    result = run_bench(config, err)
    out_console = Console() if sys.stdout.isatty() else Console(width=150)  # a file gets the whole table
    out_console.print(table(result))
    out_console.print(result["recommendation"], soft_wrap=True, highlight=False)
    missing = "".join(f"; {line}" for line in result["not_measured"])
    err.print(f"{result['note']}; perplexity on {', '.join(result['texts'])} in chunks of {result['ctx']}{missing}. "
              f"Wrote {' and '.join(result['files'])}", soft_wrap=True)


# Defined beside the code they drive, with their options mapped straight onto the training config.
app.command(no_args_is_help=True)(train_cli.train)
app.command(no_args_is_help=True)(train_cli.sample)
app.command(no_args_is_help=True)(tune_cli.tune)
app.command(no_args_is_help=True)(quantize_cli.quantize)
app.command(no_args_is_help=True)(convert_cli.convert)


@app.command()
def version():
    """Print ember's version."""
    out.print(f"ember {__version__}")


def main() -> None:
    try:
        code = app(standalone_mode=False)  # without standalone mode a typer.Exit(n) comes back as n
        if isinstance(code, int) and code:
            sys.exit(code)
    except EmberError as e:
        # One line whatever the width, and a message may hold [brackets] that are not markup.
        err.print(f"[red]Error:[/red] {escape(e.message)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as e:
        full = disk_error(e)
        if full is None:
            raise
        err.print(f"[red]Error:[/red] {escape(full.message)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors: typer 0.29 raises its own vendored click's, older typer click's
        import click

        if isinstance(e, click.ClickException | TyperException):
            e.show()
            sys.exit(e.exit_code)
        raise
