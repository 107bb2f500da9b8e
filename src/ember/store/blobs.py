"""Content-addressed files `sha256-<hex>`, written atomically and checked against their digest."""

import hashlib
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ember.core.errors import BadRequest, NotFound
from ember.fsutil import atomic_file, commit, make_dirs, open_temp

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
CHUNK = 4 << 20  # also how often import_file reports progress


def normalize_digest(raw: str) -> str:
    """`sha256:<hex>` or `sha256-<hex>` (any case) -> `sha256:<lowercase hex>`."""
    match = _DIGEST.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if not match:
        raise BadRequest(f"invalid digest {raw!r}: expected 'sha256:' followed by 64 hexadecimal digits")
    return f"sha256:{match.group(1).lower()}"


class DigestMismatch(BadRequest):
    pass


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        make_dirs(self.root)

    def path(self, digest: str) -> Path:
        return self.root / normalize_digest(digest).replace(":", "-")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def require(self, digest: str) -> Path:
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"blob {normalize_digest(digest)} not found; upload it first (POST /api/blobs/{digest})")
        return path

    def size(self, digest: str) -> int:
        return self.require(digest).stat().st_size

    @contextmanager
    def writer(self, expected: str | None = None) -> Iterator["BlobWriter"]:
        """A blob written in pieces; stored when the block ends, under its digest (which must equal `expected` when
        given). An error or a cancel inside the block keeps nothing."""
        writer = BlobWriter(self, normalize_digest(expected) if expected else None)
        try:
            yield writer
            writer.finish()
        finally:
            writer.close()

    def write_chunks(self, chunks: Iterable[bytes], expected: str | None = None,
                     progress: Callable[[int], None] | None = None) -> str:
        """Store bytes under their digest; with `expected`, refuse (and keep nothing) if they do not match."""
        if expected and self.has(expected):
            return normalize_digest(expected)
        with self.writer(expected) as w:
            for chunk in chunks:
                w.write(chunk)
                if progress:
                    progress(w.size)
        return w.digest

    def file_digest(self, source: Path) -> str:
        try:
            with open(source, "rb") as f:
                return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            raise BadRequest(f"cannot read {source}: {e.strerror}") from None

    def import_file(self, source: Path, progress: Callable[[int, int], None] | None = None,
                    digest: str | None = None) -> str:
        """Copy a file in, hashing it on the way; progress(completed_bytes, total_bytes) every few MB.

        The file is hashed first (unless its `digest` is given): creating again from the same multi-GB GGUF then
        writes nothing.
        """
        digest = normalize_digest(digest) if digest else self.file_digest(source)
        try:
            total = Path(source).stat().st_size
            if self.has(digest):
                if progress:
                    progress(total, total)
                return digest
            # Checked against the first hash, in case the file changes in between.
            return self.write_chunks(file_chunks(source), digest,
                                     progress=(lambda done: progress(done, total)) if progress else None)
        except DigestMismatch:
            raise BadRequest(f"{source} changed while it was being copied; try again") from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            raise BadRequest(f"cannot read {source}: {e.strerror}") from None

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def all_digests(self) -> set[str]:
        return {f"sha256:{p.name[7:]}" for p in self.root.iterdir() if _DIGEST.fullmatch(p.name)}

    def copy_out(self, digest: str, dest: Path) -> None:
        with atomic_file(dest) as f, open(self.require(digest), "rb") as src:
            shutil.copyfileobj(src, f, CHUNK)


class BlobWriter:
    """Bytes hashed as they are written to a locked temp file (so another process's cleanup leaves it alone); the
    final name is known only once every byte is hashed."""

    def __init__(self, blobs: BlobStore, expected: str | None):
        self.blobs, self.expected = blobs, expected
        self.f, self.tmp = open_temp(blobs.root)
        self.hasher = hashlib.sha256()
        self.size = 0
        self.digest = ""

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.f.write(chunk)
        self.size += len(chunk)

    def finish(self) -> None:
        self.digest = f"sha256:{self.hasher.hexdigest()}"
        if self.expected and self.digest != self.expected:
            raise DigestMismatch(f"digest mismatch: the data's digest is {self.digest}, not {self.expected}; "
                                 "the upload was damaged or the digest is wrong")
        if not self.blobs.has(self.digest):  # an existing blob has the same bytes; no need to replace it
            commit(self.f, self.tmp, self.blobs.path(self.digest))

    def close(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)
