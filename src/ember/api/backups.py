"""Backups over HTTP, for admin keys: make one (a job with progress, like a pull) and list them. Restoring replaces
the server's own data, so it is `ember restore`, with the server stopped."""

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ember.api import common
from ember.api.jobs import job_response
from ember.ops import backup as backups
from ember.runtime.jobs import Job

router = APIRouter()


class BackupBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "stream": 0 is a mistake here, not a false

    with_models: bool = False
    stream: bool = True


def _info(info: backups.BackupInfo) -> dict:
    return {"name": info.path.name, "size": info.size, "with_models": info.with_models, "automatic": info.automatic,
            "created_at": common.iso(info.created) if info.created else None, "models": info.models,
            **({"error": info.error} if info.error else {})}


@router.post("/api/backup", responses=common.NDJSON_OK)
async def make_backup(body: BackupBody, request: Request):
    settings = common.runtime(request).settings
    result: list[backups.BackupResult] = []

    def work(report) -> None:
        result.append(backups.backup(settings, with_models=body.with_models, report=report))
        done = result[0]
        report("success", completed=done.size, total=done.size, item=done.path.name)

    def render(progress) -> dict:
        out = {"status": progress.status}
        if progress.total:
            out.update(completed=progress.completed, total=progress.total)
        if result and progress.status == "success":
            done = result[0]
            out.update(name=done.path.name, size=done.size, files=done.files, models=done.models,
                       without_weights=done.without_weights)
        return out

    return await job_response(request, Job("backup", "backup", work), render, body.stream)


@router.get("/api/backups")
async def list_backups(request: Request):
    return {"backups": [_info(info) for info in backups.list_backups(common.runtime(request).settings)]}
