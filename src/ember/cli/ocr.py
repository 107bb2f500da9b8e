"""`ember ocr`: the text of images and scanned PDFs from the terminal, read in this process (Tesseract needs no
server: it holds no model).

A file that cannot be read is reported by name and the others are still read; the exit code is 1 if any failed.
"""

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ember.core.errors import EmberError
from ember.engines.tesseract import DEFAULT_LANGUAGES
from ember.media import ocr

FORMATS = ("text", "json", "hocr")


def ocr_command(files: list[Path], lang: str = DEFAULT_LANGUAGES, format: str = "text", workers: int | None = None,
                *, out: Console | None = None, err: Console | None = None) -> int:
    """Print the text (or JSON, or hOCR) of each file. A bad --format or --lang raises EmberError before any file is
    read; a file that cannot be read is printed as "ember: FILE: reason" on stderr and the rest go on."""
    out = out or Console()
    err = err or Console(stderr=True, highlight=False)
    if format not in FORMATS:
        raise EmberError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    if workers is not None and workers < 1:
        raise EmberError(f"--workers {workers}: give 1 or more pages at once")
    ocr.check_languages(lang)
    results: list[dict] = []
    failed = sections = 0
    for path in files:
        try:
            pages = _read(path, lang, format, workers, err, several=len(files) > 1)
        except ocr.UnreadableImage as e:
            failed += 1
            err.print(f"[red]ember:[/red] {escape(str(path))}: {escape(e.reason)}", soft_wrap=True)
            results.append({"file": str(path), "error": e.reason})
            continue
        if format == "json":
            results.append({"file": str(path), **ocr.to_json(pages)})
        elif format == "hocr":
            sections = _print(out, f"==> {path} <==" if len(files) > 1 else None, ocr.hocr_document(pages), sections)
        else:
            for page in pages:
                where = f" (page {page.number})" if len(pages) > 1 else ""
                header = f"==> {path}{where} <==" if len(files) > 1 or len(pages) > 1 else None
                sections = _print(out, header, page.text, sections)
    if format == "json":
        out.print_json(json.dumps({"files": results}, ensure_ascii=False))
    return 1 if failed else 0


def _read(path: Path, lang: str, format: str, workers: int | None, err: Console, several: bool) -> list[ocr.Page]:
    """The file's pages, with a progress bar on stderr while they are read when there is more than one page to read.
    The bar is gone before anything is printed: while it shows, rich would send stdout to the terminal with it."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, redirect_stdout=False, redirect_stderr=False,
                  disable=not err.is_terminal) as bars:  # rich leaves blank lines in a log or pipe
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None and (total > 1 or several):
                bar = bars.add_task(f"reading {escape(path.name)}", total=total)
            if bar is not None:
                bars.update(bar, completed=done)

        return ocr.read(path, lang, hocr=format == "hocr", workers=workers, progress=progress)


def _print(out: Console, header: str | None, text: str, sections: int) -> int:
    """One file's or page's output, under its header as `head` prints them: a blank line before each but the first."""
    if header:
        if sections:
            out.print()
        out.print(header, markup=False, highlight=False, soft_wrap=True)
    out.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
    return sections + 1
