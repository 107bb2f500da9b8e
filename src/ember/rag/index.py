"""A collection's index in one SQLite file: chunks, their vectors (sqlite-vec) and their words (FTS5).

One file per collection, so a collection is copied, backed up or deleted as a file. The stdlib `sqlite3` here cannot
load extensions, so the file is opened with `apsw` (its own SQLite, with FTS5 built in). Every change to one source
file (its old chunks out, its new chunks, vectors and words in, its hash recorded) is one transaction in WAL mode: a
process killed at any instant leaves the file either fully in the index or not at all, and an unchanged file is known
by its hash on the next `add` — which is how an interrupted ingest resumes.
"""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest

SCHEMA = 1
# A question's words that are in more than this share of the chunks are left out of its BM25 search when it has
# rarer ones: their IDF is near zero, so they barely change the order, but scoring every chunk they match is most of
# the search's time ("the", "и", "what" match nearly all).
COMMON_SHARE = 0.2


@dataclass(frozen=True)
class ChunkRow:
    """A chunk as stored: its text, where it came from, and the text that full-text search sees."""

    text: str
    headings: tuple[str, ...]
    page: int | None
    start: int
    end: int
    terms: str  # keywords.search_text(text): stemmed, so Russian word forms meet


@dataclass(frozen=True)
class StoredChunk:
    id: int
    source: str
    ordinal: int  # its place in the source
    text: str
    headings: tuple[str, ...]
    page: int | None
    start: int
    end: int


@dataclass(frozen=True)
class SourceFile:
    path: str
    sha256: str
    size: int
    kind: str
    title: str | None
    chunks: int
    added_at: float


def _connect(path: Path):
    import apsw
    import sqlite_vec

    try:
        db = apsw.Connection(str(path))
    except apsw.Error as e:
        raise BadRequest(f"cannot open the collection index {path}: {e}") from None
    db.enable_load_extension(True)
    db.load_extension(sqlite_vec.loadable_path())
    db.enable_load_extension(False)
    db.set_busy_timeout(30_000)  # an ingest's transaction is short; a reader waits it out rather than failing
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
    return db


class SqliteIndex:
    """One collection's SQLite file. Safe to use from several threads (a connection per thread)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()  # one writer at a time in this process; SQLite serialises other processes
        self._vectors: tuple[int, np.ndarray, np.ndarray] | None = None  # (version, chunk ids, matrix)
        self._vectors_lock = threading.Lock()

    # -- setup ------------------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, meta: dict[str, str | int], dims: int) -> "SqliteIndex":
        index = cls(path)
        with index._transaction() as db:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, "
                       "kind TEXT NOT NULL, title TEXT, chunks INTEGER NOT NULL, added_at REAL NOT NULL)")
            db.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, source TEXT NOT NULL, ordinal INTEGER NOT NULL,"
                       " text TEXT NOT NULL, headings TEXT NOT NULL, page INTEGER, start INTEGER NOT NULL, "
                       "end INTEGER NOT NULL)")
            db.execute("CREATE INDEX chunks_by_source ON chunks(source)")
            # Words are stemmed before they get here (keywords.py), so the tokenizer only splits and lowercases.
            db.execute("CREATE VIRTUAL TABLE chunk_words USING fts5(terms, tokenize='unicode61 remove_diacritics 0')")
            db.execute("CREATE VIRTUAL TABLE chunk_terms USING fts5vocab(chunk_words, 'row')")
            db.execute(f"CREATE VIRTUAL TABLE chunk_vectors USING vec0(embedding float[{int(dims)}] "
                       "distance_metric=cosine)")
            for key, value in {**meta, "schema": SCHEMA, "dims": dims, "created_at": time.time()}.items():
                db.execute("INSERT INTO meta VALUES (?, ?)", (key, str(value)))
        return index

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None:
            if not self.path.is_file():
                raise BadRequest(f"the collection index {self.path} is missing")
            db = self._local.db = _connect(self.path)
        return db

    @contextmanager
    def _transaction(self) -> Iterator:
        with self._lock:
            db = getattr(self._local, "db", None) or _connect(self.path)
            self._local.db = db
            with db:  # apsw: BEGIN … COMMIT, or ROLLBACK on an exception
                yield db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def meta(self) -> dict[str, str]:
        return dict(self._db().execute("SELECT key, value FROM meta").fetchall())

    @property
    def dims(self) -> int:
        return int(self.meta()["dims"])

    # -- writing ----------------------------------------------------------------------------------------------------

    def replace_source(self, source: SourceFile, chunks: list[ChunkRow], vectors: np.ndarray) -> None:
        """The source's old chunks (if any) out, these in: all or nothing."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._transaction() as db:
            self._delete(db, source.path)
            for ordinal, (chunk, vector) in enumerate(zip(chunks, vectors)):
                db.execute("INSERT INTO chunks (source, ordinal, text, headings, page, start, end) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (source.path, ordinal, chunk.text, json.dumps(chunk.headings, ensure_ascii=False),
                            chunk.page, chunk.start, chunk.end))
                rowid = db.last_insert_rowid()
                db.execute("INSERT INTO chunk_words (rowid, terms) VALUES (?, ?)", (rowid, chunk.terms))
                db.execute("INSERT INTO chunk_vectors (rowid, embedding) VALUES (?, ?)", (rowid, vector.tobytes()))
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (source.path, source.sha256, source.size, source.kind, source.title, len(chunks),
                        source.added_at))
            self._bump(db)

    def remove_sources(self, paths: list[str]) -> int:
        with self._transaction() as db:
            for path in paths:
                self._delete(db, path)
            self._bump(db)
        return len(paths)

    @staticmethod
    def _bump(db) -> None:
        """A new version for readers' in-memory copies of the vectors (in this process or another)."""
        db.execute("INSERT INTO meta VALUES ('version', '1') ON CONFLICT(key) DO UPDATE SET "
                   "value = CAST(value AS INTEGER) + 1")

    @staticmethod
    def _delete(db, path: str) -> None:
        ids = [row[0] for row in db.execute("SELECT id FROM chunks WHERE source = ?", (path,))]
        for rowid in ids:
            db.execute("DELETE FROM chunk_words WHERE rowid = ?", (rowid,))
            db.execute("DELETE FROM chunk_vectors WHERE rowid = ?", (rowid,))
        db.execute("DELETE FROM chunks WHERE source = ?", (path,))
        db.execute("DELETE FROM files WHERE path = ?", (path,))

    # -- reading ----------------------------------------------------------------------------------------------------

    def sources(self) -> list[SourceFile]:
        rows = self._db().execute("SELECT path, sha256, size, kind, title, chunks, added_at FROM files ORDER BY path")
        return [SourceFile(*row) for row in rows]

    def source_hash(self, path: str) -> str | None:
        row = self._db().execute("SELECT sha256 FROM files WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def count_chunks(self) -> int:
        return self._db().execute("SELECT count(*) FROM chunks").fetchone()[0]

    def vector_search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first.

        Exact search over a copy of the vectors in memory, reloaded when the file changes: sqlite-vec's own scan
        (`embedding MATCH ?`) took 80 ms at 100,000 chunks here, this 8 ms (bench/rag.py). The vectors are stored
        normalised, so cosine is a dot product.
        """
        ids, matrix = self._matrix()
        if not len(ids):
            return []
        scores = matrix @ np.asarray(vector, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _matrix(self) -> tuple[np.ndarray, np.ndarray]:
        row = self._db().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        version = int(row[0]) if row else 0
        with self._vectors_lock:
            if self._vectors is None or self._vectors[0] != version:
                rows = self._db().execute("SELECT rowid, embedding FROM chunk_vectors").fetchall()
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                matrix = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                          if rows else np.zeros((0, self.dims), dtype=np.float32))
                self._vectors = (version, ids, matrix)
            return self._vectors[1], self._vectors[2]

    def keyword_search(self, terms: list[str], k: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score, higher is better), best first, for stemmed `terms` (keywords.search_terms)."""
        terms = list(dict.fromkeys(terms))
        if not terms:
            return []
        db = self._db()
        total = len(self._matrix()[0]) or 1  # chunks, known without a count(*) (a full scan of an FTS5 table)
        marks = ",".join("?" * len(terms))
        share = dict(db.execute(f"SELECT term, doc FROM chunk_terms WHERE term IN ({marks})", terms).fetchall())
        present = [t for t in terms if t in share]
        rare = [t for t in present if share[t] <= COMMON_SHARE * total] or sorted(present, key=share.get)[:2]
        if not rare:
            return []
        match = " OR ".join(f'"{t}"' for t in rare)  # quoted: FTS5 syntax in a question is only text
        rows = db.execute("SELECT rowid, bm25(chunk_words) AS score FROM chunk_words WHERE chunk_words "
                          "MATCH ? ORDER BY score LIMIT ?", (match, int(k)))
        return [(rowid, -score) for rowid, score in rows]  # FTS5's bm25() is lower-is-better

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._db().execute(f"SELECT id, source, ordinal, text, headings, page, start, end FROM chunks "
                                  f"WHERE id IN ({marks})", ids)
        return {row[0]: StoredChunk(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), *row[5:])
                for row in rows}
