"""Atomic file writes: a temp file beside the target, fsync, rename, fsync the folder.

A process killed at any instant leaves either the old file or the new one, plus perhaps a `.tmp-*` leftover that
`remove_partials` clears on the next start.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file; it replaces `path` only if the block finishes without an exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_partials(root: Path) -> int:
    """Delete temp files a killed process left under `root`; returns how many."""
    removed = 0
    if root.exists():
        for leftover in root.rglob(f"{TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed
