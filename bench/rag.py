"""Documents at scale: ingest speed through `ember rag add`, and search latency in a collection of 100,000 chunks.

1. Ingest: 1,000 Markdown files of ~2 KB (generated, English and Russian) added to a new collection with the default
   embedding model, as a user runs it (`ember rag add`, the progress bar on), against a running `ember serve`;
   chunks per second. Adding the same folder again is timed too (nothing to embed: hashes only).
2. Search: a collection index of 100,000 chunks (real text, vectors with the shape and spread of real embeddings:
   the embedding model is not what is timed here) and 200 questions: p50 / p95 of the hybrid retrieval (vector +
   BM25, fused; rerank not included), and of each side alone. Goal: hybrid p95 ≤ 50 ms on the SQLite index. The
   same on a Chroma server the bench starts on loopback from the chromadb package (--chroma-chunks 0 skips it).

    .venv/bin/python bench/rag.py [--files 1000] [--chunks 100000] [--chroma-chunks 100000] [--queries 200]

Prints a table and writes bench/results/rag.json and bench/results/rag.png.
"""

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ember.bench.harness import ember_env, ember_server, free_port

ROOT = Path(__file__).resolve().parent.parent
def zipf_vocabulary(syllables: list[str], size: int, seed: int) -> tuple[list[str], list[float]]:
    """`size` made-up words with Zipf frequencies (word r is 1/r as common as the first), as in real text: a few
    words in nearly every chunk, most in a handful. That is what makes BM25's cost realistic."""
    rng = random.Random(seed)
    words = list(dict.fromkeys("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
                                for _ in range(size * 2)))[:size]
    return words, [1.0 / (r + 1) for r in range(len(words))]


SYLLABLES = {"en": tuple("ka lo mi sen tar ber wol fin dra pel gor un est ing ro ca ne ti ver mon".split(" ")),  # noqa: SIM905
             "ru": tuple("ка ло ми сен тар бер вол фин дра пел гор ун ест ов ро ца не ти вер мон".split(" "))}  # noqa: SIM905


def write_corpus(folder: Path, files: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0

    def sentence(words, weights, n: int) -> str:
        return " ".join(rng.choices(words, weights, k=n)).capitalize() + "."

    for i in range(files):
        words, weights = VOCABULARY["ru" if i % 2 else "en"]
        body = "\n\n".join(f"## {sentence(words, weights, 3)}\n\n{sentence(words, weights, 45)} "
                           f"{sentence(words, weights, 40)}" for _ in range(3))
        text = f"# Document {i}\n\n{body}\n"
        (folder / f"doc-{i:04}.md").write_text(text, encoding="utf-8")
        total += len(text.encode())
    return total


def bench_ingest(files: int, work: Path) -> dict:
    corpus = work / "corpus"
    size = write_corpus(corpus, files)
    home = work / "home"
    port = free_port()
    env = ember_env(home, port)
    ember = [sys.executable, "-m", "ember"]
    for model in ("multilingual-e5",):
        subprocess.run([*ember, "pull", model, "--quiet"], env=env, check=True)
    with ember_server(home, port=port, log_path=work / "server.log"):
        subprocess.run([*ember, "rag", "create", "bench"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run([*ember, "rag", "add", "bench", str(corpus)], env=env, check=True)
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = subprocess.run([*ember, "rag", "add", "bench", str(corpus), "--quiet"], env=env, check=True,
                               capture_output=True, text=True)
        second = time.perf_counter() - started
        shown = subprocess.run([*ember, "rag", "show", "bench"], env=env, check=True, capture_output=True, text=True)
    chunks = int(next(line.split()[-1] for line in shown.stdout.splitlines() if line.startswith("chunks")))
    return {"files": files, "bytes": size, "chunks": chunks, "seconds": first, "chunks_per_s": chunks / first,
            "files_per_s": files / first, "readd_seconds": second, "readd_output": again.stdout.strip()}


VOCABULARY = {lang: zipf_vocabulary(syl, 20_000, seed) for seed, (lang, syl) in enumerate(SYLLABLES.items())}


def build_index(make, chunks: int, dims: int = 384, seed: int = 2):
    """An index made by `make(meta, dims)` with `chunks` chunks: real words (for BM25) and clustered unit vectors
    (for the vector side), the same for the SQLite index and the Chroma server."""
    from ember.rag import keywords
    from ember.rag.index import ChunkRow, SourceFile

    rng = random.Random(seed)
    npr = np.random.default_rng(seed)
    centres = npr.normal(size=(256, dims)).astype(np.float32)
    index = make({"name": "bench", "embed_model": "multilingual-e5"}, dims)
    per_file = 50
    for f in range(chunks // per_file):
        words, weights = VOCABULARY["ru" if f % 2 else "en"]
        texts = [" ".join(rng.choices(words, weights, k=60)) + "." for _ in range(per_file)]
        vectors = centres[npr.integers(0, len(centres), per_file)] + 0.6 * npr.normal(size=(per_file, dims))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [ChunkRow(t, ("Doc", "Part"), None, 0, len(t), keywords.search_text(t)) for t in texts]
        index.replace_source(SourceFile(f"/bench/file-{f:05}.md", "0" * 64, 1000, "markdown", None, per_file, 0.0),
                             rows, vectors)
    return index, centres


def bench_search(chunks: int, queries: int, make) -> dict:
    from ember.rag import retrieve

    started = time.perf_counter()
    index, centres = build_index(make, chunks)
    built = time.perf_counter() - started
    rng = random.Random(3)
    npr = np.random.default_rng(3)
    out = {"chunks": index.count_chunks(), "build_seconds": built}
    started = time.perf_counter()
    retrieve.search(index, centres[0] / np.linalg.norm(centres[0]), "warm up", 5)
    out["first_query_ms"] = (time.perf_counter() - started) * 1000  # reads the vectors into memory
    for mode in ("hybrid", "vector", "keyword"):
        times = []
        for i in range(queries):
            words, weights = VOCABULARY["ru" if i % 2 else "en"]
            question = " ".join(rng.choices(words, weights, k=8)) + "?"
            vector = centres[npr.integers(0, len(centres))] + 0.6 * npr.normal(size=centres.shape[1])
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)
            t = time.perf_counter()
            retrieve.search(index, vector, question, 5, mode)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out[mode] = {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
                     "max_ms": times[-1]}
    return out


@contextlib.contextmanager
def chroma_server(data: Path):
    """A Chroma server from the installed package, on a free loopback port, stopped at the end."""
    import chromadb
    from chromadb.config import Settings

    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    with open(data.parent / "chroma.log", "wb") as log:
        process = subprocess.Popen([str(chroma), "run", "--host", "127.0.0.1", "--port", str(port), "--path",
                                    str(data)], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        try:
            client = None
            for _ in range(200):
                try:
                    client = chromadb.HttpClient(host="127.0.0.1", port=port,
                                                 settings=Settings(anonymized_telemetry=False))
                    client.heartbeat()
                    break
                except Exception:
                    time.sleep(0.3)
            yield client
        finally:
            process.terminate()
            process.wait(30)


def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    modes = ["hybrid", "vector", "keyword"]
    search = result["search"]
    ax.bar([m + " p50" for m in modes], [search[m]["p50_ms"] for m in modes], color="#4c72b0", label="SQLite p50")
    ax.bar([m + " p95" for m in modes], [search[m]["p95_ms"] for m in modes], color="#dd8452", label="SQLite p95")
    if "chroma" in result:
        chroma = result["chroma"]
        ax.bar([m + " p50\nChroma" for m in modes], [chroma[m]["p50_ms"] for m in modes], color="#55a868",
               label="Chroma p50")
        ax.bar([m + " p95\nChroma" for m in modes], [chroma[m]["p95_ms"] for m in modes], color="#c44e52",
               label="Chroma p95")
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="goal: hybrid p95 ≤ 50 ms")
    ax.set_ylabel("ms per query")
    ax.set_title(f"search in {search['chunks']:,} chunks")
    ax.legend()
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chroma-chunks", type=int, default=100_000, help="chunks on the Chroma server (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from ember.rag.index import SqliteIndex

    with tempfile.TemporaryDirectory(prefix="ember-bench-rag-") as tmp:
        work = Path(tmp)
        result = {"machine": {"cores": os.cpu_count()}, "ingest": bench_ingest(args.files, work),
                  "search": bench_search(args.chunks, args.queries,
                                         lambda meta, dims: SqliteIndex.create(work / "big.sqlite", meta, dims))}
        if args.chroma_chunks:
            with chroma_server(work / "chroma") as client:
                from ember.rag.chroma_index import ChromaIndex

                result["chroma"] = bench_search(args.chroma_chunks, args.queries,
                                                lambda meta, dims: ChromaIndex.create(client, "bench", meta, dims))
    ingest, search = result["ingest"], result["search"]
    print(f"\ningest   {ingest['files']} files ({ingest['bytes'] / 1e6:.1f} MB) → {ingest['chunks']} chunks in "
          f"{ingest['seconds']:.1f} s: {ingest['chunks_per_s']:.1f} chunks/s, {ingest['files_per_s']:.1f} files/s; "
          f"adding them again: {ingest['readd_seconds']:.1f} s")
    print(f"search   {search['chunks']:,} chunks (index built in {search['build_seconds']:.0f} s)")
    print("mode      p50 ms   p95 ms   max ms")
    for mode in ("hybrid", "vector", "keyword"):
        s = search[mode]
        print(f"{mode:8} {s['p50_ms']:7.1f}  {s['p95_ms']:7.1f}  {s['max_ms']:7.1f}")
    if "chroma" in result:
        chroma = result["chroma"]
        print(f"search on a Chroma server (chromadb {_version('chromadb')}, on loopback), {chroma['chunks']:,} chunks "
              f"(written in {chroma['build_seconds']:.0f} s)")
        for mode in ("hybrid", "vector", "keyword"):
            s = chroma[mode]
            print(f"{mode:8} {s['p50_ms']:7.1f}  {s['p95_ms']:7.1f}  {s['max_ms']:7.1f}")
    verdict = "PASS" if search["hybrid"]["p95_ms"] <= 50 else "FAIL"
    print(f"goal: hybrid p95 ≤ 50 ms: {verdict}")
    (args.out / "rag.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "rag.png")
    print(f"wrote {args.out / 'rag.json'} and {args.out / 'rag.png'}")


if __name__ == "__main__":
    main()
