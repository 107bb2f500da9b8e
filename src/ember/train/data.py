"""Training text: read files and folders, turn them into one token stream, split it, and draw batches."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ember.core.errors import BadRequest
from ember.core.templates import CHATML, render
from ember.train.tokenizer import IM_START, Tokenizer

SUFFIXES = (".txt", ".md", ".jsonl")


def bundled_corpora() -> dict[str, Path]:
    """The public-domain texts that ship with ember (package data), by the name --data knows them by."""
    folder = resources.files(__package__).joinpath("corpora")
    # ember is installed as plain files, never zipped, so each resource is a real file whose path a checkpoint can
    # keep for --resume.
    return {f.name.removesuffix(".txt"): Path(str(f)) for f in folder.iterdir() if f.name.endswith(".txt")}


def data_path(value: str | Path) -> Path:
    """A --data value: an existing file or folder (made absolute), or else the name of a bundled corpus."""
    path = Path(value)
    if path.is_file() or path.is_dir():
        return path.resolve()
    corpora = bundled_corpora()
    if str(value) in corpora:
        return corpora[str(value)]
    raise BadRequest(f"no file or folder at {value}, and no bundled corpus of that name; --data takes text files "
                     f"(.txt, .md, .jsonl) or folders that exist, or a bundled corpus: {', '.join(sorted(corpora))}")


def find_files(values: list[str | Path]) -> list[Path]:
    files = []
    for p in map(data_path, values):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        else:
            files.append(p)
    if not files:
        raise BadRequest(f"no .txt, .md or .jsonl files under {', '.join(map(str, values))}")
    return files


def render_chat(messages: list[dict]) -> str:
    """A conversation as --chat trains on it: ChatML, the template the exported GGUF carries."""
    return render(CHATML, messages, add_generation_prompt=False)


def jsonl_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a .jsonl file's text; a bad line is named."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRequest(f"{path} line {n}: not JSON ({e.msg})") from None


def _jsonl_documents(path: Path, chat: bool) -> list[str]:
    docs = []
    for n, record in jsonl_records(path, path.read_text(encoding="utf-8")):
        messages = record.get("messages") if isinstance(record, dict) else None
        if isinstance(messages, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                               for m in messages):
            docs.append(render_chat(messages) if chat else "\n".join(m["content"] for m in messages))
        elif isinstance(record, dict) and isinstance(record.get("text"), str) and not chat:
            docs.append(record["text"])
        else:
            want = '{"messages": [{"role": …, "content": …}, …]}' if chat else '{"text": …} or {"messages": [...]}'
            raise BadRequest(f"{path} line {n}: expected {want}")
    return docs


def read_documents(values: list[str | Path], chat: bool = False) -> list[str]:
    """One string per document: a whole .txt/.md file, or one .jsonl record. --chat takes only .jsonl messages.

    Each value is a file, a folder, or a bundled corpus's name (see data_path)."""
    docs = []
    for f in find_files(values):
        if f.suffix.lower() == ".jsonl":
            docs += _jsonl_documents(f, chat)
        elif chat:
            raise BadRequest(f"--chat trains on .jsonl files of {{\"messages\": [...]}}; {f} is not one")
        else:
            try:
                docs.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise BadRequest(f"{f} is not UTF-8 text") from None
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise BadRequest("the training data is empty")
    return docs


def tokenize(docs: list[str], tok: Tokenizer) -> torch.Tensor:
    """All documents as one stream, each followed by the end-of-text token."""
    ids = []
    for doc in tok.encode_batch(docs):
        ids += doc
        ids.append(tok.eot)
    return torch.tensor(ids, dtype=torch.int32 if tok.vocab_size < 2**31 else torch.int64)


def assistant_targets(ids: torch.Tensor, tok: Tokenizer) -> torch.Tensor:
    """--chat learns only the assistant's replies, each up to and including its <|im_end|> (so the model learns to
    stop): it is taught to answer, not to write the user's side. Every other position's target is -100 (ignored)."""
    header = tok.encode(f"{IM_START}assistant\n")
    targets = torch.full_like(ids, -100)
    seq = ids.tolist()
    for start in (ids == tok.im_start).nonzero().flatten().tolist():
        if seq[start:start + len(header)] != header:
            continue
        begin = start + len(header)
        end = next((j + 1 for j in range(begin, len(seq)) if seq[j] == tok.im_end), len(seq))
        targets[begin:end] = ids[begin:end]
    return targets


@dataclass
class Stream:
    ids: torch.Tensor
    targets: torch.Tensor  # what each position teaches: its own id, or -100 where nothing is learned


@dataclass
class Splits:
    train: Stream
    val: Stream


def split(ids: torch.Tensor, ctx: int, targets: torch.Tensor | None = None, val_fraction: float = 0.1) -> Splits:
    """The last tenth is held out, as nanoGPT does; windows shrink when the text is short."""
    targets = ids if targets is None else targets
    n_val = int(len(ids) * val_fraction)
    if len(ids) - n_val < 2 * ctx + 2 or n_val < 2:
        raise BadRequest(f"the data is {len(ids)} tokens, too little for a context of {ctx}: add text or lower --ctx")
    cut = len(ids) - n_val
    return Splits(Stream(ids[:cut], targets[:cut]), Stream(ids[cut:], targets[cut:]))


def batch(data: Stream, batch_size: int, ctx: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows: inputs, and as targets what the next position teaches."""
    ctx = min(ctx, len(data.ids) - 1)
    starts = torch.randint(len(data.ids) - ctx, (batch_size,), generator=gen).tolist()
    x = torch.stack([data.ids[s:s + ctx] for s in starts]).long()
    y = torch.stack([data.targets[s + 1:s + ctx + 1] for s in starts]).long()
    return x, y
