"""Backups: one tar archive of everything a user would miss, and a restore that checks all of it before it changes a
thing.

What goes in: every file under EMBER_HOME (keys, conversations, collections, training runs, ...) as `home/...`, except
the backups folder itself and partial `.tmp-*` files; and the model store (EMBER_MODELS, wherever it is) as
`models/...`. Without `with_models` the store's weights (the blobs of model and adapter layers) stay out, but the
manifests and the small blobs that hold each model's Modelfile (template, system, parameters, messages, license) go
in: restoring such a backup brings every model's recipe back, and a model works again once its weights are back
(`ember pull`, `ember create` from the same GGUF, or a restore from a backup made with models).

Why a plain `.tar`: weights barely compress and gzip would cost minutes per GB on one core, while the rest is small;
and restore reads the archive twice (verify, then extract), which costs no decompression. Restore also reads an
archive a user compressed (.tar.gz, .tar.xz).

Consistency while a server runs: SQLite databases are copied with SQLite's online backup API (a committed state,
whatever other connections are doing); other files are copied once into a spool file, and the archive is written
from that copy, so each checksum is that of the bytes archived. The store's lock is held shared throughout, so no
model is created or removed mid-backup; blobs are immutable and named by their sha256 (checked as they are read).

Restore: verify every member (type, path, size, sha256, exactly the MANIFEST's list), extract into `.restore-*`
folders inside EMBER_HOME and EMBER_MODELS (same filesystem, so the swap is renames), fsync, then swap: the current
entries are moved into `.restore-*/old`, the restored ones moved in, and `old` is deleted last. A process killed
during the swap leaves each entry either in place or in `old` (never lost): run the same restore again, which
replaces everything, then delete the `.restore-*` folder it names; or move the entries of `old` back by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ember import __version__
from ember.config import Settings
from ember.core.errors import BadRequest, EmberError
from ember.fsutil import TMP_PREFIX, commit, fsync_dir, make_dirs, open_temp, remove_partials
from ember.runtime.jobs import Cancelled
from ember.store.manifests import layer_kind
from ember.store.store import silent

log = logging.getLogger("ember.backup")

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "ember-backup"
FORMAT_VERSION = 1
RESTORE_PREFIX = ".restore-"
PREFIX = "ember-backup-"
AUTO_SUFFIX = "-auto"
WEIGHT_KINDS = ("model", "adapter")
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
CHUNK = 1 << 20
REPORT_EVERY = 4 << 20  # bytes between progress reports (each one is also where a cancel can stop the work)
MAX_MANIFEST = 64 << 20
_BLOB_NAME = re.compile(r"sha256-([0-9a-f]{64})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ARCHIVE_NAME = re.compile(r"ember-backup-.*\.tar(\.gz|\.xz|\.bz2)?")

Report = Callable[..., None]  # a job's Reporter: report(status, completed=, total=, item=); may raise Cancelled


@dataclass
class BackupResult:
    path: Path
    size: int
    files: int
    with_models: bool
    models: list[str]  # every model whose manifest is in the archive
    without_weights: list[str]  # models whose weights are not in the archive
    skipped: list[str] = field(default_factory=list)  # symbolic links and special files, which are not backed up


@dataclass
class BackupInfo:
    path: Path
    size: int
    created: datetime | None
    with_models: bool
    automatic: bool
    models: list[str]
    error: str | None = None  # why the archive's MANIFEST cannot be read


@dataclass
class RestoreResult:
    models: list[str]
    weights_missing: list[str]  # restored models whose weights are not on this machine
    files: int  # files restored under EMBER_HOME
    leftovers: list[Path]  # folders an interrupted restore left, holding the data it had moved aside


# -- progress ----------------------------------------------------------------------------------------------------------


class _Progress:
    """Bytes done of a total, reported every few MB (and at the end), under one status."""

    def __init__(self, report: Report, status: str, total: int, item: str):
        self.report, self.status, self.total, self.item = report, status, total, item
        self.done = self.reported = 0
        self.report(status, completed=0, total=total, item=item)

    def add(self, n: int) -> None:
        self.done += n
        if self.done - self.reported >= REPORT_EVERY:
            self.flush()

    def flush(self) -> None:
        self.reported = self.done
        self.report(self.status, completed=min(self.done, self.total), total=self.total, item=self.item)


class _Reading:
    """A file read through: hashes and counts what passes, for tarfile to copy from."""

    def __init__(self, f: IO[bytes], progress: _Progress):
        self.f, self.progress = f, progress
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.progress.add(len(data))
        return data


# -- what is backed up ---------------------------------------------------------------------------------------------


@dataclass
class _Source:
    arcname: str
    path: Path
    size: int
    mode: int
    mtime: float
    sqlite: bool = False
    sha256: str = ""  # known beforehand for a blob (its name); for spooled files once copied
    offset: int = 0  # where the copy starts in the spool


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk(root: Path, excluded: set[tuple[int, int] | None], skipped: list[str],
          top_skip: Callable[[str], bool]) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files under `root`, without excluded folders, symbolic links, partial files, or names at the top that
    `top_skip` refuses."""

    def fail(e: OSError) -> None:
        raise EmberError(f"cannot read {e.filename}: {e.strerror}; nothing was backed up")

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        here = Path(dirpath)
        at_top = here == root
        kept = []
        for name in dirnames:
            path = here / name
            if _identity(path) in excluded or (at_top and top_skip(name)):
                continue  # checked through links too: EMBER_MODELS may be a link inside EMBER_HOME
            if path.is_symlink():
                skipped.append(str(path))
            else:
                kept.append(name)
        dirnames[:] = sorted(kept)
        for name in sorted(filenames):
            if name.startswith(TMP_PREFIX) or (at_top and top_skip(name)):
                continue
            path = here / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # removed since the folder was listed
            if stat.S_ISREG(st.st_mode):
                yield path, st
            else:
                skipped.append(str(path))


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _arcname(top: str, root: Path, path: Path) -> str:
    return "/".join((top, *path.relative_to(root).parts))


def _manifest_paths(models_root: Path, sources: list[_Source]) -> dict[str, _Source]:
    """The store's manifests among the sources, by model name."""
    found = {}
    for source in sources:
        parts = source.arcname.split("/")
        if len(parts) == 4 and parts[:2] == ["models", "manifests"] and not parts[3].startswith(TMP_PREFIX):
            found[f"{parts[2]}:{parts[3]}"] = source
    return found


def _layers(path: Path) -> list[dict[str, Any]]:
    """A manifest's config and layers; none when it cannot be read (then it is archived as it is, blobs aside)."""
    try:
        raw = json.loads(path.read_bytes())
        return [layer for layer in [raw["config"], *raw["layers"]] if isinstance(layer, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _is_weight(layer: dict[str, Any]) -> bool:
    return isinstance(layer.get("mediaType"), str) and layer_kind(layer) in WEIGHT_KINDS


def _blob_arcname(digest: Any) -> str | None:
    if not isinstance(digest, str):
        return None
    match = re.fullmatch(r"sha256[:-]([0-9a-fA-F]{64})", digest)
    return f"models/blobs/sha256-{match.group(1).lower()}" if match else None


@dataclass
class _Plan:
    spooled: list[_Source]  # copied into the spool first (all but weights)
    streamed: list[_Source]  # blobs, archived straight from the store
    models: list[str]
    without_weights: list[str]
    skipped: list[str]


def _plan(settings: Settings, folder: Path, with_models: bool) -> _Plan:
    home, models_root = settings.home, settings.models
    skipped: list[str] = []
    backup_folders = {_identity(settings.backups), _identity(folder)}
    home_files: list[tuple[Path, os.stat_result]] = []
    if home.is_dir():
        home_files = list(_walk(home, backup_folders | {_identity(models_root)}, skipped,
                                lambda name: name.startswith(RESTORE_PREFIX)))
    databases = {path for path, _ in home_files if _is_sqlite(path)}
    sidecars = {Path(f"{db}{suffix}") for db in databases for suffix in SQLITE_SIDECARS}
    spooled = [_Source(_arcname("home", home, path), path, st.st_size, st.st_mode, st.st_mtime, path in databases)
               for path, st in home_files if path not in sidecars]

    store_files: list[_Source] = []
    if models_root.is_dir():
        for path, st in _walk(models_root, backup_folders | {_identity(home)}, skipped,
                              lambda name: name == ".lock" or name.startswith(RESTORE_PREFIX)):
            store_files.append(_Source(_arcname("models", models_root, path), path, st.st_size, st.st_mode,
                                       st.st_mtime))
    blobs = {s.arcname: s for s in store_files if s.arcname.startswith("models/blobs/")
             and _BLOB_NAME.fullmatch(s.path.name)}
    spooled += [s for s in store_files if s.arcname not in blobs]

    manifests = _manifest_paths(models_root, store_files)
    weights_of: dict[str, set[str]] = {}
    small: set[str] = set()
    for name, source in manifests.items():
        for layer in _layers(source.path):
            arcname = _blob_arcname(layer.get("digest"))
            if arcname and _is_weight(layer):
                weights_of.setdefault(name, set()).add(arcname)
            elif arcname:
                small.add(arcname)
    if with_models:
        streamed = list(blobs.values())
    else:
        # Modelfile parts are tiny: spooled like any file; unused blobs (a killed upload) stay out with the weights.
        spooled += [blobs[arcname] for arcname in sorted(small) if arcname in blobs]
        streamed = []
    archived = {s.arcname for s in streamed}
    without_weights = sorted(name for name in manifests if not weights_of.get(name, set()) <= archived)
    for source in streamed:
        source.sha256 = _BLOB_NAME.fullmatch(source.path.name).group(1)
    return _Plan(spooled, streamed, sorted(manifests), without_weights, skipped)


# -- writing an archive ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _store_lock(models_root: Path, exclusive: bool) -> Iterator[None]:
    """The lock the store's writers take (ModelStore._writing): shared, it lets no model be created or removed."""
    if not models_root.is_dir():
        yield
        return
    with open(models_root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


@contextlib.contextmanager
def _sqlite_copy(source: _Source, folder: Path, progress: _Progress) -> Iterator[Path | None]:
    """An online-backup copy of a database in a temp file, removed after the block; None if the database is gone."""
    f, tmp = open_temp(folder)  # held open while the copy is read: its lock keeps other backups' cleanups off it
    try:
        with f:
            try:
                src = sqlite3.connect(f"file:{urllib.parse.quote(str(source.path))}?mode=rw", uri=True, timeout=30)
            except sqlite3.OperationalError:
                if source.path.exists():
                    raise
                src = None
            if src is None:
                yield None
                return
            try:
                with contextlib.closing(sqlite3.connect(tmp)) as dst:
                    # One step (pages=-1): a single read transaction, so another writer cannot make it start over.
                    src.backup(dst, progress=lambda *_: progress.flush())
            except sqlite3.Error as e:
                raise EmberError(f"cannot back up the database {source.path}: {e}; no backup was written") from None
            finally:
                src.close()
            yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _spool(plan: _Plan, spool: IO[bytes], folder: Path, report: Report) -> list[_Source]:
    """Copy every spooled source into the spool, hashing it; the sources that were still there."""
    progress = _Progress(report, "reading files", sum(s.size for s in plan.spooled), "reading")
    kept = []
    for source in plan.spooled:
        with _sqlite_copy(source, folder, progress) if source.sqlite else contextlib.nullcontext(source.path) as path:
            if path is None:
                continue
            try:
                with open(path, "rb") as f:
                    source.offset, sha = spool.tell(), hashlib.sha256()
                    while chunk := f.read(CHUNK):
                        sha.update(chunk)
                        spool.write(chunk)
                        progress.add(len(chunk))
            except FileNotFoundError:
                continue  # removed since it was listed: it is no longer part of the state being saved
            except OSError as e:
                raise EmberError(f"cannot read {source.path}: {e.strerror}; no backup was written") from None
        source.size, source.sha256 = spool.tell() - source.offset, sha.hexdigest()
        kept.append(source)
    progress.flush()
    spool.flush()
    return kept


def _tarinfo(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, stat.S_IMODE(mode), mtime  # a float goes in a PAX header
    info.type = tarfile.REGTYPE
    return info


def _archive_name(folder: Path, created: datetime, with_models: bool, automatic: bool) -> Path:
    suffix = ("-models" if with_models else "") + (AUTO_SUFFIX if automatic else "")
    stamp = created.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = folder / f"{PREFIX}{stamp}{f'-{n}' if n > 1 else ''}{suffix}.tar"
        if not path.exists():
            return path
    raise EmberError(f"too many backups named {PREFIX}{stamp}* in {folder}")


def backup(settings: Settings, *, to: Path | None = None, with_models: bool = False, automatic: bool = False,
           report: Report = silent, created: datetime | None = None) -> BackupResult:
    """Write one archive into `to` (default: the backups folder). A cancel (Cancelled from `report`) or an error
    leaves no archive and no temp file."""
    if not settings.home.is_dir() and not settings.models.is_dir():
        raise BadRequest(f"nothing to back up: {settings.home} does not exist")
    folder = Path(to) if to else settings.backups
    if to and _inside_data(settings, folder):
        # A restore replaces what is there: backups kept inside the data would be lost by it.
        raise BadRequest(f"{folder} is inside EMBER_HOME or EMBER_MODELS; back up into a folder outside them, or "
                         f"leave out --to to use {settings.backups}")
    try:
        make_dirs(folder)
        remove_partials(folder)  # what killed backups left; a running backup's temp files are locked and kept
    except OSError as e:
        raise BadRequest(f"cannot write backups into {folder}: {e.strerror}") from None
    created = created or datetime.now().astimezone()
    with _store_lock(settings.models, exclusive=False):
        plan = _plan(settings, folder, with_models)
        try:
            return _write(folder, plan, with_models, automatic, created, report)
        except OSError as e:
            raise EmberError(f"cannot write the backup into {folder}: {e.strerror}") from None


def _inside_data(settings: Settings, path: Path) -> bool:
    """Whether `path` is inside EMBER_HOME or EMBER_MODELS, but not in the backups folder."""
    path = path.resolve()
    return not path.is_relative_to(settings.backups.resolve()) and (
        path.is_relative_to(settings.home.resolve()) or path.is_relative_to(settings.models.resolve()))


def _write(folder: Path, plan: _Plan, with_models: bool, automatic: bool, created: datetime,
           report: Report) -> BackupResult:
    spool, spool_path = open_temp(folder)
    try:
        archive, archive_tmp = open_temp(folder)
        os.fchmod(archive.fileno(), 0o600)  # it holds the API keys
        try:
            with spool, archive, open(spool_path, "rb") as spooled_bytes:
                spooled = _spool(plan, spool, folder, report)
                manifest = {
                    "format": FORMAT, "version": FORMAT_VERSION, "ember_version": __version__,
                    "created": created.isoformat(), "with_models": with_models, "automatic": automatic,
                    "models": plan.models, "without_weights": plan.without_weights,
                    "files": [{"path": s.arcname, "size": s.size, "sha256": s.sha256}
                              for s in [*spooled, *plan.streamed]],
                }
                data = json.dumps(manifest, indent=1).encode("utf-8")
                progress = _Progress(report, "writing archive", sum(s.size for s in [*spooled, *plan.streamed]),
                                     "archive")
                with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                    tar.addfile(_tarinfo(MANIFEST_NAME, len(data), 0o644, created.timestamp()), io.BytesIO(data))
                    for source in spooled:
                        spooled_bytes.seek(source.offset)
                        tar.addfile(_tarinfo(source.arcname, source.size, source.mode, source.mtime),
                                    _Reading(spooled_bytes, progress))
                    for source in plan.streamed:
                        _add_blob(tar, source, progress)
                progress.flush()
                path = _archive_name(folder, created, with_models, automatic)
                commit(archive, archive_tmp, path)
        except BaseException:
            archive_tmp.unlink(missing_ok=True)
            raise
    finally:
        spool.close()
        spool_path.unlink(missing_ok=True)
    return BackupResult(path, path.stat().st_size, len(manifest["files"]), with_models, plan.models,
                        plan.without_weights, plan.skipped)


def _add_blob(tar: tarfile.TarFile, source: _Source, progress: _Progress) -> None:
    try:
        with open(source.path, "rb") as f:
            reading = _Reading(f, progress)
            tar.addfile(_tarinfo(source.arcname, source.size, source.mode, source.mtime), reading)
    except OSError as e:
        raise EmberError(f"cannot read {source.path}: {e}; no backup was written") from None
    if reading.sha.hexdigest() != source.sha256:
        raise EmberError(f"{source.path} is damaged (its content does not match its name); remove the model that "
                         "uses it (ember rm), pull or create it again, then back up; no backup was written")


# -- reading archives --------------------------------------------------------------------------------------------------


_DAMAGED = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


@contextlib.contextmanager
def _reading(archive: Path, writing: bool = False, after: str = "; nothing was restored",
             ) -> Iterator[tarfile.TarFile]:
    """The archive open for reading; whatever is wrong with its bytes becomes a BadRequest (and, unless the block
    also writes, any OSError: bz2 reports damage as one)."""
    if not archive.is_file():
        raise BadRequest(f"no backup archive at {archive}")
    damaged = _DAMAGED if writing else (*_DAMAGED, OSError)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed below; opened apart for its own message)
    except damaged:
        raise BadRequest(f"{archive} is not an ember backup: it cannot be read as a tar archive{after}") from None
    try:
        with tar:
            yield tar
    except damaged as e:
        raise BadRequest(f"{archive} is damaged or not an ember backup ({e}){after}") from None


def _check_manifest(raw: bytes, archive: Path, after: str) -> dict[str, Any]:
    def bad(why: str) -> BadRequest:
        return BadRequest(f"{archive}: {MANIFEST_NAME} {why}{after}")

    try:
        manifest = json.loads(raw)
    except ValueError:
        raise bad("is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise bad(f"is not an ember backup's (format is not {FORMAT!r})")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > FORMAT_VERSION:
        raise bad(f"has version {manifest.get('version')!r}; this ember ({__version__}) reads version "
                  f"{FORMAT_VERSION}: restore it with a newer ember")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise bad("has no list of files")
    seen = set()
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("size"), int) and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            raise bad(f"has a malformed entry: {str(entry)[:200]}")
        if entry["path"] in seen:
            raise bad(f"lists {entry['path']!r} twice")
        seen.add(entry["path"])
    return manifest


def _read_manifest(tar: tarfile.TarFile, archive: Path, after: str = "; nothing was restored") -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME:
        raise BadRequest(f"{archive} has no {MANIFEST_NAME} as its first member: it is not an ember backup, or it "
                         f"is damaged{after}")
    if not first.isreg() or first.size > MAX_MANIFEST:
        raise BadRequest(f"{archive}: its {MANIFEST_NAME} is not a regular file of sensible size{after}")
    return _check_manifest(tar.extractfile(first).read(), archive, after)


def read_info(archive: Path) -> BackupInfo:
    """What an archive's MANIFEST says (only the first member is read); BadRequest when it cannot be read."""
    archive = Path(archive)
    with _reading(archive, after="") as tar:
        manifest = _read_manifest(tar, archive, after="")
    try:
        created = datetime.fromisoformat(manifest.get("created", ""))
    except (TypeError, ValueError):
        created = None
    return BackupInfo(archive, archive.stat().st_size, created, bool(manifest.get("with_models")),
                      bool(manifest.get("automatic")), [m for m in manifest.get("models", []) if isinstance(m, str)])


def list_backups(settings: Settings, folder: Path | None = None) -> list[BackupInfo]:
    """The archives in the backups folder (or `folder`), newest first; unreadable ones carry their `error`."""
    folder = Path(folder) if folder else settings.backups
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if not _ARCHIVE_NAME.fullmatch(path.name) or not path.is_file():
            continue
        try:
            found.append(read_info(path))
        except (BadRequest, OSError) as e:
            found.append(BackupInfo(path, path.stat().st_size, None, False, path.stem.endswith(AUTO_SUFFIX), [],
                                    getattr(e, "message", str(e))))
    return sorted(found, key=_newest_first)


def _newest_first(info: BackupInfo) -> tuple[float, str]:
    moment = info.created.timestamp() if info.created else info.path.stat().st_mtime
    return -moment, info.path.name


def prune_backups(settings: Settings, keep: int) -> list[Path]:
    """Delete all but the newest `keep` automatic backups (at least one is kept); backups made by hand stay."""
    automatic = [info for info in list_backups(settings) if info.path.name.endswith(f"{AUTO_SUFFIX}.tar")]
    removed = []
    for info in automatic[max(keep, 1):]:
        info.path.unlink(missing_ok=True)
        removed.append(info.path)
    if removed:
        fsync_dir(settings.backups)
    return removed


# -- restoring ---------------------------------------------------------------------------------------------------------


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    return "is not a regular file or a folder"


def _path_problem(name: str, is_dir: bool, reserved_home: set[str]) -> str | None:
    """Why a member may not be extracted, or None. Only `home/...` and `models/...`, with plain relative parts."""
    if name.startswith("/"):
        return "has an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "has a '..' path part (it would be written outside the restore)"
    if "\\" in name or any(part in ("", ".") for part in parts):
        return "has a malformed path"
    if parts[0] not in ("home", "models") or (len(parts) == 1 and not is_dir):
        return "is outside home/ and models/"
    if len(parts) > 1 and parts[1].startswith(RESTORE_PREFIX):
        return "has a name a restore uses for itself"
    if parts[0] == "home" and len(parts) > 1 and parts[1] in reserved_home:
        return f"would be written into home's {parts[1]}/ folder, which a restore leaves as it is"
    if parts[0] == "models" and parts[1:] == [".lock"]:
        return "would replace the store's lock file"
    return None


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, out: IO[bytes] | None,
                 progress: _Progress) -> tuple[int, str]:
    """Read a member through (into `out` when given); its size and sha256."""
    src = tar.extractfile(member)
    sha, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        sha.update(chunk)
        size += len(chunk)
        if out:
            out.write(chunk)
        progress.add(len(chunk))
    return size, sha.hexdigest()


def _verify(archive: Path, reserved_home: set[str], report: Report) -> dict[str, Any]:
    """Read the whole archive and check every member against the MANIFEST; BadRequest on the first problem."""
    def refuse(name: str, why: str) -> BadRequest:
        return BadRequest(f"{archive.name}: member {name!r} {why}; the archive was refused and nothing was restored")

    with _reading(archive) as tar:
        manifest = _read_manifest(tar, archive)
        expected = {entry["path"]: entry for entry in manifest["files"]}
        for name in expected:
            if problem := _path_problem(name, False, reserved_home):
                raise refuse(name, f"(in {MANIFEST_NAME}) {problem}")
        progress = _Progress(report, "verifying archive", sum(e["size"] for e in expected.values()), "verifying")
        files: set[str] = set()
        folders: set[str] = set()
        while (member := tar.next()) is not None:
            name = member.name
            if not (member.isreg() or member.isdir()):
                raise refuse(name, _kind(member))
            if problem := _path_problem(name, member.isdir(), reserved_home):
                raise refuse(name, problem)
            if name in files or name in folders:
                raise refuse(name, "appears twice")
            if member.isdir():
                folders.add(name)
                continue
            entry = expected.get(name)
            if entry is None:
                raise refuse(name, f"is not listed in {MANIFEST_NAME}")
            size, sha = _copy_member(tar, member, None, progress)
            if size != entry["size"] or member.size != entry["size"]:
                raise refuse(name, f"has {size} bytes where {MANIFEST_NAME} says {entry['size']} (damaged)")
            if sha != entry["sha256"]:
                raise refuse(name, f"does not match its sha256 in {MANIFEST_NAME} (damaged or altered)")
            files.add(name)
        if missing := sorted(set(expected) - files):
            raise refuse(missing[0], f"is listed in {MANIFEST_NAME} but not in the archive (truncated?)")
        for name in sorted(files | folders):
            parents = ["/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)]
            if clash := next((p for p in parents if p in files), None):
                raise refuse(name, f"lies inside {clash!r}, which is a file")
        progress.flush()
    return manifest


def _extract(archive: Path, manifest: dict[str, Any], stages: dict[str, Path], reserved_home: set[str],
             report: Report) -> None:
    """Write every member under its stage (`home` or `models`), checking each one again as it is written: the
    archive may have changed since it was verified."""
    expected = {entry["path"]: entry for entry in manifest["files"]}
    changed = BadRequest(f"{archive} changed while it was being restored; nothing was restored")
    progress = _Progress(report, "restoring files", sum(e["size"] for e in expected.values()), "restoring")
    written = set()
    with _reading(archive, writing=True) as tar:
        tar.next()  # MANIFEST.json
        while (member := tar.next()) is not None:
            if not (member.isreg() or member.isdir()) or _path_problem(member.name, member.isdir(), reserved_home):
                raise changed
            top, _, rest = member.name.partition("/")
            dest = stages[top].joinpath(*rest.split("/")) if rest else stages[top]
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            entry = expected.get(member.name)
            if entry is None:
                raise changed
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "xb") as out:
                size, sha = _copy_member(tar, member, out, progress)
                out.flush()
                os.fsync(out.fileno())
            if (size, sha) != (entry["size"], entry["sha256"]):
                raise changed
            written.add(member.name)
            os.chmod(dest, stat.S_IMODE(member.mode) | 0o600)  # always readable and writable by its owner
            os.utime(dest, (member.mtime, member.mtime))  # a manifest's date is its model's "modified" date
    if written != set(expected):
        raise changed
    progress.flush()
    for stage in stages.values():
        for dirpath, _, _ in os.walk(stage, topdown=False):
            fsync_dir(Path(dirpath))


def _check_layout(settings: Settings) -> set[str]:
    """The names under EMBER_HOME that a restore of `home/` leaves alone; refuses layouts it cannot swap safely."""
    home, models = settings.home.absolute(), settings.models.absolute()
    if models == home or home.is_relative_to(models):
        raise BadRequest(f"EMBER_HOME ({home}) is inside EMBER_MODELS ({models}): restore cannot tell them apart")
    reserved = {settings.backups.name}
    if models.is_relative_to(home):
        if models.parent != home:
            raise BadRequest(f"EMBER_MODELS ({models}) is deep inside EMBER_HOME ({home}); restore supports "
                             f"{home / 'models'} or a folder outside EMBER_HOME")
        reserved.add(models.name)
    return reserved


def _swap(target: Path, stage: Path, keep: set[str]) -> None:
    """Move target's entries (but `keep` and restore folders) into stage/old, then stage/new's into target."""
    old, new = stage / "old", stage / "new"
    old.mkdir()
    fsync_dir(stage)
    for name in sorted(os.listdir(target)):
        if name not in keep and not name.startswith(RESTORE_PREFIX):
            os.rename(target / name, old / name)
    fsync_dir(old)
    fsync_dir(target)
    for name in sorted(os.listdir(new)):
        os.rename(new / name, target / name)
    fsync_dir(target)


def _merge_blobs(new_blobs: Path, blobs: Path) -> None:
    """Add the archive's small blobs to the store's own (content-addressed: one already there is the same bytes)."""
    if not new_blobs.is_dir():
        return
    make_dirs(blobs)
    for path in new_blobs.iterdir():
        if not (blobs / path.name).exists():
            os.rename(path, blobs / path.name)
    fsync_dir(blobs)
    shutil.rmtree(new_blobs)


def _leftovers(root: Path) -> list[Path]:
    """Restore folders found under `root`: those of an interrupted extraction are deleted (they hold only restored
    copies); those of an interrupted swap (with `old/`) are kept and returned, since they hold the earlier data."""
    kept = []
    for path in sorted(root.glob(f"{RESTORE_PREFIX}*")):
        if not path.is_dir() or path.is_symlink():
            continue
        if (path / "old").exists():
            kept.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return kept


def _missing_weights(models_root: Path, names: list[str]) -> list[str]:
    missing = []
    for name in names:
        model, _, tag = name.partition(":")
        layers = _layers(models_root / "manifests" / model / tag)
        arcnames = [_blob_arcname(layer.get("digest")) for layer in layers if isinstance(layer, dict)
                    and isinstance(layer.get("mediaType"), str) and layer_kind(layer) in WEIGHT_KINDS]
        if not arcnames or any(a is None or not (models_root / a.removeprefix("models/")).is_file()
                               for a in arcnames):
            missing.append(name)
    return missing


def restore(settings: Settings, archive: Path, report: Report = silent) -> RestoreResult:
    """Verify the whole archive, then replace EMBER_HOME's content (but backups/) and the model store's with it.

    A backup without weights keeps the store's current blobs. Refused archives change nothing on disk. The caller
    makes sure no server is using these files (the CLI refuses while one answers on the settings' address).
    """
    archive = Path(archive).absolute()
    reserved_home = _check_layout(settings)
    if _inside_data(settings, archive):
        raise BadRequest(f"{archive} is inside the data a restore replaces; move it out of {settings.home} (or into "
                         f"{settings.backups}) first")
    manifest = _verify(archive, reserved_home, report)
    home, models_root = settings.home, settings.models
    make_dirs(home)
    make_dirs(models_root)
    with _locked_folder(home):
        leftovers = _leftovers(home) + _leftovers(models_root)
        stages: dict[str, Path] = {}
        try:
            for top, root in (("home", home), ("models", models_root)):
                stages[top] = Path(tempfile.mkdtemp(prefix=RESTORE_PREFIX, dir=root))
                (stages[top] / "new").mkdir()
            _check_space(manifest, stages)
            _extract(archive, manifest, {top: stage / "new" for top, stage in stages.items()}, reserved_home,
                     report)
            report("replacing the current files")  # the last point where a cancel stops it
        except BaseException as e:
            for stage in stages.values():
                shutil.rmtree(stage, ignore_errors=True)
            if isinstance(e, OSError):
                raise EmberError(f"cannot write the restored files ({e.strerror}: {e.filename}); nothing was "
                                 "restored") from None
            raise
        with _store_lock(models_root, exclusive=True):
            keep_models = {".lock"}
            if not manifest.get("with_models"):
                _merge_blobs(stages["models"] / "new" / "blobs", models_root / "blobs")
                keep_models.add("blobs")
            _swap(home, stages["home"], reserved_home)
            _swap(models_root, stages["models"], keep_models)
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)  # the earlier data: only now that everything is in place
    names = [entry["path"].split("/") for entry in manifest["files"]]
    models = sorted(f"{p[2]}:{p[3]}" for p in names if len(p) == 4 and p[:2] == ["models", "manifests"])
    files = sum(1 for p in names if p[0] == "home")
    return RestoreResult(models, _missing_weights(models_root, models), files, leftovers)


@contextlib.contextmanager
def _locked_folder(folder: Path) -> Iterator[None]:
    """One restore at a time: a lock on the folder itself, so that no lock file is left behind."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmberError(f"another restore into {folder} is running; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _check_space(manifest: dict[str, Any], stages: dict[str, Path]) -> None:
    need: dict[int, int] = {}
    for entry in manifest["files"]:
        device = stages[entry["path"].partition("/")[0]].stat().st_dev
        need[device] = need.get(device, 0) + entry["size"]
    for stage in stages.values():
        device = stage.stat().st_dev
        free = shutil.disk_usage(stage).free
        if need.get(device, 0) > free:
            raise EmberError(f"not enough free space to restore: {need[device]} bytes needed beside {stage.parent}, "
                             f"{free} free; nothing was restored")
        need.pop(device, None)


# -- automatic backups -------------------------------------------------------------------------------------------------


class BackupSchedule:
    """Automatic backups (without weights) every `settings.backup_every` seconds while a server runs, keeping the
    newest `settings.backup_keep`. The first one is due one interval after the newest automatic backup on disk, so a
    server restarted daily still makes its daily backup. Failures are logged and retried one interval later."""

    def __init__(self, settings: Settings, *, now: Callable[[], float] = time.time):
        self.settings, self.now = settings, now
        self.written = 0  # backups this schedule has written
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_try = 0.0

    def start(self) -> None:
        if self.settings.backup_every <= 0 or self._thread:
            return
        self._thread = threading.Thread(target=self._loop, name="ember-backup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop waiting, and cancel a backup being written (it leaves no archive)."""
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout)

    def _report(self, status: str, **_: Any) -> None:
        if self._stopping.is_set():
            raise Cancelled("the server is stopping")

    def _newest(self) -> float:
        for info in list_backups(self.settings):
            if info.automatic and info.created and not info.error:
                return info.created.timestamp()
        return 0.0

    def _loop(self) -> None:
        every = self.settings.backup_every
        while not self._stopping.is_set():
            try:
                due = max(self._newest(), self._last_try) + every
            except Exception:
                log.exception("cannot list the backups in %s", self.settings.backups)
                due = self.now() + every
            if self._stopping.wait(max(0.0, due - self.now())):
                return
            self.run_once()

    def run_once(self) -> Path | None:
        """Write one backup and prune; the archive's path, or None when none was written."""
        self._last_try = self.now()
        try:
            make_dirs(self.settings.backups)
            with open(self.settings.backups / ".auto.lock", "a") as lock:
                try:  # another server on the same home may be writing one right now
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
                slack = min(1.0, self.settings.backup_every / 2)  # wake-ups come a little early or late
                if self._newest() + self.settings.backup_every > self._last_try + slack:
                    return None  # another server made one since this one decided
                result = backup(self.settings, automatic=True, report=self._report,
                                created=datetime.fromtimestamp(self._last_try).astimezone())
                prune_backups(self.settings, self.settings.backup_keep)
        except Cancelled:
            log.info("automatic backup cancelled: the server is stopping")
            return None
        except Exception:
            log.exception("automatic backup failed; next try in %.0f s", self.settings.backup_every)
            return None
        self.written += 1
        log.info("automatic backup written: %s (%d files)", result.path, result.files)
        return result.path
