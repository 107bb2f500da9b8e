"""Backups and restores: everything comes back identical, hostile archives change nothing, a cancel leaves nothing."""

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ember.bench.harness import free_port
from ember.cli import backup as backup_cli
from ember.core.errors import BadRequest, EmberError
from ember.ops import backup as ops
from ember.runtime.jobs import Cancelled
from ember.store.modelfile import CreateSpec
from ember.store.store import ModelStore
from tests.helpers import Reports, settings, write_gguf

SQLITE_MAGIC = b"SQLite format 3\x00"


def add_rows(db: Path, texts: list[str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO messages (text) VALUES (?)", [(t,) for t in texts])
    conn.close()


def make_db(db: Path, wal: bool = False) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    conn.commit()
    conn.close()
    add_rows(db, [f"message {i}" for i in range(50)])


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return conn.execute("SELECT id, text FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()


def tree(*roots: Path) -> dict[str, str]:
    """Every folder and file under the roots (backups aside): a file's sha256, a database's rows (its bytes may
    differ once copied), a file's permissions."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = f"{root.name}/{path.relative_to(root)}"
            if "backups" in path.relative_to(root).parts[:1]:
                continue
            if path.is_symlink():
                found[rel] = f"link to {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "folder"
            elif path.read_bytes()[:16] == SQLITE_MAGIC:
                found[rel] = f"database {hashlib.sha256(repr(rows(path)).encode()).hexdigest()}"
            else:
                found[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {oct(path.stat().st_mode & 0o777)}"
    return found


def everything(tmp_path: Path) -> dict[str, str]:
    """The whole temp folder, backups included: what a refused restore must leave exactly as it was."""
    return {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(tmp_path.rglob("*"))}


def wipe(*roots: Path) -> None:
    for root in roots:
        for path in root.iterdir() if root.exists() else []:
            if path.name == "backups":
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


BOTH_LAYOUTS = pytest.mark.parametrize("setup", ["models-in-home", "models-elsewhere"], indirect=True)


@pytest.fixture
def setup(request, tmp_path):
    """A home with two models (one with a Modelfile's system prompt and parameters), keys, two databases and files;
    the store in EMBER_HOME/models, or elsewhere (EMBER_MODELS) where a test asks for both layouts."""
    home = tmp_path / "home"
    layout = getattr(request, "param", "models-in-home")
    models = home / "models" if layout == "models-in-home" else tmp_path / "elsewhere" / "models"
    s = settings(home, models=models)
    home.mkdir()
    store = ModelStore(models)
    sources = tmp_path / "src"
    sources.mkdir()
    store.create("alpha", CreateSpec(from_=str(write_gguf(sources / "alpha.gguf", rows=16))))
    store.create("beta:v1", CreateSpec(from_=str(write_gguf(sources / "beta.gguf", rows=24)), system="Be brief.",
                                       parameters={"temperature": 0.3}))
    s.keys_file.write_text(json.dumps({"keys": [{"id": "k1", "hash": "abc"}]}))
    s.keys_file.chmod(0o600)
    make_db(home / "conversations.db", wal=True)
    make_db(home / "collections" / "notes.sqlite3")
    (home / "collections" / "docs").mkdir()
    (home / "collections" / "docs" / "readme.txt").write_text("hello")
    return s, store


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


@BOTH_LAYOUTS
def test_backup_wipe_restore_with_models_is_identical(setup):
    s, store = setup
    before, listed = tree(s.home, s.models), [(m.name, m.digest, m.modified_at) for m in store.list()]
    result = ops.backup(s, with_models=True)
    assert result.path.parent == s.backups and result.path.name.endswith("-models.tar")
    assert result.path.stat().st_mode & 0o777 == 0o600  # it holds the keys
    assert result.models == ["alpha:latest", "beta:v1"] and result.without_weights == []
    names = members(result.path)
    assert names[0] == "MANIFEST.json" and "home/keys.json" in names and not any("backups" in n for n in names)
    assert len(store.blobs.all_digests()) == sum(n.startswith("models/blobs/") for n in names)

    wipe(s.home, s.models)
    assert tree(s.home, s.models) != before
    seen = Reports()
    restored = ops.restore(s, result.path, seen)
    assert tree(s.home, s.models) == before
    assert restored.models == ["alpha:latest", "beta:v1"] and restored.weights_missing == [] and restored.files == 4
    again = ModelStore(s.models)
    assert [(m.name, m.digest, m.modified_at) for m in again.list()] == listed  # dates too: mtimes are kept
    assert again.get("beta:v1").system == "Be brief." and again.get("beta:v1").params == {"temperature": 0.3}
    assert {"verifying archive", "restoring files", "replacing the current files"} <= set(seen.statuses)
    assert not list(s.home.glob(".restore-*")) and not list(s.models.glob(".restore-*"))


@BOTH_LAYOUTS
def test_backup_without_weights_restores_over_changed_data_and_keeps_the_weights(setup):
    s, store = setup
    before = tree(s.home, s.models)
    result = ops.backup(s)
    assert result.without_weights == ["alpha:latest", "beta:v1"] and "-models" not in result.path.name
    weights = {layer["digest"] for m in store.list() for layer in m.layers if layer["mediaType"].endswith(".model")}
    archived = set(members(result.path))
    assert not {f"models/blobs/{d.replace(':', '-')}" for d in weights} & archived
    system = next(layer["digest"] for layer in store.get("beta:v1").layers if layer["mediaType"].endswith(".system"))
    assert f"models/blobs/{system.replace(':', '-')}" in archived  # the Modelfile's parts are kept

    # Changes after the backup: all undone by the restore, while the weights stay.
    s.keys_file.write_text("{}")
    (s.home / "later.txt").write_text("made after the backup")
    add_rows(s.home / "conversations.db", ["after"])
    store.copy("alpha", "gamma")
    (s.home / "collections" / "docs" / "readme.txt").unlink()
    restored = ops.restore(s, result.path)
    assert tree(s.home, s.models) == before and restored.weights_missing == []
    assert ModelStore(s.models).get("alpha").model_path.is_file()


@BOTH_LAYOUTS
def test_without_weights_a_wiped_store_gets_its_recipes_back(setup):
    s, store = setup
    weight_blobs = {m.model_path.name for m in store.list()}
    before = {k: v for k, v in tree(s.home, s.models).items() if k.rpartition("/")[2] not in weight_blobs}
    result = ops.backup(s)
    compressed = s.home.parent / "compressed.tar.gz"  # as a user may keep it
    compressed.write_bytes(gzip.compress(result.path.read_bytes()))
    wipe(s.home, s.models)
    restored = ops.restore(s, compressed)
    assert restored.weights_missing == ["alpha:latest", "beta:v1"]
    assert tree(s.home, s.models) == before
    with pytest.raises(EmberError, match="blob .* is missing"):
        ModelStore(s.models).get("alpha")


def test_a_database_is_copied_consistently_while_another_connection_writes(setup):
    s, _ = setup
    db = s.home / "collections" / "notes.sqlite3"
    committed = rows(db)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.executemany("INSERT INTO messages (text) VALUES (?)", [(f"pending {i}",) for i in range(100)])
    result = ops.backup(s)  # while the write transaction is open (and its journal beside the file)
    assert (s.home / "collections" / "notes.sqlite3-journal").exists()
    assert not any(n.endswith(("-journal", "-wal", "-shm")) for n in members(result.path))
    writer.execute("COMMIT")
    writer.close()
    wipe(s.home, s.models)
    ops.restore(s, result.path)
    assert rows(db) == committed


def test_a_database_written_all_along_is_backed_up_whole(setup):
    s, _ = setup
    db = s.home / "conversations.db"
    stop = threading.Event()

    def write() -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=10)
        n = 0
        while not stop.is_set():
            conn.execute("INSERT INTO messages (text) VALUES (?)", (f"live {n}",))
            n += 1
        conn.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(0.05)
        archives = [ops.backup(s).path for _ in range(2)]
    finally:
        stop.set()
        thread.join()
    for archive in archives:
        wipe(s.home, s.models)
        ops.restore(s, archive)
        restored = rows(db)
        assert len(restored) >= 50 and [r[0] for r in restored] == list(range(1, len(restored) + 1))


def test_list_and_prune_keep_the_newest_automatic_backups(setup):
    s, _ = setup
    start = datetime(2025, 1, 1, 3, 0).astimezone()
    made = [ops.backup(s, automatic=True, created=start + timedelta(days=i)).path for i in range(4)]
    manual = ops.backup(s, created=start - timedelta(days=1)).path
    listed = ops.list_backups(s)
    assert [i.path for i in listed] == [*reversed(made), manual]
    assert [i.automatic for i in listed] == [True] * 4 + [False] and listed[0].models == ["alpha:latest", "beta:v1"]
    assert made[0].name == "ember-backup-20250101-030000-auto.tar"
    assert ops.prune_backups(s, 2) == [made[1], made[0]]
    assert sorted(s.backups.iterdir()) == sorted([made[2], made[3], manual])
    same_second = ops.backup(s, automatic=True, created=start + timedelta(days=3)).path
    assert same_second.name == "ember-backup-20250104-030000-2-auto.tar"  # never overwrites


@pytest.mark.parametrize(("stage", "nth"), [("reading files", 1), ("reading files", 2), ("writing archive", 1)])
def test_a_cancelled_backup_leaves_nothing(setup, stage, nth):
    """The second "reading files" report comes from inside SQLite's copy of conversations.db, the first file."""
    s, _ = setup
    seen = []

    def report(status, **_):
        seen.append(status)
        if seen.count(stage) == nth:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        ops.backup(s, with_models=True, report=report)
    assert list(s.backups.iterdir()) == []


@pytest.mark.parametrize("stage", ["verifying archive", "restoring files", "replacing the current files"])
def test_a_cancelled_restore_changes_nothing(setup, tmp_path, stage):
    s, store = setup
    archive = ops.backup(s, with_models=True).path
    (s.home / "later.txt").write_text("made after the backup")
    before = everything(tmp_path)

    def report(status, **progress):
        if status == stage:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        ops.restore(s, archive, report)
    assert everything(tmp_path) == before


# -- hostile and damaged archives ----------------------------------------------------------------------------------


def forge(path: Path, files: list[tuple[str, bytes]], *, special: tuple[tarfile.TarInfo, ...] = (),
          listed: list[tuple[str, bytes]] | None = None, manifest: str = "first") -> Path:
    """An archive with these members, and a MANIFEST that lists `listed` (default: the files, sums right)."""
    entries = [{"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
               for name, data in (files if listed is None else listed)]
    body = json.dumps({"format": "ember-backup", "version": 1, "with_models": False, "files": entries}).encode()

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        if manifest == "first":
            add(tar, "MANIFEST.json", body)
        for name, data in files:
            add(tar, name, data)
        for info in special:
            tar.addfile(info)
        if manifest == "last":
            add(tar, "MANIFEST.json", body)
    return path


def link(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


KEYS = ("home/keys.json", b'{"keys": []}')
HOSTILE = {
    "parent": ([KEYS, ("../evil", b"x")], {}, "'..'"),
    "parent inside": ([KEYS, ("home/../../evil", b"x")], {}, "'..'"),
    "absolute": ([KEYS, ("/tmp/evil", b"x")], {}, "absolute path"),
    "outside home and models": ([KEYS, ("etc/evil", b"x")], {}, "outside home/ and models/"),
    "into backups": ([KEYS, ("home/backups/evil.tar", b"x")], {}, "backups/ folder"),
    "symlink": ([KEYS], {"special": (link("home/evil", tarfile.SYMTYPE, "/etc/passwd"),)}, "symbolic link"),
    "hard link": ([KEYS], {"special": (link("home/evil", tarfile.LNKTYPE, "home/keys.json"),)}, "hard link"),
    "device": ([KEYS], {"special": (link("home/evil", tarfile.CHRTYPE),)}, "device file"),
    "no manifest": ([KEYS], {"manifest": "none"}, "no MANIFEST.json"),
    "manifest last": ([KEYS], {"manifest": "last"}, "no MANIFEST.json"),
    "not listed": ([KEYS, ("home/extra", b"x")], {"listed": [KEYS]}, "not listed in MANIFEST.json"),
    "listed, absent": ([KEYS], {"listed": [KEYS, ("home/gone", b"x")]}, "not in the archive"),
    "wrong sum": ([KEYS], {"listed": [("home/keys.json", b'{"keys": [1]}')]}, "has 12 bytes where"),
    "twice": ([KEYS, KEYS], {"listed": [KEYS]}, "appears twice"),
    "file in a file": ([KEYS, ("home/keys.json/x", b"x")], {}, "which is a file"),
}


def hostile_cases(s, archive: Path, tmp: Path):
    for label, (files, options, why) in HOSTILE.items():
        yield label, forge(tmp / f"{label}.tar", files, **options), why
    data = archive.read_bytes()
    (tmp / "truncated.tar").write_bytes(data[: len(data) * 2 // 3])
    yield "truncated", tmp / "truncated.tar", "not in the archive|damaged"
    (tmp / "garbage.tar").write_bytes(os.urandom(4096))
    yield "garbage", tmp / "garbage.tar", "cannot be read as a tar archive|no MANIFEST.json"
    with tarfile.open(archive) as src, tarfile.open(tmp / "tampered.tar", "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "home/keys.json":
                data = data.replace(b"abc", b"abd")  # same size: only the sha256 can tell
            dst.addfile(member, io.BytesIO(data))
    yield "tampered", tmp / "tampered.tar", "does not match its sha256"


def test_hostile_and_damaged_archives_are_refused_and_change_nothing(setup, tmp_path):
    s, _ = setup
    archive = ops.backup(s, with_models=True).path
    forged = tmp_path / "forged"
    forged.mkdir()
    cases = list(hostile_cases(s, archive, forged))
    before = everything(tmp_path)
    for label, path, why in cases:
        with pytest.raises(BadRequest, match=why) as refused:
            ops.restore(s, path)
        assert "nothing was restored" in refused.value.message, label
        assert everything(tmp_path) == before, label
    assert not list(tmp_path.rglob("evil*"))


def test_a_member_is_named_in_the_refusal(setup, tmp_path):
    s, _ = setup
    listed = forge(tmp_path / "listed.tar", [KEYS, ("home/../../evil", b"x")])
    with pytest.raises(BadRequest, match=r"member 'home/\.\./\.\./evil' \(in MANIFEST.json\) has a '\.\.' path"):
        ops.restore(s, listed)
    unlisted = forge(tmp_path / "unlisted.tar", [KEYS, ("home/../../evil", b"x")], listed=[KEYS])
    with pytest.raises(BadRequest, match=r"unlisted.tar: member 'home/\.\./\.\./evil' has a '\.\.' path part"):
        ops.restore(s, unlisted)


def test_backups_never_go_inside_the_data_they_save(setup, tmp_path):
    s, _ = setup
    with pytest.raises(BadRequest, match="inside EMBER_HOME"):
        ops.backup(s, to=s.home / "mine")
    elsewhere = ops.backup(s, to=tmp_path / "mine").path
    assert elsewhere.parent == tmp_path / "mine"
    inside = s.home / "copy.tar"
    inside.write_bytes(elsewhere.read_bytes())
    with pytest.raises(BadRequest, match="inside the data a restore replaces"):
        ops.restore(s, inside)


# -- automatic backups ---------------------------------------------------------------------------------------------


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_schedule_writes_prunes_survives_a_failure_and_stops_promptly(setup, monkeypatch, caplog):
    s, _ = setup
    s = settings(s.home, models=s.models, backup_every=0.1, backup_keep=2)
    real_backup, calls = ops.backup, []

    def failing_once(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise OSError("disk on fire")
        return real_backup(*args, **kwargs)

    monkeypatch.setattr(ops, "backup", failing_once)
    schedule = ops.BackupSchedule(s)
    with caplog.at_level(logging.INFO, logger="ember.backup"):
        schedule.start()
        wait_for(lambda: schedule.written >= 3)
        started = time.monotonic()
        schedule.stop()
    assert time.monotonic() - started < 2 and not schedule._thread.is_alive()
    assert "automatic backup failed" in caplog.text and "disk on fire" in caplog.text
    assert all(kw["automatic"] and not kw.get("with_models") for kw in calls)
    kept = ops.list_backups(s)
    assert len(kept) == 2 and all(info.automatic and not info.with_models for info in kept)


def test_the_schedule_waits_for_the_interval_after_the_newest_backup(setup):
    s, _ = setup
    hourly = settings(s.home, models=s.models, backup_every=3600)
    ops.backup(hourly, automatic=True)
    schedule = ops.BackupSchedule(hourly)
    schedule.start()
    time.sleep(0.2)
    schedule.stop()
    assert schedule.written == 0 and len(ops.list_backups(hourly)) == 1

    # A server that was down past the due time makes one at once.
    later = ops.BackupSchedule(hourly, now=lambda: time.time() + 7200)
    later.start()
    wait_for(lambda: later.written == 1)
    later.stop()

    off = ops.BackupSchedule(settings(s.home, models=s.models))
    off.start()
    assert off._thread is None
    off.stop()


def test_a_cancel_from_stop_leaves_no_archive(setup, monkeypatch):
    s, _ = setup
    s = settings(s.home, models=s.models, backup_every=0.05)
    schedule = ops.BackupSchedule(s)
    schedule._stopping.set()  # as if stop() came while it writes: its first report cancels
    assert schedule.run_once() is None
    assert list(s.backups.iterdir()) in ([], [s.backups / ".auto.lock"])


# -- the commands --------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(setup, monkeypatch):
    """The commands registered as ember.cli.main registers them."""
    s, _ = setup
    app = typer.Typer()
    app.add_typer(backup_cli.backup_app, name="backup")
    app.command()(backup_cli.restore)
    monkeypatch.setenv("EMBER_HOME", str(s.home))
    monkeypatch.setenv("EMBER_MODELS", str(s.models))
    monkeypatch.setenv("EMBER_HOST", f"127.0.0.1:{free_port()}")
    runner = CliRunner()
    return s, lambda *args, **kw: runner.invoke(app, list(args), **kw)


@BOTH_LAYOUTS
def test_backup_ls_and_restore_commands(cli):
    s, ember = cli
    made = ember("backup")
    assert made.exit_code == 0, made.output
    assert "wrote" in made.output and "alpha:latest, beta:v1" in made.output
    name = next(s.backups.glob("ember-backup-*.tar")).name
    listing = ember("backup", "ls")
    assert f" {name}  " in listing.output and "WEIGHTS" in listing.output

    before = tree(s.home, s.models)
    (s.home / "later.txt").write_text("made after the backup")
    refused = ember("restore", name, input="n\n")
    assert refused.exception.message == "nothing was restored" and (s.home / "later.txt").exists()
    done = ember("restore", name, "--yes")  # by its name in the backups folder
    assert done.exit_code == 0, done.output
    assert "restored 2 models: alpha:latest, beta:v1, and 4 other files" in done.output
    assert tree(s.home, s.models) == before


def test_restore_refuses_while_a_server_runs(cli, monkeypatch):
    s, ember = cli
    ember("backup")
    monkeypatch.setattr(backup_cli, "server_running", lambda settings: True)
    result = ember("restore", next(s.backups.iterdir()).name, "--yes")
    assert isinstance(result.exception, EmberError) and "stop the server first" in result.exception.message
