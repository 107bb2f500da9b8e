"""`ember transcribe`: speech to text from the terminal, through the running server when there is one (its stream of
segments drives the progress bar), else in this process, with a progress bar in seconds of audio either way.

A file that cannot be read is reported by name and the others are still transcribed; the exit code is 1 if any failed.
"""

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ember.cli.client import connect
from ember.config import Settings
from ember.core.errors import EmberError
from ember.core.types import Segment, TranscribeRequest
from ember.media.transcripts import from_verbose, render

FORMATS = ("text", "srt", "vtt", "json")


def transcribe_command(files: list[Path], out: Console, err: Console, *, model: str | None, language: str | None,
                       response_format: str, translate: bool, prompt: str | None, words: bool,
                       quiet: bool) -> int:
    if response_format not in FORMATS:
        raise EmberError(f"--format {response_format!r}: use one of {', '.join(FORMATS)}")
    client = connect(Settings.from_env())
    results, failed = [], 0
    try:
        for path in files:
            request = TranscribeRequest(model=model, language=language, task="translate" if translate else "transcribe",
                                        prompt=prompt, word_timestamps=words, source=str(path))
            try:
                if not path.is_file():
                    raise EmberError(f"no such file: {path}")
                body = _run(client, path, request, err, quiet or not err.is_terminal)  # a bar where one is watched
            except EmberError as e:
                failed += 1
                named = e.message if str(path) in e.message else f"{path}: {e.message}"
                err.print(f"[red]ember:[/red] {escape(named)}", soft_wrap=True)
                continue
            results.append((path, body))
            if response_format != "json":
                if len(files) > 1:
                    out.print(f"==> {escape(str(path))} <==", highlight=False)
                out.print(render(from_verbose(body), response_format).rstrip("\n"), markup=False, highlight=False,
                          soft_wrap=True)
    finally:
        client.close()
    if response_format == "json":
        out.print_json(json.dumps({"files": [{"file": str(p), **body} for p, body in results]}, ensure_ascii=False))
    return 1 if failed else 0


def _run(client, path: Path, request: TranscribeRequest, err: Console, quiet: bool) -> dict:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[heard]}"),
                  TimeRemainingColumn(), console=err, disable=quiet, transient=True) as bars:
        bar = bars.add_task(f"transcribing {path.name}", total=None, heard="")

        def heard(segment: Segment, duration: float) -> None:
            bars.update(bar, total=duration, completed=segment.end, heard=f"{segment.end:.0f}/{duration:.0f} s")

        return client.transcribe(path, request, heard)
