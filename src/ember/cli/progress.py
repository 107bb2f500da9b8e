"""Jobs in the terminal: rich progress bars while the work runs on a worker thread; Ctrl-C cancels it cleanly."""

import threading
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from ember.runtime import jobs

T = TypeVar("T")


def run_job(job: "jobs.Job[T]", console: Console, quiet: bool = False) -> T:
    """The job's result. Ctrl-C cancels the job, waits for its cleanup (no half-written files are left), then raises
    KeyboardInterrupt as usual."""
    outcome: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=quiet, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def show(progress: jobs.Progress) -> None:
            if quiet:
                return
            if progress.total:
                key = progress.item or progress.status
                if key not in tasks:
                    tasks[key] = bars.add_task(progress.status, total=progress.total)
                bars.update(tasks[key], completed=progress.completed or 0)
            else:
                bars.console.print(progress.status, markup=False, highlight=False, soft_wrap=True)

        finished = threading.Event()

        def work() -> None:
            try:
                outcome["result"] = job.run(show)
            except BaseException as e:  # handed to the main thread
                outcome["error"] = e
            finally:
                finished.set()

        # Waited for on an Event, not Thread.join: a join that Ctrl-C interrupts can mark a running thread as stopped
        # (CPython 3.11), and the cleanup would then not be waited for.
        try:
            threading.Thread(target=work, name=f"ember-{job.kind}", daemon=True).start()
            while not finished.wait(0.1):  # short waits, so that Ctrl-C reaches this thread at once
                pass
        except KeyboardInterrupt:
            job.cancel()
            finished.wait()
            raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
