"""`ember rag`: collections of the user's documents, searched and asked from the terminal.

The collection files are read and written here, in this process (SQLite in WAL mode lets a running server use them at
the same time); embeddings and answers come from the running server when there is one, else from the core in this
process, as `ember run` does.
"""

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from ember.cli.client import connect
from ember.cli.progress import run_job
from ember.config import Settings
from ember.core.humanize import size as human_size
from ember.core.types import TranscribeRequest
from ember.rag import grounding
from ember.rag.collections import DEFAULT_EMBED_MODEL, Collections
from ember.rag.retrieve import MODES
from ember.runtime.jobs import Job
from ember.store.store import ModelStore

rag_app = typer.Typer(no_args_is_help=True, help="Ask your documents: collections, search, answers with citations.")
out = Console()
err = Console(stderr=True, highlight=False)


class _Session:
    """Collections whose embeddings come from the server, or from the core in this process."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self.client = connect(self.settings)
        # The store is shared with a running server: a bundled embedding model pulled here is one it can load.
        self.collections = Collections(self.settings.home / "collections", self.client.embed,
                                       ModelStore(self.settings.models).ensure_bundled, transcribe=self._transcribe)

    def _transcribe(self, path: Path) -> list[tuple[float, float, str]]:
        body = self.client.transcribe(path, TranscribeRequest(model=None, source=path.name))
        return [(s["start"], s["end"], s["text"]) for s in body.get("segments") or []]

    def __enter__(self) -> "_Session":
        return self

    def __exit__(self, *_) -> None:
        self.client.close()


@rag_app.command()
def create(
    name: str,
    embed_model: str = typer.Option(DEFAULT_EMBED_MODEL, "--embed-model", help="the embedding model for its vectors"),
    query_prefix: str | None = typer.Option(None, "--query-prefix", help="text put before each question"),
    document_prefix: str | None = typer.Option(None, "--document-prefix", help="text put before each chunk"),
):
    """Make an empty collection."""
    with _Session() as s:
        info = s.collections.create(name, embed_model, query_prefix, document_prefix)
    out.print(f"created collection '{info.name}' ({info.embed_model}, {info.dims} dimensions)")


@rag_app.command(no_args_is_help=True)
def add(name: str, paths: list[Path] = typer.Argument(..., help="files or folders (walked for documents)"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bar")):
    """Add files and folders: text, Markdown, HTML, PDF, DOCX, images (OCR) and audio (transcribed). Unchanged files
    are skipped; changed ones replaced."""
    with _Session() as s:
        s.collections.index(name)  # an unknown collection is an error before any work
        report = run_job(Job("ingest", f"add to {name}", lambda r: s.collections.add(name, paths, r)), err, quiet)
    out.print(f"{name}: {len(report.added)} added, {len(report.replaced)} replaced, {len(report.unchanged)} "
              f"unchanged, {len(report.failed)} failed; {report.chunks} chunks embedded")
    for path, why in report.failed:
        err.print(f"[yellow]skipped[/yellow] {escape(path)}: {escape(why)}", soft_wrap=True)
    if report.failed and not (report.added or report.replaced or report.unchanged):
        raise typer.Exit(1)


@rag_app.command("ls")
def list_collections():
    """List the collections."""
    with _Session() as s:
        infos = [s.collections.info(n) for n in s.collections.names()]
    table = Table("NAME", "EMBED MODEL", "FILES", "CHUNKS", box=None, pad_edge=False)
    for i in infos:
        table.add_row(i.name, i.embed_model, str(i.files), str(i.chunks))
    out.print(table)


@rag_app.command(no_args_is_help=True)
def show(name: str):
    """A collection's settings and files."""
    with _Session() as s:
        info, files = s.collections.info(name), s.collections.sources(name)
    out.print(f"collection    {info.name}\nembed model   {info.embed_model} ({info.dims} dimensions)\n"
              f"files         {info.files}\nchunks        {info.chunks}", markup=False, highlight=False)
    if info.query_prefix or info.document_prefix:
        out.print(f"prefixes      query {info.query_prefix!r}, document {info.document_prefix!r}", markup=False)
    if files:
        table = Table(Column("FILE", overflow="fold"), "KIND", "SIZE", "CHUNKS", box=None, pad_edge=False)
        for f in files:
            table.add_row(escape(f.path), f.kind, human_size(f.size), str(f.chunks))
        out.print(table)


@rag_app.command(no_args_is_help=True)
def rm(name: str, paths: list[Path] = typer.Argument(None, help="files or folders to forget; none: the collection")):
    """Remove a collection, or forget some of its files (the files themselves are not touched)."""
    with _Session() as s:
        if paths:
            gone = s.collections.remove(name, paths)
            out.print(f"{name}: forgot {len(gone)} file{'s' if len(gone) != 1 else ''}")
        else:
            s.collections.delete(name)
            out.print(f"deleted collection '{name}'")


@rag_app.command(no_args_is_help=True)
def query(name: str, question: str, k: int = typer.Option(5, "-k", min=1, max=100, help="how many chunks"),
          mode: str = typer.Option("hybrid", "--mode", help=f"{', '.join(MODES)}"),
          rerank_model: str | None = typer.Option(None, "--rerank-model", help="a model that reranks what is found"),
          as_json: bool = typer.Option(False, "--json", help="one JSON object")):
    """The chunks that best answer a question, with scores and sources."""
    with _Session() as s:
        rerank = (lambda q, docs: s.client.rerank(rerank_model, q, docs)) if rerank_model else None
        hits, _ = s.collections.search(name, question, k, mode, rerank)
    if as_json:
        out.print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False), markup=False, highlight=False,
                  soft_wrap=True)
        return
    if not hits:
        out.print("nothing found")
    for n, hit in enumerate(hits, 1):
        sim = "" if hit.similarity is None else f" cosine {hit.similarity:.3f}"
        number = escape(f"[{n}]")
        out.print(f"[bold]{number}[/bold] {escape(grounding.label(hit))}  [dim]score {hit.score:.4f}{sim}[/dim]")
        text = " ".join(hit.chunk.text.split())
        out.print("    " + escape(text[:300] + ("…" if len(text) > 300 else "")), highlight=False)


@rag_app.command(no_args_is_help=True)
def ask(name: str = typer.Argument(..., help="the collection (several: name1,name2)"),
        question: str = typer.Argument(...),
        model: str = typer.Option("smollm2", "--model", "-m", help="the model that writes the answer"),
        preset: str | None = typer.Option(None, "--preset", help="sampling preset: factual, concise, …"),
        rerank_model: str | None = typer.Option(None, "--rerank-model", help="a model that reranks the sources")):
    """An answer grounded in the collection, streamed, with numbered citations to file, page and heading."""
    names = [n for n in name.split(",") if n]
    with _Session() as s:
        stats: dict = {}
        options = {"rerank_model": rerank_model} if rerank_model else {}
        for item in s.client.chat(model, [{"role": "user", "content": question}], options, preset, collections=names):
            if isinstance(item, dict):
                stats = item
            else:
                sys.stdout.write(item)
                sys.stdout.flush()
        sys.stdout.write("\n")
    citations = stats.get("citations") or []
    if citations:
        out.print("\n[bold]Sources[/bold]")
        for c in citations:
            where = grounding.place(c["source"], c.get("page"), c.get("headings") or [])
            number = escape(f"[{c['index']}]")
            out.print(f"  {number} {escape(where)}  [dim]{escape(c['source'])}[/dim]", highlight=False)
