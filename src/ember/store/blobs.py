"""Content-addressed files `sha256-<hex>`, written atomically and checked against their digest."""

import hashlib
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ember.core.errors import BadRequest, NotFound
from ember.fsutil import atomic_file, commit, make_dirs, open_temp, remove_partials

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

    def write_chunks(self, chunks: Iterable[bytes], expected: str | None = None,
                     progress: Callable[[int], None] | None = None) -> str:
        """Store bytes under their digest; with `expected`, refuse (and keep nothing) if they do not match."""
        if expected:
            expected = normalize_digest(expected)
            if self.has(expected):
                return expected
        hasher, done = hashlib.sha256(), 0
        # The final name is known only once every byte is hashed, hence the temp file by hand.
        f, tmp = open_temp(self.root)
        try:
            with f:
                for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done)
                digest = f"sha256:{hasher.hexdigest()}"
                if expected and digest != expected:
                    raise DigestMismatch(f"digest mismatch: the data's digest is {digest}, not {expected}; "
                                     "the upload was damaged or the digest is wrong")
                if not self.has(digest):  # an existing blob has the same bytes; no need to replace it
                    commit(f, tmp, self.path(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def write_bytes(self, data: bytes) -> str:
        return self.write_chunks([data])

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

    def cleanup_partials(self) -> int:
        return remove_partials(self.root)

    def copy_out(self, digest: str, dest: Path) -> None:
        with atomic_file(dest) as f, open(self.require(digest), "rb") as src:
            shutil.copyfileobj(src, f, CHUNK)
