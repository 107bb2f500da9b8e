"""Long work with progress and cancel: pull and create today; ingest, transcription, quantization, tuning next.

A job runs a function on a worker thread and hands it a `Reporter`. Each report becomes a `Progress` event for
whoever watches: a rich progress bar in the CLI (`ember.cli.progress`), streamed progress objects over the Ollama
API. A report is also where a cancelled job stops: it raises `Cancelled`, so the work unwinds through its own
cleanup (temp files are removed by `atomic_file` and `BlobStore.write_chunks`) and nothing half-written is left.
Cancel comes from Ctrl-C, from a client that hangs up, or from `DELETE /api/jobs/{id}`.
"""

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ember.core.errors import EmberError

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    status: str
    completed: int | None = None
    total: int | None = None
    item: str | None = None  # what is being worked on: a layer's digest, a file's name


class Cancelled(EmberError):
    status = 499  # nginx's "client closed request": nobody is left to read it


class Reporter:
    """What a job's work calls to say how far it is; raises Cancelled once the job is cancelled."""

    def __init__(self, emit: Callable[[Progress], None], cancel: threading.Event):
        self._emit, self._cancel = emit, cancel

    def __call__(self, status: str, *, completed: int | None = None, total: int | None = None,
                 item: str | None = None) -> None:
        self.check()
        self._emit(Progress(status, completed, total, item))

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled")


_ids = itertools.count(1)


class Job(Generic[T]):
    def __init__(self, kind: str, title: str, work: Callable[[Reporter], T]):
        self.id = f"{kind}-{next(_ids)}"
        self.kind, self.title, self.work = kind, title, work
        self.started_at = time.time()
        self.latest: Progress | None = None
        self.state = "waiting"  # running, done, failed, cancelled
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self, on_progress: Callable[[Progress], None]) -> T:
        """Do the work in this thread, passing each Progress to `on_progress`; its result, or its error."""

        def emit(progress: Progress) -> None:
            self.latest = progress
            on_progress(progress)

        self.state = "running"
        try:
            result = self.work(Reporter(emit, self._cancel))
        except Cancelled:
            self.state = "cancelled"
            raise
        except BaseException:
            self.state = "failed"
            raise
        self.state = "done"
        return result

    async def events(self) -> AsyncIterator[Progress]:
        """Progress as it happens, the work running on a worker thread; the work's error is raised at the end.
        Leaving the iteration early (the client hung up) cancels the job and waits for its cleanup."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Progress | None] = asyncio.Queue()
        task = asyncio.ensure_future(asyncio.to_thread(self.run, lambda p: loop.call_soon_threadsafe(
            queue.put_nowait, p)))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (progress := await queue.get()) is not None:
                yield progress
            await task  # the work's error, if any
        finally:
            if not task.done():
                self.cancel()
                await asyncio.shield(asyncio.wait([task]))
                if not task.cancelled():
                    task.exception()  # the Cancelled it ends with is expected: retrieved, so nothing logs it


class Jobs:
    """The jobs a server runs now, for `GET /api/jobs` and `DELETE /api/jobs/{id}`."""

    def __init__(self) -> None:
        self._running: dict[str, Job] = {}

    async def follow(self, job: Job) -> AsyncIterator[Progress]:
        self._running[job.id] = job
        events = job.events()
        try:
            async for progress in events:
                yield progress
        finally:
            await events.aclose()  # now, not when the garbage collector gets to it: this is what cancels the job
            self._running.pop(job.id, None)

    def list(self) -> list[Job]:
        return sorted(self._running.values(), key=lambda j: j.started_at)

    def cancel(self, job_id: str) -> bool:
        job = self._running.get(job_id)
        if job:
            job.cancel()
        return job is not None
