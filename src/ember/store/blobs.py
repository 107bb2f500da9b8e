"""Content-addressed files: `sha256-<hex>`, written atomically and checked against their digest."""

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from ember.core.errors import BadRequest, NotFound
from ember.fsutil import TMP_PREFIX, atomic_file, fsync_dir, remove_partials

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
CHUNK = 4 << 20


def normalize_digest(raw: str) -> str:
    match = _DIGEST.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if not match:
        raise BadRequest(f"invalid digest {raw!r}: expected 'sha256:' followed by 64 hexadecimal digits")
    return f"sha256:{match.group(1).lower()}"


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / normalize_digest(digest).replace(":", "-")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def require(self, digest: str) -> Path:
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"blob {normalize_digest(digest)} not found; upload it first (POST /api/blobs/{digest})")
        return path

    def write_chunks(self, chunks: Iterable[bytes], expected: str | None = None,
                     progress: Callable[[int], None] | None = None) -> str:
        """Store bytes under their digest; with `expected`, refuse (and keep nothing) if they do not match."""
        if expected:
            expected = normalize_digest(expected)
            if self.has(expected):
                return expected
        hasher, done = hashlib.sha256(), 0
        # The name is known only once the bytes are hashed, so the temp file is renamed by hand here.
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done)
                f.flush()
                os.fsync(f.fileno())
            digest = f"sha256:{hasher.hexdigest()}"
            if expected and digest != expected:
                raise BadRequest(f"digest mismatch: the data's digest is {digest}, not {expected}")
            os.replace(tmp, self.path(digest))
            fsync_dir(self.root)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return digest

    def write_bytes(self, data: bytes) -> str:
        return self.write_chunks([data])

    def import_file(self, source: Path, progress: Callable[[int, int], None] | None = None) -> str:
        total = source.stat().st_size

        def chunks():
            with open(source, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return self.write_chunks(chunks(), progress=(lambda done: progress(done, total)) if progress else None)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def all_digests(self) -> set[str]:
        return {f"sha256:{p.name[7:]}" for p in self.root.glob("sha256-*")}

    def cleanup_partials(self) -> int:
        return remove_partials(self.root)

    def copy_out(self, digest: str, dest: Path) -> None:
        with atomic_file(dest) as f, open(self.require(digest), "rb") as src:
            shutil.copyfileobj(src, f, CHUNK)
