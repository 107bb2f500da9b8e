"""Long work as jobs: progress, cancel from the API, from Ctrl-C and mid-copy, and nothing half-written left behind."""

import _thread
import asyncio
import threading

import httpx
import pytest
from rich.console import Console

from ember.api.app import create_app
from ember.cli.progress import run_job
from ember.runtime.jobs import Cancelled, Job, Progress
from ember.store.store import ModelStore


def counting(limit: int = 10**9, interrupt_after: int | None = None):
    """Work that reports a step at a time until it reaches `limit` or is cancelled."""

    def work(report) -> int:
        for step in range(limit):
            report("counting", completed=step, total=limit)
            if interrupt_after is not None and step == interrupt_after:
                _thread.interrupt_main()  # what Ctrl-C does to the CLI
            threading.Event().wait(0.001)
        return limit

    return work


def leftovers(root) -> list:
    return [p for p in root.rglob(".tmp-*")]


def test_a_job_reports_progress_and_returns_its_result():
    seen: list[Progress] = []
    job = Job("count", "count to 3", counting(3))
    assert job.run(seen.append) == 3 and job.state == "done"
    assert [p.completed for p in seen] == [0, 1, 2] and job.latest == Progress("counting", 2, 3)


def test_cancel_mid_copy_leaves_no_partial_file(tmp_path):
    store = ModelStore(tmp_path / "models")
    job = Job("pull", "pull smollm2", lambda report: store.pull("smollm2", report))

    def on_progress(progress: Progress) -> None:
        if progress.completed:  # the first chunk of the model file is written
            job.cancel()

    with pytest.raises(Cancelled):
        job.run(on_progress)
    assert job.state == "cancelled"
    assert leftovers(tmp_path) == [] and store.blobs.all_digests() == set() and store.list() == []
    # and the next pull is whole
    store.pull("smollm2")
    assert [m.name for m in store.list()] == ["smollm2:latest"]


def test_ctrl_c_in_the_cli_cancels_the_job_and_waits_for_it():
    job = Job("count", "count forever", counting(interrupt_after=3))
    with pytest.raises(KeyboardInterrupt):
        run_job(job, Console(quiet=True))
    stopped_at = job.latest.completed
    assert job.state == "cancelled" and stopped_at >= 3
    threading.Event().wait(0.05)
    assert job.latest.completed == stopped_at  # nothing runs on after the cancel


@pytest.mark.anyio
async def test_running_jobs_are_listed_and_cancelled_over_the_api(make_runtime):
    runtime = make_runtime()
    job = Job("count", "count forever", counting())
    events = runtime.jobs.follow(job)
    assert (await anext(events)).status == "counting"
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as http:
        listed = (await http.get("/api/jobs")).json()["jobs"]
        assert [(j["id"], j["kind"], j["state"]) for j in listed] == [(job.id, "count", "running")]
        assert listed[0]["progress"]["status"] == "counting"
        assert (await http.delete(f"/api/jobs/{job.id}")).status_code == 200
        with pytest.raises(Cancelled):
            async for _ in events:
                pass
        assert (await http.get("/api/jobs")).json()["jobs"] == []
        missing = await http.delete(f"/api/jobs/{job.id}")
        assert missing.status_code == 404 and "GET /api/jobs" in missing.json()["error"]
    await runtime.close()


@pytest.mark.anyio
async def test_leaving_the_stream_cancels_the_job(make_runtime):
    runtime = make_runtime()
    job = Job("count", "count forever", counting())
    events = runtime.jobs.follow(job)
    await anext(events)
    await events.aclose()  # a client that hangs up
    assert job.state == "cancelled" and runtime.jobs.list() == []
    await asyncio.sleep(0)
    await runtime.close()


@pytest.mark.anyio
async def test_pull_and_create_stream_progress_as_ollama_does(make_runtime, tmp_path):
    runtime = make_runtime()
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as http:
        lines = (await http.post("/api/pull", json={"model": "smollm2"})).text.splitlines()
        assert '"status":"pulling manifest"' in lines[0] and '"status":"success"' in lines[-1]
        assert any('"digest":"sha256:' in line and '"completed":' in line for line in lines)
        r = await http.post("/api/create", json={"model": "m", "modelfile": "FROM smollm2\nSYSTEM hi",
                                                  "stream": False})
        assert r.json() == {"status": "success"}
        r = await http.post("/api/create", json={"model": "m", "modelfile": "FROM nothing"})
        assert r.status_code == 404 and "nothing" in r.json()["error"]  # refused before any progress: a plain 404
    await runtime.close()
