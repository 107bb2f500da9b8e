"""Document collections over HTTP (ember's own API; `ember rag` does the same from the terminal).

Adding files is a job like a pull: progress streams as JSON lines (or one answer at the end with stream=false), a
client that hangs up cancels it, and the last object carries what was added, replaced, left alone and refused.
Paths are read by the server, as `ember rag add` reads them: it is the user's own machine.
"""

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ember.api import common
from ember.api.jobs import job_response
from ember.core.errors import BadRequest
from ember.rag.collections import IngestReport
from ember.runtime import grounded
from ember.runtime.jobs import Job, Progress

router = APIRouter()


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateBody(Body):
    name: str
    embed_model: str | None = None
    query_prefix: str | None = None
    document_prefix: str | None = None


class FilesBody(Body):
    paths: list[str] = Field(min_length=1)
    stream: bool = True


class RemoveFilesBody(Body):
    paths: list[str] = Field(min_length=1)


class QueryBody(Body):
    query: str
    k: int = Field(default=5, ge=1, le=100)
    mode: str = "hybrid"
    rerank_model: str | None = None


def _collections(request: Request):
    return common.runtime(request).collections


def _absolute(paths: list[str]) -> list[Path]:
    """The server reads these: relative paths would be relative to wherever it was started, which no client knows."""
    relative = [p for p in paths if not Path(p).is_absolute()]
    if relative:
        raise BadRequest(f"paths must be absolute (the server reads them on its own machine): {relative[0]!r}")
    return [Path(p) for p in paths]


@router.get("/api/collections")
async def list_collections(request: Request):
    collections = _collections(request)
    infos = [await asyncio.to_thread(collections.info, name) for name in collections.names()]
    return {"collections": [i.as_dict() for i in infos]}


@router.post("/api/collections", status_code=201)
async def create_collection(body: CreateBody, request: Request):
    runtime = common.runtime(request)
    info = await asyncio.to_thread(runtime.collections.create, body.name, body.embed_model, body.query_prefix,
                                   body.document_prefix)
    return info.as_dict()


@router.get("/api/collections/{name}")
async def show_collection(name: str, request: Request):
    collections = _collections(request)
    info = await asyncio.to_thread(collections.info, name)
    files = await asyncio.to_thread(collections.sources, name)
    return {**info.as_dict(), "files": [vars(f) for f in files]}


@router.delete("/api/collections/{name}")
async def delete_collection(name: str, request: Request):
    await asyncio.to_thread(_collections(request).delete, name)
    return {"deleted": name}


@router.post("/api/collections/{name}/files", responses=common.NDJSON_OK)
async def add_files(name: str, body: FilesBody, request: Request):
    collections = _collections(request)
    paths = _absolute(body.paths)
    await asyncio.to_thread(collections.index, name)  # an unknown collection is a 404 before the job starts
    outcome: dict[str, IngestReport] = {}

    def work(report) -> IngestReport:
        outcome["report"] = collections.add(name, paths, report)
        report("success")
        return outcome["report"]

    def render(progress: Progress) -> dict[str, Any]:
        out = {k: v for k, v in vars(progress).items() if v is not None}
        if progress.status == "success" and "report" in outcome:
            out.update(outcome["report"].as_dict())
        return out

    return await job_response(request, Job("ingest", f"add to {name}", work), render, body.stream)


@router.delete("/api/collections/{name}/files")
async def remove_files(name: str, body: RemoveFilesBody, request: Request):
    removed = await asyncio.to_thread(_collections(request).remove, name, _absolute(body.paths))
    return {"removed": removed}


@router.post("/api/collections/{name}/query")
async def query_collection(name: str, body: QueryBody, request: Request):
    runtime = common.runtime(request)
    hits, _, _ = await grounded.search(runtime.collections, [name], body.query, body.k, body.mode,
                                       runtime.reranker(body.rerank_model))
    return {"collection": name, "query": body.query, "mode": body.mode, "rerank_model": body.rerank_model,
            "results": [h.as_dict() for h in hits]}
