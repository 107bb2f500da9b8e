"""Atomic file writes: a temp file beside the target, fsync, rename, fsync the folder.

A process killed at any instant leaves either the old file or the new one, plus perhaps a `.tmp-*` leftover that
`remove_partials` clears on the next start. Each temp file (or temp folder, for work that makes several files) is
flock-ed while it is written, so that a cleanup run by another process (a second server, the CLI) never removes a
file that is still being written; the kernel drops the lock when the writer dies.
"""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p that also makes the new folders' names durable."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def open_temp(folder: Path) -> tuple[BinaryIO, Path]:
    """A new locked `.tmp-*` file in `folder`. Keep it open until it is renamed: closing it drops the lock."""
    make_dirs(folder)
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide models from other users, unlike any other installed file
    return os.fdopen(fd, "wb"), Path(name)


def commit(f: BinaryIO, tmp: Path, path: Path) -> None:
    """Make a temp file's bytes durable and move it over `path` (the file must still be open)."""
    f.flush()
    os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file; it replaces `path` only if the block finishes without an exception."""
    path = Path(path)
    f, tmp = open_temp(path.parent)
    try:
        with f:
            yield f
            commit(f, tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def temp_dir(folder: Path) -> Iterator[Path]:
    """A new locked `.tmp-*` folder in `folder` for work that writes several files; it goes, with all it holds, when
    the block ends. The lock is on the folder itself, so cleanups leave it and everything in it alone meanwhile."""
    make_dirs(folder)
    path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def stray_partials(root: Path) -> Iterator[Path]:
    """The `.tmp-*` files and folders under `root` that no live writer holds. Each is locked by us while the caller
    looks at it (so a writer cannot take it up meanwhile); a folder's contents are its own, never listed apart."""
    for folder, subfolders, files in os.walk(root):
        for name in [n for n in subfolders if n.startswith(TMP_PREFIX)]:
            subfolders.remove(name)
            yield from _if_unheld(Path(folder) / name, os.O_RDONLY | os.O_DIRECTORY)
        for name in files:
            if name.startswith(TMP_PREFIX):
                yield from _if_unheld(Path(folder) / name, os.O_RDONLY)


def _if_unheld(path: Path, flags: int) -> Iterator[Path]:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError:  # gone meanwhile, or not what its name says
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a live writer holds it
    except BlockingIOError:
        os.close(fd)
        return
    try:
        yield path
    finally:
        os.close(fd)


def remove_partials(root: Path) -> int:
    """Delete the temp files and folders that killed processes left under `root`; returns how many."""
    removed = 0
    for leftover in stray_partials(root):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed += 1
    return removed
