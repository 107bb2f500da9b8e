"""Collections: named sets of documents a user asks questions of, each in its own index.

A collection remembers the embedding model it was made with (vectors from another model would not compare) and the
prefixes that model wants before queries and passages. Ingest is a job: it reports progress after every file and can
be cancelled between files and between embedding batches; what was added before the cancel stays, whole.
"""

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest, NotFound
from ember.rag import chunking, keywords, readers, retrieve
from ember.rag.index import ChunkRow, SourceFile, SqliteIndex
from ember.runtime.jobs import Reporter

# (model, texts) → one vector per text. The runtime's embed, called from a job's worker thread.
Embed = Callable[[str, list[str]], list[list[float]]]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_EMBED_MODEL = "multilingual-e5"
# Prefixes some embedding models were trained with; a collection stores its own (overridable at create).
KNOWN_PREFIXES = {"multilingual-e5": ("query: ", "passage: ")}
# The cosine below which a chunk is not taken as being about the question, by model: "nothing found" is answered
# without the model when no chunk reaches it. E5 packs every cosine into 0.7–0.95: on the evaluation corpus
# (tests/rag_corpus) the best chunk of every one of 60 real questions scored ≥ 0.806, and a plain "When does the boat
# leave?" 0.819, while 5 of 12 unrelated questions ("Who won the 1998 world cup?", "Кто написал «Войну и мир»?")
# scored 0.75–0.80 and 7 scored 0.80–0.84: a heuristic that catches some off-topic questions and no real one; the
# grounding prompt tells the model to say when the sources don't answer. MiniLM's unrelated pairs sit near 0.
RELEVANCE_FLOOR = {"multilingual-e5": 0.8, "minilm": 0.25}
DEFAULT_RELEVANCE_FLOOR = 0.25
# Texts sent to the embedder at once: big enough to keep it busy, small enough that a cancel is heard soon.
EMBED_BATCH = 32
# A chunk's budget in (estimated) tokens. MiniLM was trained on 128-token pieces and sentence-transformers cuts its
# input at 256; 200 keeps a chunk whole inside that with room for the estimate's error.
CHUNK_TOKENS = 200
CHUNK_OVERLAP = 40


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    chunks: int = 0
    embedded: int = 0  # texts sent to the embedding model

    def as_dict(self) -> dict:
        return {"added": self.added, "replaced": self.replaced, "unchanged": self.unchanged,
                "failed": [{"path": p, "error": why} for p, why in self.failed], "chunks": self.chunks,
                "embedded": self.embedded}


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    embed_model: str
    dims: int
    query_prefix: str
    document_prefix: str
    files: int
    chunks: int
    created_at: float

    def as_dict(self) -> dict:
        return dict(vars(self))


def relevance_floor(embed_model: str) -> float:
    return RELEVANCE_FLOOR.get(embed_model.split(":")[0], DEFAULT_RELEVANCE_FLOOR)


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise BadRequest(f"invalid collection name {name!r}: use letters, digits, '.', '_' or '-' (up to 64), "
                         "starting with a letter or digit")
    return name


def source_key(path: Path) -> str:
    """How a file is known in a collection: its absolute path."""
    return str(path.expanduser().resolve())


def expand(paths: list[Path]) -> Iterator[tuple[Path, str | None]]:
    """Each file to add, with a reason when it cannot be (folders are walked for the kinds readers know)."""
    for path in paths:
        path = path.expanduser()
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if readers.supported(child):
                    yield child, None
        elif path.is_file():
            yield path, None if readers.supported(path) else (
                f"not a kind ember reads (known: {', '.join(sorted(readers.SUFFIXES))})")
        else:
            yield path, "no such file or folder"


class Collections:
    def __init__(self, root: Path, embed: Embed, prepare: Callable[[str], object] | None = None,
                 rag_url: str | None = None, transcribe: readers.Transcribe | None = None):
        self.root = Path(root)
        self.embed = embed
        self.transcribe = transcribe  # audio files' speech to text (the runtime's Whisper)
        self.prepare = prepare  # called with the embedding model before a collection is made (to pull a bundled one)
        self._indexes: dict[str, tuple[int, SqliteIndex]] = {}  # name → (the file's inode, its index)
        # On a Chroma server instead of SQLite files, when one is named (connected at first use).
        self.rag_url = rag_url if rag_url is not None else os.environ.get("EMBER_RAG_URL") or None
        self._chroma = None

    def _server(self):
        if self._chroma is None:
            from ember.rag import chroma_index

            self._chroma = chroma_index.connect(self.rag_url)
        return self._chroma

    def _path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.sqlite"

    def index(self, name: str) -> SqliteIndex:
        if self.rag_url:
            from ember.rag.chroma_index import ChromaIndex

            # Opened for each use, not kept: another process (ember rag rm) may delete and make it again meanwhile.
            return ChromaIndex(self._server(), check_name(name))  # type: ignore[return-value]  (SqliteIndex's methods)
        path = self._path(name)
        try:
            inode = path.stat().st_ino
        except FileNotFoundError:
            raise NotFound(f"collection '{name}' not found; make it with: ember rag create {name}") from None
        known = self._indexes.get(name)
        if known is None or known[0] != inode:  # new, or deleted and made again by another process
            self._indexes[name] = (inode, SqliteIndex(path))
        return self._indexes[name][1]

    # -- the collections --------------------------------------------------------------------------------------------

    def create(self, name: str, embed_model: str | None = None, query_prefix: str | None = None,
               document_prefix: str | None = None) -> CollectionInfo:
        path = self._path(name)
        exists = name in self.names() if self.rag_url else path.exists()
        if exists:
            raise BadRequest(f"collection '{name}' already exists; add files with: ember rag add {name} PATH")
        model = embed_model or DEFAULT_EMBED_MODEL
        known = KNOWN_PREFIXES.get(model.split(":")[0], ("", ""))
        if self.prepare:
            self.prepare(model)
        probe = self.embed(model, ["dimension probe"])  # also proves the model exists and can embed
        meta = {"name": name, "embed_model": model,
                "query_prefix": known[0] if query_prefix is None else query_prefix,
                "document_prefix": known[1] if document_prefix is None else document_prefix}
        if self.rag_url:
            from ember.rag.chroma_index import ChromaIndex

            ChromaIndex.create(self._server(), name, meta, dims=len(probe[0]))
            return self.info(name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.unlink(missing_ok=True)
        SqliteIndex.create(tmp, meta, dims=len(probe[0])).close()
        tmp.replace(path)  # a collection appears whole or not at all
        return self.info(name)

    def names(self) -> list[str]:
        if self.rag_url:
            from ember.rag import chroma_index

            return chroma_index.names(self._server())
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.sqlite") if NAME.match(p.stem))

    def info(self, name: str) -> CollectionInfo:
        index = self.index(name)
        meta = index.meta()
        sources = index.sources()
        return CollectionInfo(name, meta["embed_model"], int(meta["dims"]), meta.get("query_prefix", ""),
                              meta.get("document_prefix", ""), len(sources), sum(s.chunks for s in sources),
                              float(meta["created_at"]))

    def sources(self, name: str) -> list[SourceFile]:
        return self.index(name).sources()

    def delete(self, name: str) -> None:
        if self.rag_url:
            from ember.rag import chroma_index

            if name not in self.names():
                raise NotFound(f"collection '{name}' not found")
            chroma_index.delete(self._server(), name)
            return
        path = self._path(name)
        if not path.exists():
            raise NotFound(f"collection '{name}' not found")
        known = self._indexes.pop(name, None)
        if known:
            known[1].close()
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)

    def remove(self, name: str, paths: list[Path]) -> list[str]:
        """Forget files (a folder: every file under it); the files themselves are not touched."""
        index = self.index(name)
        known = [s.path for s in index.sources()]
        gone = []
        for path in paths:
            key = source_key(path)
            # str(path): a source that is not a file (a remembered turn, "memory:…") is named as `show` lists it.
            gone += [k for k in known if k in (key, str(path)) or k.startswith(key.rstrip("/") + "/")]
        if not gone:
            raise NotFound(f"collection '{name}' holds nothing at {', '.join(map(str, paths))}; "
                           f"ember rag show {name} lists its files")
        index.remove_sources(sorted(set(gone)))
        return sorted(set(gone))

    # -- search -----------------------------------------------------------------------------------------------------

    def search(self, name: str, question: str, k: int = 5, mode: str = "hybrid",
               rerank: retrieve.Rerank | None = None) -> tuple[list[retrieve.Hit], bool]:
        """The best `k` chunks, and whether any is close enough to the question to answer from (blocking)."""
        index = self.index(name)
        meta = index.meta()  # not info(): that counts every file, and this runs for every question
        model = meta["embed_model"]
        vector = None
        if mode != "keyword":
            vector = np.array(self.embed(model, [meta.get("query_prefix", "") + question])[0], dtype=np.float32)
        hits = retrieve.search(index, vector, question, k, mode, rerank)
        floor = relevance_floor(model)
        relevant = any(h.similarity is not None and h.similarity >= floor for h in hits) or (
            mode == "keyword" and bool(hits))
        return hits, relevant

    # -- ingest -----------------------------------------------------------------------------------------------------

    def add(self, name: str, paths: list[Path], report: Reporter) -> IngestReport:
        index = self.index(name)
        meta = index.meta()
        model, prefix, dims = meta["embed_model"], meta.get("document_prefix", ""), int(meta["dims"])
        result = IngestReport()
        todo: list[tuple[Path, int]] = []  # (file, its size: the progress bar counts bytes)
        for path, problem in expand(paths):
            if problem:
                result.failed.append((str(path), problem))
            else:
                todo.append((path, _size(path)))
        status, total, done = f"adding {len(todo)} files to {name}", sum(size for _, size in todo) or None, 0
        for path, size in todo:
            report(status, completed=done, total=total, item=name)
            self._add_one(index, model, prefix, dims, path, result, report)
            done += size
        report(status, completed=done, total=total, item=name)
        return result

    def _add_one(self, index: SqliteIndex, model: str, prefix: str, dims: int, path: Path, result: IngestReport,
                 report: Reporter) -> None:
        key = source_key(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            result.failed.append((key, e.strerror or str(e)))
            return
        digest = hashlib.sha256(data).hexdigest()
        previous = index.source_hash(key)
        if previous == digest:
            result.unchanged.append(key)
            return
        try:
            doc = readers.read_document(path, transcribe=self.transcribe)
        except readers.UnreadableDocument as e:
            result.failed.append((key, e.reason))
            return
        pieces = chunking.chunk_document(doc, max_tokens=CHUNK_TOKENS, overlap_tokens=CHUNK_OVERLAP)
        # What is embedded and searched: the chunk under its document's title and heading path.
        texts = [f"{chunking.context_line(doc, p)}\n{p.text}" for p in pieces]
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            report.check()  # a cancel is heard between batches, not only after the file
            batch = texts[start:start + EMBED_BATCH]
            vectors += self.embed(model, [prefix + t for t in batch])
            result.embedded += len(batch)
        rows = [ChunkRow(p.text, p.headings, p.page, p.start, p.end, keywords.search_text(t))
                for p, t in zip(pieces, texts)]
        matrix = np.array(vectors, dtype=np.float32).reshape(len(rows), dims)
        index.replace_source(SourceFile(key, digest, len(data), doc.kind, doc.title, len(rows), time.time()), rows,
                             matrix)
        (result.replaced if previous else result.added).append(key)
        result.chunks += len(rows)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
