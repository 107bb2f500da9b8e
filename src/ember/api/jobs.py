"""Long work over HTTP: a job's progress as a stream of JSON objects (or one answer at the end), and the running jobs.

A client that hangs up cancels its job; so does `DELETE /api/jobs/{id}`.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ember.api import common
from ember.core.errors import NotFound, disk_error
from ember.runtime.jobs import Job, Progress

router = APIRouter()


async def job_response(request: Request, job: Job, render: Callable[[Progress], dict[str, Any]],
                       stream: bool) -> Response:
    """Runs the job. Its first progress report is awaited before answering, so that work refused at once (a bad
    Modelfile, a missing model) gets its 4xx status; later errors arrive in the stream, as Ollama sends them."""
    events = common.runtime(request).jobs.follow(job)
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        first = await anext(events, None)
    except BaseException:
        watcher.cancel()
        raise
    if not stream:
        last = first
        try:
            async for progress in events:
                last = progress
        finally:
            watcher.cancel()
            await events.aclose()
        return JSONResponse(render(last) if last else {"status": "success"})
    watcher.cancel()  # from here the stream notices a hang-up itself

    async def body() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield common.ndjson(render(first))
            async for progress in events:
                yield common.ndjson(render(progress))
        except Exception as e:  # the status line is already sent: report the error in the stream
            error = (disk_error(e) if isinstance(e, OSError) else None) or e
            yield common.ndjson({"error": getattr(error, "message", str(error))})
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type="application/x-ndjson")


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    job.cancel()


@router.get("/api/jobs")
async def list_jobs(request: Request):
    return {"jobs": [{"id": j.id, "kind": j.kind, "title": j.title, "state": j.state,
                      "started_at": common.iso_time(j.started_at),
                      **({"progress": {k: v for k, v in vars(j.latest).items() if v is not None}} if j.latest else {})}
                     for j in common.runtime(request).jobs.list()]}


@router.delete("/api/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request):
    if not common.runtime(request).jobs.cancel(job_id):
        raise NotFound(f"no running job '{job_id}'; GET /api/jobs lists them")
    return Response(status_code=200)
