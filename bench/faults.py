"""Faults: `kill -9` during create, pull, blob upload and copy, round after round on the same store; after every
restart `ember doctor` finds the store consistent and every acknowledged write is there. Then a full disk (a small
tmpfs as EMBER_HOME) gives a clear error and no damage.

Each operation kind has its own home, reused across its rounds, so that damage would accumulate. A round: prepare
the write, send it from a thread, SIGKILL the server a random time into it (uniform between 0 and the operation's
duration, measured once unkilled first), restart the server, then check that
  - `ember doctor --json --no-load` reports no failure (digests verified: it hashes every blob, unless --quick),
  - every write acknowledged so far (create/copy/pull answered success, blob upload answered 201) is there: the model
    is listed, /api/show answers and its model layer is the expected blob; the blob answers HEAD 200 and its bytes
    hash to its name,
  - nothing half-made is visible: every listed model answers /api/show.
A last doctor run, with the server stopped, verifies every digest once more. Conversation and collection writes are
not in ember yet; the table says so. Needs root (mount) or unprivileged user namespaces (unshare -rm) for the full
disk; without either that part is reported as skipped.

    .venv/bin/python bench/faults.py [--rounds 20] [--out bench/results] [--quick] [--seed N] [--full-disk-only]
"""

import argparse
import contextlib
import functools
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from ember.bench.harness import ServerProcess, ember_env, ember_server
from ember.bench.tiny import write_gguf
from ember.fsutil import TMP_PREFIX
from ember.store import bundled
from ember.store.modelfile import CreateSpec
from ember.store.store import ModelStore

MODEL = "smollm2"
BLOB_BYTES = 8 << 20  # a blob upload a round: long enough that a kill can land inside it
TMPFS_SIZE = "64m"  # smaller than smollm2 (98 MB): its pull cannot fit
OVERSIZED_UPLOAD = 80 << 20  # declared by the upload that must be refused before a byte is written
NOT_IN_EMBER_YET = ("conversation write", "collection write")

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def bundled_gguf() -> Path:
    return bundled.locate(bundled.CATALOG[0])


@functools.cache
def bundled_digest() -> str:
    return sha256_file(bundled_gguf())


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def blob_file(home: Path, digest: str) -> Path:
    return home / "models" / "blobs" / digest.replace(":", "-")


def say(message: str) -> None:
    console.print(f"[dim]faults:[/dim] {message}")


# -- writes and their checks -----------------------------------------------------------------------------------------

@dataclass
class Write:
    """One write a round attempts: a model name whose model layer must be `digest`, or a blob (`name` empty)."""

    round: int
    digest: str  # sha256:<hex>
    name: str = ""

    @property
    def what(self) -> str:
        return f"model {self.name}" if self.name else f"blob {self.digest[:19]}"


def check_write(client: httpx.Client, home: Path, write: Write, listed: set[str]) -> str:
    """Why an acknowledged write is not there whole; "" when it is."""
    if not write.name:
        if client.head(f"/api/blobs/{write.digest}").status_code != 200:
            return f"{write.what}: HEAD answers not 200"
        path = blob_file(home, write.digest)
        actual = sha256_file(path) if path.is_file() else "no file"
        return "" if actual == write.digest else f"{write.what}: its file holds {actual[:19]}"
    if write.name not in listed:
        return f"{write.what}: not listed by /api/tags"
    show = client.post("/api/show", json={"model": write.name})
    if show.status_code != 200:
        return f"{write.what}: /api/show answers {show.status_code} {show.text[:200]}"
    layer = ModelStore(home / "models").get(write.name).model_path.name
    return "" if layer == write.digest.replace(":", "-") else f"{write.what}: its model layer is {layer[:19]}"


def listed_models(client: httpx.Client) -> set[str]:
    names = {m["name"] for m in client.get("/api/tags").json()["models"]}
    return names | {n.removesuffix(":latest") for n in names}


# -- the operations ----------------------------------------------------------------------------------------------------

class Operation:
    """One kind of write: `prepare` makes the next round's write (server up), `send` performs it and says whether
    the server acknowledged it."""

    name = ""

    def __init__(self, home: Path, work: Path, rng: random.Random):
        self.home, self.work, self.rng = home, work, rng
        self.acknowledged: list[Write] = []  # every acknowledged write still expected in the store

    def setup(self) -> None:
        """Before the first server starts."""

    def prepare(self, client: httpx.Client, round_: int) -> Write:
        raise NotImplementedError

    def send(self, client: httpx.Client, write: Write) -> bool:
        raise NotImplementedError

    def after_round(self, write: Write) -> None:
        """After the round's checks."""


class Create(Operation):
    """POST /api/create from a GGUF path, a new name each round. The file is the bundled GGUF with a few random bytes
    appended (past its tensors, where readers do not look), so that each round's blob is new and really copied."""

    name = "create"

    def prepare(self, client, round_):
        variant = self.work / f"variant-{round_}.gguf"
        shutil.copyfile(bundled_gguf(), variant)
        with open(variant, "ab") as f:
            f.write(self.rng.randbytes(4096))
        return Write(round_, sha256_file(variant), f"made-{round_}")

    def send(self, client, write):
        variant = self.work / f"variant-{write.round}.gguf"
        response = client.post("/api/create", json={"model": write.name, "from": str(variant), "stream": False})
        return response.status_code == 200 and response.json().get("status") == "success"

    def after_round(self, write):
        (self.work / f"variant-{write.round}.gguf").unlink(missing_ok=True)


class Pull(Operation):
    """POST /api/pull smollm2, after removing it (and any blob a killed pull left), so that every round copies it."""

    name = "pull"

    def prepare(self, client, round_):
        if MODEL in listed_models(client):
            client.request("DELETE", "/api/delete", json={"model": MODEL}).raise_for_status()
            self.acknowledged = [w for w in self.acknowledged if w.name != MODEL]
        ModelStore(self.home / "models").prune()  # nothing else writes to this home; the server is idle
        return Write(round_, bundled_digest(), MODEL)

    def send(self, client, write):
        response = client.post("/api/pull", json={"model": MODEL, "stream": False})
        return response.status_code == 200 and response.json().get("status") == "success"


class BlobUpload(Operation):
    """POST /api/blobs/sha256:HEX with a fresh random body each round."""

    name = "blob upload"

    def prepare(self, client, round_):
        data = self.rng.randbytes(BLOB_BYTES)
        (self.work / f"blob-{round_}").write_bytes(data)
        return Write(round_, "sha256:" + hashlib.sha256(data).hexdigest())

    def send(self, client, write):
        data = (self.work / f"blob-{write.round}").read_bytes()
        return client.post(f"/api/blobs/{write.digest}", content=data).status_code == 201

    def after_round(self, write):
        (self.work / f"blob-{write.round}").unlink(missing_ok=True)


class Copy(Operation):
    """POST /api/copy smollm2 -> copy-N, a new name each round."""

    name = "copy"

    def setup(self):
        ModelStore(self.home / "models").pull(MODEL)

    def prepare(self, client, round_):
        return Write(round_, bundled_digest(), f"copy-{round_}")

    def send(self, client, write):
        return client.post("/api/copy", json={"source": MODEL, "destination": write.name}).status_code == 200


OPERATIONS: list[type[Operation]] = [Create, Pull, BlobUpload, Copy]


# -- servers, kills, doctor --------------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for child in children.read_text().split():
                found += [int(child), *descendants(int(child))]
        except OSError:
            continue
    return found


def kill_hard(server: ServerProcess | None) -> None:
    """SIGKILL the server and anything it started; then close its log."""
    if server is None or server.proc is None:
        return
    if server.proc.poll() is not None:  # already gone (and reaped: its pid may belong to another process now)
        server.stop()
        return
    for pid in [*descendants(server.proc.pid), server.proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.proc.wait()
    server.stop()


def run_doctor(home: Path, port: int, quick: bool) -> tuple[list[dict], float]:
    """`ember doctor --json --no-load` as a user runs it against this home and server; its checks and its time."""
    command = [sys.executable, "-m", "ember", "doctor", "--json", "--no-load", *(["--quick"] if quick else [])]
    started = time.perf_counter()
    done = subprocess.run(command, env=ember_env(home, port), capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    try:
        checks = json.loads(done.stdout)
    except ValueError:
        checks = [{"name": "doctor", "status": "fail", "message": f"exit {done.returncode}, no JSON: "
                   f"{(done.stdout + done.stderr)[-500:]}", "fix": ""}]
    return checks, elapsed


@dataclass
class Round:
    round: int
    delay_s: float | None  # when the kill came after sending; None: killed only after the answer (round 0)
    acknowledged: bool
    op_s: float | None  # until the acknowledgment, when there was one
    restart_s: float = 0.0
    doctor_s: float = 0.0
    doctor_failures: list[str] = field(default_factory=list)
    doctor_warnings: list[str] = field(default_factory=list)
    checked: int = 0  # acknowledged writes checked after this restart
    lost: list[str] = field(default_factory=list)
    half_made: list[str] = field(default_factory=list)
    written_unacknowledged: bool = False  # the kill came after the write was made, before its answer


def attempt(op: Operation, client_url: str, write: Write) -> tuple[bool, float | None]:
    """Sends the write from this thread; (acknowledged, seconds to the answer)."""
    started = time.perf_counter()
    try:
        with httpx.Client(base_url=client_url, timeout=120) as client:
            ok = op.send(client, write)
    except (httpx.HTTPError, ValueError):
        return False, None
    return ok, time.perf_counter() - started if ok else None


def check_after_restart(op: Operation, server: ServerProcess, record: Round, write: Write, quick: bool) -> None:
    """Run doctor, check every acknowledged write and every listed model."""
    checks, record.doctor_s = run_doctor(op.home, server.port, quick)
    record.doctor_failures = [c["message"] for c in checks if c["status"] == "fail"]
    record.doctor_warnings = [c["message"] for c in checks if c["status"] == "warn"]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        listed = listed_models(client)
        for earlier in op.acknowledged:
            problem = check_write(client, op.home, earlier, listed)
            record.checked += 1
            if problem:
                record.lost.append(f"round {earlier.round}: {problem}")
        for name in sorted(listed):
            show = client.post("/api/show", json={"model": name})
            if show.status_code != 200:
                record.half_made.append(f"{name}: /api/show {show.status_code} {show.text[:200]}")
        if not record.acknowledged:
            record.written_unacknowledged = not check_write(client, op.home, write, listed)


def run_operation(op_class: type[Operation], rounds: int, work: Path, rng: random.Random, quick: bool,
                  log_path: Path) -> dict:
    """Round 0 times the operation unkilled (then kills the server, so that its acknowledged write is checked after
    a restart too); rounds 1.. kill it a random time into the operation."""
    folder = op_class.name.replace(" ", "-")
    home, scratch = work / folder, work / f"{folder}-scratch"
    home.mkdir()
    scratch.mkdir()
    op = op_class(home, scratch, rng)
    op.setup()
    results: list[Round] = []
    server = None
    typical = 0.0
    started = time.perf_counter()
    try:
        server = ember_server(home, log_path=log_path).start()
        for i in range(rounds + 1):
            with httpx.Client(base_url=server.url, timeout=120) as client:
                write = op.prepare(client, i)
            delay = rng.uniform(0, typical) if i else None
            with ThreadPoolExecutor(1) as sender:
                sent = sender.submit(attempt, op, server.url, write)
                if delay is not None:
                    time.sleep(delay)
                    kill_hard(server)
                acknowledged, op_s = sent.result(timeout=120)
            if i == 0:
                if not acknowledged or op_s is None:
                    raise RuntimeError(f"{op.name} failed without a kill: see {log_path}")
                typical = op_s
                kill_hard(server)
            if acknowledged:
                op.acknowledged.append(write)
            record = Round(i, delay, acknowledged, op_s)
            restart = time.perf_counter()
            server = ember_server(home, log_path=log_path).start()
            record.restart_s = time.perf_counter() - restart
            check_after_restart(op, server, record, write, quick)
            op.after_round(write)
            results.append(record)
            when = f"kill after {delay * 1000:.0f} ms" if delay is not None else f"took {op_s * 1000:.0f} ms, then kill"
            say(f"{op.name} round {i}/{rounds}: {when}, {'acknowledged' if acknowledged else 'not acknowledged'}"
                f"{' (but written)' if record.written_unacknowledged else ''}; restart {record.restart_s:.1f} s, "
                f"doctor {record.doctor_s:.1f} s, {len(record.doctor_failures)} failures, {len(record.lost)} lost")
        server.stop()  # a clean stop, then the whole store verified once more with no server around
        final_checks, _ = run_doctor(home, server.port, quick=False)
        final_failures = [c["message"] for c in final_checks if c["status"] == "fail"]
    finally:
        kill_hard(server)
    return summarize_operation(op, results, final_failures, typical, time.perf_counter() - started, log_path)


def summarize_operation(op: Operation, results: list[Round], final_failures: list[str], typical: float,
                        elapsed: float, log_path: Path) -> dict:
    killed = [r for r in results if r.delay_s is not None]  # round 0 was killed only after its answer
    return {
        "operation": op.name, "rounds": len(killed), "typical_s": typical, "elapsed_s": elapsed,
        "killed_before_ack": sum(not r.acknowledged for r in killed),
        "written_unacknowledged": sum(r.written_unacknowledged for r in killed),
        "acknowledged_writes": sum(r.acknowledged for r in results),  # round 0's included
        "checks_of_acknowledged_writes": sum(r.checked for r in results),
        "doctor_failures": sum(len(r.doctor_failures) for r in results) + len(final_failures),
        "final_doctor_failures": final_failures,
        "lost_writes": sum(len(r.lost) for r in results),
        "half_made": sum(len(r.half_made) for r in results),
        "restart_s_median": statistics.median(r.restart_s for r in results),
        "doctor_s_median": statistics.median(r.doctor_s for r in results),
        "server_log": str(log_path), "server_log_errors": log_errors(log_path),
        "rounds_detail": [asdict(r) for r in results],
    }


def log_errors(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if re.search(r"\bERROR\b|Traceback|unexpected error", line)][:40]


# -- a full disk -------------------------------------------------------------------------------------------------------

def partial_files(home: Path) -> list[str]:
    return [str(p.relative_to(home)) for p in home.rglob(f"{TMP_PREFIX}*")]


def upload_declared_only(url: str, size: int) -> tuple[int | None, str]:
    """Sends only the headers of an upload declaring `size` bytes; a server that checks first answers at once."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/api/blobs/sha256:" + "ab" * 32)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")[:300]
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def upload_chunked(url: str, size: int) -> tuple[int | None, str]:
    """An upload without Content-Length, larger than the disk: refused once it passes what fits."""
    def chunks():
        for _ in range(size // (1 << 20)):
            yield b"\0" * (1 << 20)

    try:
        response = httpx.post(f"{url}/api/blobs/sha256:{'cd' * 32}", content=chunks(), timeout=60)
        return response.status_code, response.text[:300]
    except httpx.HTTPError as e:  # the server may answer and close while the body is still being sent
        return None, f"{type(e).__name__}: {e}"


def full_disk_checks(home: Path, work: Path, log_path: Path) -> list[dict]:
    """The store on a disk too small for smollm2, with a small model already in it. Every request on a connection of
    its own, so that one the server drops cannot fail the next check."""
    checks: list[dict] = []

    def check(what: str, expected: str, ok: bool, got: str) -> None:
        checks.append({"check": what, "expected": expected, "ok": ok, "got": got})

    def request(method: str, path: str, **kwargs) -> tuple[int | None, str]:
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client, \
                    client.stream(method, path, **kwargs) as response:
                return response.status_code, response.read().decode(errors="replace")
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}"

    tiny = write_gguf(work / "tiny.gguf")  # content for the full disk's store that must come through undamaged
    ModelStore(home / "models").create("tiny", CreateSpec(from_=str(tiny)))
    tiny_digest = sha256_file(tiny)
    log_start = log_path.stat().st_size if log_path.exists() else 0
    server = None
    try:
        server = ember_server(home, log_path=log_path).start()
        status, text = request("POST", "/api/pull", json={"model": MODEL, "stream": False})
        check("pull smollm2 (stream: false)", "507, 'disk is full'", status == 507 and "disk is full" in text,
              f"{status} {text[:300]}")
        status, text = request("POST", "/api/pull", json={"model": MODEL})
        errors = [line for line in text.splitlines() if '"error"' in line]
        shown = (errors or text.splitlines()[-1:] or [""])[0][:300]  # the error line, else the stream's last
        check("pull smollm2 (streamed)", "an error line with 'disk is full'",
              any("disk is full" in line for line in errors), f"{status}; {shown}")
        status, text = upload_declared_only(server.url, OVERSIZED_UPLOAD)
        check(f"upload declaring {OVERSIZED_UPLOAD >> 20} MB (> free)", "413 before the body is sent",
              status == 413, f"{status} {text}")
        status, text = upload_chunked(server.url, OVERSIZED_UPLOAD)
        check(f"chunked upload of {OVERSIZED_UPLOAD >> 20} MB", "413 (or the connection closed by the server)",
              status in (413, None), f"{status} {text}")
        left = partial_files(home)
        check("partial files left", "none", not left, ", ".join(left) or "none")
        blobs = sorted(p.name[:19] for p in (home / "models" / "blobs").iterdir())
        check("blobs in the store", "tiny's, no smollm2 piece", tiny_digest.replace(":", "-")[:19] in blobs and
              not any(b.startswith("sha256-" + bundled_digest()[7:19]) for b in blobs), ", ".join(blobs))
        with httpx.Client(base_url=server.url, timeout=120) as client:
            problem = check_write(client, home, Write(0, tiny_digest, "tiny"), listed_models(client))
        check("the model there before", "listed, shows, its blob whole", not problem, problem or "ok")
        status, _ = request("GET", "/health")
        check("server still serving", "/health 200", status == 200, str(status))
        doctor, _ = run_doctor(home, server.port, quick=False)
        failures = [c["message"] for c in doctor if c["status"] == "fail"]
        check("ember doctor", "no failures", not failures,
              "; ".join(failures) or "; ".join(f"{c['status']}: {c['message']}" for c in doctor
                                               if c["name"] in ("store", "disk")))
    finally:
        if server:
            server.stop()
    # What an operator sees: a full disk is the user's problem, not a crash; a 507 logged as a 500 with a traceback
    # (and the connection dropped) would send them looking for a bug.
    log = log_path.read_bytes()[log_start:].decode(errors="replace") if log_path.exists() else ""
    statuses = re.findall(r"POST /api/(?:pull|blobs/\S+) (\d{3})", log)
    tracebacks = log.count("Traceback")
    check("server log of these requests", "4xx/507 statuses, no traceback",
          not tracebacks and "500" not in statuses, f"statuses {', '.join(statuses)}; {tracebacks} tracebacks")
    return checks


def full_disk(work: Path, log_path: Path) -> list[dict]:
    """Mounts a tmpfs as the home; where mounting is not permitted, runs the same inside a user+mount namespace."""
    mount_point = work / "tmpfs-home"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode == 0:
        try:
            return full_disk_checks(mount_point, work, log_path)
        except Exception as e:  # the server did not start, say: the other checks' results still get reported
            return [{"check": "full disk", "expected": "checks run", "ok": False, "got": f"{type(e).__name__}: {e}"}]
        finally:
            if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
    say(f"mount failed ({mounted.stderr.strip()}); trying unshare -rm")
    inside = subprocess.run(["unshare", "-rm", sys.executable, __file__, "--full-disk-inside", str(mount_point),
                             "--log", str(log_path)], capture_output=True, text=True, timeout=600)
    try:
        return json.loads(inside.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        why = f"mount: {mounted.stderr.strip()}; unshare -rm: {(inside.stderr or inside.stdout).strip()[-300:]}"
        return [{"check": "full disk", "expected": "a tmpfs home", "ok": None, "got": f"skipped: {why}"}]


def full_disk_inside(mount_point: Path, log_path: Path) -> None:
    """In a user+mount namespace: mount the tmpfs (ours alone), run the checks, print them as JSON."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)], check=True)
    print(json.dumps(full_disk_checks(mount_point, mount_point.parent, log_path)))


# -- the report --------------------------------------------------------------------------------------------------------

def _red(n: int) -> str:
    return f"[red]{n}[/red]" if n else "0"


def report(summary: dict) -> None:
    table = Table(title=f"faults: kill -9 mid-write, {summary['config']['rounds']} rounds each")
    columns = ("operation", "rounds", "killed before ack", "written, not acked", "acked writes / checks",
               "doctor failures", "lost writes", "half-made", "op s", "seconds")
    for column in columns:
        table.add_column(column, justify="left" if column == "operation" else "right", no_wrap=column == "operation")
    for op in summary["operations"]:
        if "error" in op:
            table.add_row(op["operation"], "—", "—", "—", "—", "—", "—", "—", "—", f"[red]{op['error'][:60]}[/red]")
            continue
        table.add_row(op["operation"], str(op["rounds"]), str(op["killed_before_ack"]),
                      str(op["written_unacknowledged"]),
                      f"{op['acknowledged_writes']} / {op['checks_of_acknowledged_writes']}",
                      _red(op["doctor_failures"]), _red(op["lost_writes"]), _red(op["half_made"]),
                      f"{op['typical_s']:.2f}", f"{op['elapsed_s']:.0f}")
    table.caption = f"not in ember yet, so not tested: {', '.join(NOT_IN_EMBER_YET)}"
    if summary["operations"]:
        console.print(table)

    disk = Table(title=f"full disk: a {TMPFS_SIZE} tmpfs as EMBER_HOME")
    for column in ("check", "expected", "ok", "got"):
        disk.add_column(column, overflow="fold")
    for c in summary["full_disk"]:
        verdict = "skipped" if c["ok"] is None else ("[green]yes[/green]" if c["ok"] else "[red]NO[/red]")
        disk.add_row(c["check"], c["expected"], verdict, c["got"])
    console.print(disk)
    for op in summary["operations"]:
        if "error" in op:
            console.print(f"[red]{op['operation']}[/red]: {op['error']}")
        for r in op.get("rounds_detail", []):
            for problem in r["doctor_failures"] + r["lost"] + r["half_made"]:
                console.print(f"[red]{op['operation']} round {r['round']}[/red]: {problem}")
        for line in op.get("final_doctor_failures", []):
            console.print(f"[red]{op['operation']} final doctor[/red]: {line}")
        for line in op.get("server_log_errors", [])[:10]:
            console.print(f"[yellow]{op['operation']} server log[/yellow] {line}")
    console.print(f"total {summary['elapsed_s']:.0f} s; verdict: "
                  + ("[green]pass[/green]" if summary["passed"] else "[red]FAIL[/red]"))


def run(rounds: int, out: Path, quick: bool, seed: int) -> dict:
    rng = random.Random(seed)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ember-faults-"))
    operations: list[dict] = []
    try:
        for op_class in OPERATIONS if rounds else []:
            say(f"{op_class.name}: {rounds} rounds")
            log_path = out / f"faults-{stamp}-{op_class.name.replace(' ', '-')}.server.log"
            try:
                operations.append(run_operation(op_class, rounds, work, rng, quick, log_path))
            except Exception as e:  # the server did not (re)start, the operation fails even unkilled, ...
                operations.append({"operation": op_class.name, "error": f"{type(e).__name__}: {e}"[:2000],
                                   "server_log": str(log_path)})
        say("full disk")
        full = full_disk(work, out / f"faults-{stamp}-full-disk.server.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed_ops = [op for op in operations if "error" in op or op["doctor_failures"] or op["lost_writes"]
                  or op["half_made"]]
    summary = {"config": {"rounds": rounds, "quick": quick, "seed": seed, "tmpfs_size": TMPFS_SIZE,
                          "blob_bytes": BLOB_BYTES},
               "started": stamp, "elapsed_s": time.perf_counter() - started,
               "not_in_ember_yet": list(NOT_IN_EMBER_YET), "operations": operations, "full_disk": full,
               "passed": not failed_ops and all(c["ok"] is not False for c in full)}
    json_path = out / f"faults-{stamp}.json"
    json_path.write_text(json.dumps(summary, indent=2))
    report(summary)
    console.print(f"wrote {json_path}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="killed rounds per operation")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON and logs go")
    parser.add_argument("--quick", action="store_true", help="doctor --quick after each restart (sizes, not digests)")
    parser.add_argument("--seed", type=int, help="for the kill times and the random bytes (default: a fresh one)")
    parser.add_argument("--full-disk-only", action="store_true", help="only the full-disk checks (no kills)")
    parser.add_argument("--full-disk-inside", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.full_disk_inside:
        full_disk_inside(args.full_disk_inside, args.log)
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    return 0 if run(0 if args.full_disk_only else args.rounds, args.out, args.quick, seed)["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
