"""A collection's index on a Chroma server (EMBER_RAG_URL=http://host:port): for collections that outgrow one machine.

The same methods as `SqliteIndex`, so collections, search and grounded chats do not know which they use. ember
computes every embedding and hands Chroma the vectors (Chroma's own embedding functions would download models).

Each ember collection is two Chroma collections:

* `ember_<name>_c`, the chunks: one record per chunk, its vector (cosine space), its text and place in the metadata,
  and as the record's document its stemmed search terms (keywords.search_text) between spaces; the collection's
  settings (embedding model, prefixes, dimensions) in the Chroma collection's metadata.
* `ember_<name>_f`, the files: one record per source file (its hash, size, kind, title, chunk count), with a
  one-number placeholder vector, since every Chroma record has one.

Chroma has no transactions. A file is replaced in an order that leaves it absent rather than half there: its file
record goes first, then its old chunks, then the new chunks, and the file record is written last. A process killed
in between leaves chunks with no file record: the file counts as not added, the next `ember rag add` replaces them.

Words: Chroma's server searches documents by substring (`$contains`), with no BM25. The keyword side asks it for the
chunks holding each of the question's terms (as whole terms: " term "), leaves out terms in more than a fifth of the
chunks as the SQLite index does, and ranks the chunks found by BM25 computed here from those counts.
"""

import contextlib
import functools
import hashlib
import json
import math
import time
from urllib.parse import urlparse

import httpx
import numpy as np

from ember.core.errors import BadRequest, EmberError, NotFound
from ember.rag.index import COMMON_SHARE, SCHEMA, ChunkRow, SourceFile, StoredChunk

BM25_K1, BM25_B = 1.2, 0.75  # the usual constants (FTS5's too)
KEYWORD_CANDIDATES = 2000  # chunks holding the rare terms that are scored, at most


class Unreachable(EmberError):
    status = 503


def _translated(method):
    """Chroma's errors as ember's: a collection deleted meanwhile (by another process) is a 404, a server gone a 503,
    anything else the server refused a 502 that quotes it; never a 500 with a traceback."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        from chromadb.errors import ChromaError, NotFoundError

        try:
            return method(self, *args, **kwargs)
        except EmberError:
            raise
        except NotFoundError:
            raise NotFound(f"collection '{self.name}' is gone from the Chroma server") from None
        except ChromaError as e:
            raise EmberError(f"the Chroma server refused it: {e}", status=502) from None
        except (OSError, httpx.HTTPError) as e:
            raise Unreachable(f"lost the Chroma server ({type(e).__name__}: {e})") from None
    return call


def connect(url: str):
    """A client for the Chroma server at `url`, checked with a heartbeat."""
    import chromadb
    from chromadb.config import Settings

    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadRequest(f"EMBER_RAG_URL={url!r} is not a Chroma server's address; use http://host:port")
    try:
        client = chromadb.HttpClient(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https"
                                                                                 else 8000),
                                     ssl=parsed.scheme == "https",
                                     settings=Settings(anonymized_telemetry=False))
        client.heartbeat()
    except Exception as e:  # chromadb raises its own and httpx's errors alike
        raise Unreachable(f"cannot reach the Chroma server at {url} ({type(e).__name__}); start it (chroma run "
                          "--host 127.0.0.1 --port 8000 --path DIR) or unset EMBER_RAG_URL to keep collections in "
                          "local SQLite files") from None
    return client


def _chunks_name(name: str) -> str:
    return f"ember_{name}_c"  # Chroma names must start and end with a letter or digit; ember's may end in '.' or '-'


def _files_name(name: str) -> str:
    return f"ember_{name}_f"


def names(client) -> list[str]:
    found = [c if isinstance(c, str) else c.name for c in client.list_collections()]
    return sorted(n[len("ember_"):-len("_c")] for n in found if n.startswith("ember_") and n.endswith("_c"))


def delete(client, name: str) -> None:
    for chroma_name in (_chunks_name(name), _files_name(name)):
        with contextlib.suppress(Exception):  # absent already: deleting is idempotent
            client.delete_collection(chroma_name)


def _chunk_id(path: str, digest: str, ordinal: int) -> int:
    """Chunk ids are ints in ember; on Chroma, 60 bits of a hash of where the chunk comes from."""
    return int(hashlib.sha256(f"{path}\0{digest}\0{ordinal}".encode()).hexdigest()[:15], 16)


def _file_id(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:32]


class ChromaIndex:
    def __init__(self, client, name: str):
        self.client, self.name = client, name
        self._open()

    @_translated
    def _open(self) -> None:
        from chromadb.errors import NotFoundError

        try:
            self._chunks = self.client.get_collection(_chunks_name(self.name), embedding_function=None)
            self._files = self.client.get_collection(_files_name(self.name), embedding_function=None)
        except (NotFoundError, ValueError):  # ValueError: what chromadb raised for a missing collection before 1.0
            raise NotFound(f"collection '{self.name}' not found on the Chroma server; make it with: ember rag create "
                           f"{self.name}") from None
        self._batch = self.client.get_max_batch_size()

    @classmethod
    def create(cls, client, name: str, meta: dict[str, str | int], dims: int) -> "ChromaIndex":
        settings = {**{k: str(v) for k, v in meta.items()}, "schema": str(SCHEMA), "dims": str(dims),
                    "created_at": str(time.time())}
        client.create_collection(_files_name(name), embedding_function=None)
        # Made last: a collection exists (names() lists it) only once both halves do.
        client.create_collection(_chunks_name(name), metadata={**settings, "hnsw:space": "cosine"},
                                 embedding_function=None)
        return cls(client, name)

    def close(self) -> None:
        pass

    @_translated
    def meta(self) -> dict[str, str]:
        return {k: str(v) for k, v in (self._chunks.metadata or {}).items() if not k.startswith("hnsw:")}

    @property
    def dims(self) -> int:
        return int(self.meta()["dims"])

    # -- writing ----------------------------------------------------------------------------------------------------

    @_translated
    def replace_source(self, source: SourceFile, chunks: list[ChunkRow], vectors: np.ndarray) -> None:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        self._files.delete(ids=[_file_id(source.path)])
        self._chunks.delete(where={"source": source.path})
        ids = [str(_chunk_id(source.path, source.sha256, n)) for n in range(len(chunks))]
        metadatas = [{"source": source.path, "ordinal": n, "text": c.text, "headings": json.dumps(c.headings,
                      ensure_ascii=False), "start": c.start, "end": c.end, **({"page": c.page} if c.page is not None
                                                                             else {})}
                     for n, c in enumerate(chunks)]
        documents = [f" {c.terms} " for c in chunks]  # spaces around: a term is searched as " term "
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), self._batch):
            end = start + self._batch
            self._chunks.add(ids=ids[start:end], embeddings=vectors[start:end].tolist(),
                             metadatas=metadatas[start:end], documents=documents[start:end])
        self._files.add(ids=[_file_id(source.path)], embeddings=[[1.0]], metadatas=[{
            "path": source.path, "sha256": source.sha256, "size": source.size, "kind": source.kind,
            "chunks": len(chunks), "added_at": source.added_at, **({"title": source.title} if source.title else {})}])

    @_translated
    def remove_sources(self, paths: list[str]) -> int:
        for path in paths:
            self._files.delete(ids=[_file_id(path)])
            self._chunks.delete(where={"source": path})
        return len(paths)

    # -- reading ----------------------------------------------------------------------------------------------------

    @_translated
    def sources(self) -> list[SourceFile]:
        records = self._files.get(include=["metadatas"])["metadatas"] or []
        return sorted((SourceFile(m["path"], m["sha256"], m["size"], m["kind"], m.get("title"), m["chunks"],
                                  m["added_at"]) for m in records), key=lambda s: s.path)

    @_translated
    def source_hash(self, path: str) -> str | None:
        found = self._files.get(ids=[_file_id(path)], include=["metadatas"])["metadatas"]
        return found[0]["sha256"] if found else None

    @_translated
    def count_chunks(self) -> int:
        return self._chunks.count()

    @_translated
    def vector_search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        total = self._chunks.count()
        if not total:
            return []
        found = self._chunks.query(query_embeddings=[np.asarray(vector, dtype=np.float32).tolist()],
                                   n_results=min(k, total), include=["distances"])
        return [(int(i), 1.0 - float(d)) for i, d in zip(found["ids"][0], found["distances"][0])]

    @_translated
    def keyword_search(self, terms: list[str], k: int) -> list[tuple[int, float]]:
        terms = list(dict.fromkeys(terms))
        total = self._chunks.count()
        if not terms or not total:
            return []
        holding = {t: self._chunks.get(where_document={"$contains": f" {t} "}, include=[])["ids"] for t in terms}
        present = [t for t in terms if holding[t]]
        rare = [t for t in present if len(holding[t]) <= COMMON_SHARE * total] or sorted(
            present, key=lambda t: len(holding[t]))[:2]
        candidates = list(dict.fromkeys(i for t in rare for i in holding[t]))[:KEYWORD_CANDIDATES]
        if not candidates:
            return []
        documents = self._chunks.get(ids=candidates, include=["documents"])
        lengths = {i: len(d.split()) for i, d in zip(documents["ids"], documents["documents"])}
        average = sum(lengths.values()) / len(lengths)  # of the candidates: the whole collection's is not at hand
        idf = {t: math.log(1 + (total - len(holding[t]) + 0.5) / (len(holding[t]) + 0.5)) for t in rare}
        scores = []
        for i, text in zip(documents["ids"], documents["documents"]):
            words = text.split()
            score = 0.0
            for t in rare:
                tf = words.count(t)
                if tf:
                    score += idf[t] * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * lengths[i] /
                                                                            average))
            scores.append((int(i), score))
        scores.sort(key=lambda item: -item[1])
        return scores[:k]

    @_translated
    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        found = self._chunks.get(ids=[str(i) for i in ids], include=["metadatas"])
        return {int(i): StoredChunk(int(i), m["source"], m["ordinal"], m["text"], tuple(json.loads(m["headings"])),
                                    m.get("page"), m["start"], m["end"])
                for i, m in zip(found["ids"], found["metadatas"])}
