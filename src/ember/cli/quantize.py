"""`ember quantize` (and `ember create --quantize`): a smaller model in the store, and what it cost in quality."""

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from ember.config import Settings
from ember.core.errors import EmberError
from ember.store.modelfile import CreateSpec

out = Console()
err = Console(stderr=True, highlight=False)


def read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise EmberError(f"{option} {path}: cannot read it as UTF-8 text ({why})") from None


def run_quantize(name: str, spec: CreateSpec, qtype: str, *, allow_requantize: bool = False,
                 imatrix_data: Path | None = None, report_data: Path | None = None, report: bool = True,
                 ctx: int = 256, chunks: int | None = 2, threads: int | None = None) -> None:
    from ember.cli.progress import run_job
    from ember.quantize.create import QuantizeJob, run
    from ember.runtime.jobs import Job, Reporter
    from ember.store.store import ModelStore

    settings = Settings.from_env()
    store = ModelStore(settings.models)
    job = QuantizeJob(
        name=name, spec=spec, type=qtype, allow_requantize=allow_requantize,
        imatrix_text=read_text(imatrix_data, "--imatrix-data") if imatrix_data else None, report=report,
        report_texts={report_data.name: read_text(report_data, "--report-data")} if report_data else None,
        ctx=ctx, report_chunks=chunks, threads=threads, announce=False, reports_dir=settings.home / "quantize")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bars:
        shown: dict[str, TaskID] = {}

        def show(report: Reporter) -> Reporter:
            """run_job's bars count bytes; these steps count chunks, so they get bars of their own."""

            def both(status: str, *, completed: int | None = None, total: int | None = None,
                     item: str | None = None) -> None:
                report.check()
                if total is None:
                    bars.console.print(status, markup=False, highlight=False, soft_wrap=True)
                elif item is None:  # chunks of text: a bar of its own
                    if status not in shown:
                        shown[status] = bars.add_task(status, total=total)
                    bars.update(shown[status], completed=completed or 0, total=total)

            return both  # type: ignore[return-value]

        result = run_job(Job("quantize", f"quantize {spec.from_} to {qtype}", lambda r: run(store, job, show(r))),
                         err, quiet=True)
    q = result.quality
    if q is None:
        if result.note:
            err.print(result.note)
        err.print(f"created {result.model.name}; try: ember run {result.model.name} \"…\"")
        return
    out.print(q.summary(), highlight=False, soft_wrap=True)
    table = Table(*q.HEADER, box=None, header_style="bold")
    for row in q.rows():
        table.add_row(*row)
    out.print(table)
    speed = Table("", q.reference, result.model.name, "", box=None, header_style="bold")
    for row in q.speed_rows():
        speed.add_row(*row)
    out.print(speed)
    if q.skipped:
        err.print(f"not measured on {', '.join(q.skipped)}: shorter than one chunk of {q.ctx} tokens for this model")
    notes = [f"{q.all.tokens} tokens scored in chunks of {q.ctx} (the second half of each, as llama-perplexity)"]
    if result.report_path:
        notes.append(f"report: {result.report_path}")
    err.print("; ".join(notes))
    err.print(f"created {result.model.name}; try: ember run {result.model.name} \"…\"")


def quantize(
    model: str = typer.Argument(..., help="a model in the store, or a GGUF file's absolute path"),
    qtype: str = typer.Option(..., "--type", "-t", help="Q4_K_M, Q5_K_M, Q8_0, IQ4_XS, F16, … (any case)"),
    name: str = typer.Option(..., "--name", "-n", help="the new model's name"),
    imatrix_data: Path | None = typer.Option(None, "--imatrix-data", help="text to weigh the weights by "
                                             "(importance matrix); needed for IQ2/IQ1 and Q2_K_S"),
    allow_requantize: bool = typer.Option(False, "--allow-requantize",
                                          help="quantize a model that is already quantized (costs quality)"),
    report_data: Path | None = typer.Option(None, "--report-data", help="held-out UTF-8 text for the quality "
                                            "report (default: ember's English and Russian samples)"),
    no_report: bool = typer.Option(False, "--no-report", help="skip the quality report"),
    ctx: int = typer.Option(256, "--ctx", help="tokens per chunk of the report"),
    chunks: int = typer.Option(2, "--chunks", help="chunks of each text the report reads (0: all)"),
    threads: int | None = typer.Option(None, "--threads", help="default: one per core"),
):
    """Make a smaller copy of MODEL with llama.cpp's quantizer and report what it cost: perplexity before and after,
    KL divergence, how often the top token agrees, size and speed. The new model keeps MODEL's template,
    parameters, system prompt and license."""
    run_quantize(name, CreateSpec(from_=model), qtype, allow_requantize=allow_requantize, imatrix_data=imatrix_data,
                 report_data=report_data, report=not no_report, ctx=ctx, chunks=chunks or None, threads=threads)
