"""Chunks that follow a document's structure, each an exact span of `Document.text`.

A chunk never crosses a section (a heading or a PDF page), so its heading path and page are true of all of it and a
citation can name them. Inside a section whole paragraphs are packed up to a token budget, since a paragraph is the
unit an author wrote about one thing; only a paragraph too long for one chunk is split, at sentence ends (English and
Russian), then at line breaks, then between words. Neighbouring chunks of a section overlap by a sentence or two, so
that a fact on a border is whole in at least one of them. `doc.text[chunk.start:chunk.end] == chunk.text` always holds:
citations point back at the characters a chunk came from.
"""

import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from ember.rag.readers import Document

TINY = 0.15  # a chunk whose new text is under this share of the budget is too small to stand alone

# How a boundary (a run of whitespace) may end a chunk, best last.
WORD, LINE, SENTENCE, PARAGRAPH, END = range(5)

# approx_tokens, calibrated on the 24 documents of tests/rag_corpus (paragraphs over 200 characters), measured as
# real tokens / estimate:
#   multilingual-e5 (XLM-R SentencePiece): English 0.89 (95th percentile 1.11), Russian 0.89 (1.10)
#   all-MiniLM-L6-v2 (BERT WordPiece, English vocabulary): English 0.79 (0.88); Russian 2.44 (2.88): its vocabulary
#   has Cyrillic letters but hardly any Russian words, so a Russian word is ~5.1 pieces, nearly one per letter.
# The estimate follows the multilingual model, the default for documents: an English-only model makes no useful
# vector of Russian text at any length, and a Russian chunk of 200 estimated tokens (~490 of MiniLM's) still fits its
# 512-token window. Pass the model's own tokenizer as `count_tokens` where an exact count matters.
LATIN_WORD = 1.3  # tokens per word: English words are mostly whole pieces, names and numbers split
CYRILLIC_WORD = 1.7  # XLM-R splits Russian words more (endings, rarer stems)
CHARS_PER_PIECE = 4  # a long word (a code, an identifier, a URL's part) costs about a piece per 4 characters
_UNIT = 20  # costs are counted in twentieths of a token: sums are exact integers, and can be kept as prefix sums
_PIECES = re.compile(r"\w+|[^\w\s]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_IDEOGRAPHS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")

# Sentence ends: . ! ? … (and runs of them), then closing quotes or brackets, before whitespace.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'»”’)\]]*$")
_CLOSERS = set(".!?…\"'»”’)]")
# What may open a sentence: a capital (Latin or Cyrillic), a digit, an opening quote or bracket, a dash (Russian
# dialogue), a list bullet. A lowercase letter after a full stop is an abbreviation's ("с. ш.", "e.g. the").
_SENTENCE_START = re.compile(r"[\"'«“„‘(\[—–\-•*]?\s?[A-ZА-ЯЁ0-9]|[—–•]")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "vs", "fig", "no", "vol", "pp", "approx", "inc", "ltd", "jr", "sr",
    "т", "д", "г", "гг", "ул", "им", "см", "стр", "рис", "тыс", "млн", "млрд", "руб", "коп", "напр", "др", "проф",
}


@dataclass(frozen=True)
class Chunk:
    text: str  # what is embedded and searched
    headings: tuple[str, ...]
    page: int | None
    start: int  # the span of `text` in Document.text
    end: int


def approx_tokens(text: str) -> int:
    """About how many tokens a BERT or XLM-R tokenizer makes of `text` (calibration above); cheap, no model needed:
    1.3 a word, 1.7 a word with Cyrillic in it, a piece per 4 characters of a longer word, 1 a punctuation mark."""
    return -(-sum(map(_cost, _PIECES.findall(text))) // _UNIT)


def _cost(piece: str) -> int:
    """A word's or a mark's share of `approx_tokens`, in `_UNIT`s."""
    if len(piece) == 1 and not piece.isalnum() and piece != "_":
        return _UNIT  # a punctuation mark is a token of its own
    if not piece.isascii() and _IDEOGRAPHS.search(piece):
        return len(piece) * _UNIT  # Chinese, Japanese and Korean: no spaces, about a token a character
    per_word = CYRILLIC_WORD if not piece.isascii() and _CYRILLIC.search(piece) else LATIN_WORD
    return max(round(per_word * _UNIT), len(piece) * round(_UNIT / CHARS_PER_PIECE))


def heading_label(chunk: Chunk) -> str:
    """The heading path as a citation shows it: "Guide › Billing › Refunds"."""
    return " › ".join(chunk.headings)


def context_line(doc: Document, chunk: Chunk) -> str:
    """The document's title and the chunk's heading path, for putting before a chunk when it is embedded and
    searched: a question names the subject ("Port Calloway's water rules") that often only the title carries."""
    return " › ".join(dict.fromkeys(part for part in (doc.title, *chunk.headings) if part))


def chunk_document(doc: Document, *, max_tokens: int = 200, overlap_tokens: int = 40,
                   count_tokens: Callable[[str], int] = approx_tokens) -> list[Chunk]:
    """The document's chunks in reading order; each within `max_tokens` by `count_tokens`, except a single word
    longer than that, which is kept whole."""
    if max_tokens < 1 or overlap_tokens < 0:
        raise ValueError(f"max_tokens must be at least 1 and overlap_tokens at least 0, not {max_tokens} and "
                         f"{overlap_tokens}")
    chunks: list[Chunk] = []
    for section in doc.sections:
        # An overlap of over half the budget would make chunks mostly repeats of each other.
        splitter = _SectionSplitter(section.text, max_tokens, min(overlap_tokens, max_tokens // 2), count_tokens)
        for start, end in splitter.spans():
            chunks.append(Chunk(section.text[start:end], section.headings, section.page, section.start + start,
                                section.start + end))
    return chunks


class _SectionSplitter:
    """Chunk spans (offsets in one section's text) by the rules in the module docstring."""

    def __init__(self, text: str, max_tokens: int, overlap_tokens: int, count: Callable[[str], int]):
        self.text = text
        self.max = max_tokens
        self.overlap = overlap_tokens
        if count is approx_tokens:
            # The estimate is a sum over words and marks, and a chunk never cuts one: prefix sums count any chunk
            # at once, where counting its text would take a dozen passes over it for every chunk.
            self.piece_starts = array("q")
            self.costs = array("q", [0])
            total = 0
            for piece in _PIECES.finditer(text):
                total += _cost(piece.group())
                self.piece_starts.append(piece.start())
                self.costs.append(total)
            self.count = self._count_by_sums
        else:
            self.count_text = count
            self.count = self._count_text
        self.tiny = TINY * max_tokens
        # No tokenizer makes fewer than one token of 32 characters: a span longer than this is over the budget
        # without counting it, which keeps a huge paragraph (a CSV file, a log) from being counted whole per chunk.
        self.reach = max_tokens * 32
        stop = len(text.rstrip())
        # Every boundary, a run of whitespace: where the text before it ends, where the text after it starts, and
        # what kind of end it makes; the last is the end of the section.
        self.ends: list[int] = []
        self.starts: list[int] = []
        self.kinds: list[int] = []
        for run in re.finditer(r"\s+", text):
            if run.start() > 0 and run.end() <= stop:
                self.ends.append(run.start())
                self.starts.append(run.end())
                self.kinds.append(self._kind(run))
        self.ends.append(stop)
        self.starts.append(stop)
        self.kinds.append(END)
        # For each boundary, the index of the first paragraph end at or after it.
        self.paragraph_end = [0] * len(self.kinds)
        following = len(self.kinds) - 1
        for i in range(len(self.kinds) - 1, -1, -1):
            if self.kinds[i] >= PARAGRAPH:
                following = i
            self.paragraph_end[i] = following

    def _kind(self, run: re.Match) -> int:
        if run.group().count("\n") >= 2:
            return PARAGRAPH
        if self.text[run.start() - 1] in _CLOSERS and self._sentence_ends_at(run.start()) \
                and _SENTENCE_START.match(self.text, run.end()):
            return SENTENCE
        return LINE if "\n" in run.group() else WORD

    def _sentence_ends_at(self, pos: int) -> bool:
        before = self.text[max(0, pos - 40):pos]
        if not _SENTENCE_END.search(before):
            return False
        word = re.search(r"(\w+)[.]$", before)
        if word:
            token = word.group(1)
            if token.lower() in _ABBREVIATIONS or (len(token) == 1 and token.isupper()):
                return False  # "Dr. Watson", "ул. Ленина", "А. С. Пушкин"
            line_start = before.rfind("\n") + 1
            if token.isdigit() and not before[line_start:word.start()].strip(" -*•"):
                return False  # the number of a numbered list's item
        return True

    def _count_text(self, start: int, end: int) -> int:
        return self.count_text(self.text[start:end])

    def _count_by_sums(self, start: int, end: int) -> int:
        inside = self.costs[bisect_left(self.piece_starts, end)] - self.costs[bisect_left(self.piece_starts, start)]
        return -(-inside // _UNIT)

    def fits(self, start: int, end: int) -> bool:
        return end - start <= self.reach and self.count(start, end) <= self.max

    def spans(self) -> list[tuple[int, int]]:
        if not self.text.strip():
            return []
        spans: list[tuple[int, int, int]] = []  # (start, end, where its new text starts)
        fresh = len(self.text) - len(self.text.lstrip())
        start = fresh
        while fresh < self.ends[-1]:
            start, i = self._pick_end(start, fresh)
            end = self.ends[i]
            spans.append((start, end, fresh))
            fresh = self.starts[i]
            start = self._overlap_start(start, end, fresh, self.kinds[i])
        self._merge_tiny_tail(spans)
        return [(start, end) for start, end, _ in spans]

    def _pick_end(self, start: int, fresh: int) -> tuple[int, int]:
        """Where the chunk whose new text begins at `fresh` starts (its overlap may give way) and the index of the
        boundary that ends it."""
        first = bisect_right(self.ends, fresh)  # the end of the first new word
        if not self.fits(fresh, self.ends[first]):
            return fresh, first  # a single word over the budget: kept whole, alone
        # A paragraph that fits in a chunk by itself is not split to make room for the overlap: the overlap gives way.
        # (The rest of a paragraph already split keeps its overlap: it is not whole anyway.)
        paragraph = self.ends[self.paragraph_end[first]]
        before = bisect_left(self.starts, fresh)
        paragraph_opens = before == len(self.starts) or self.starts[before] != fresh or self.kinds[before] >= PARAGRAPH
        if paragraph_opens and self.fits(fresh, paragraph):
            while start < fresh and not self.fits(start, paragraph):
                start = self._later_start(start, fresh)
        while start < fresh and not self.fits(start, self.ends[first]):
            start = self._later_start(start, fresh)
        last = self._farthest_fit(start, first)
        if self.kinds[last] == END:
            return start, last
        for kind in (PARAGRAPH, SENTENCE, LINE):
            # The latest boundary of this kind, unless what it would end is too little to be a chunk.
            best = max((i for i in range(first, last + 1) if self.kinds[i] >= kind), default=None)
            if best is None or self.count(fresh, self.ends[best]) < self.tiny:
                continue
            # Ending at a paragraph keeps the next one whole only if it fits in a chunk by itself; one that will be
            # split anyway may as well begin filling this chunk.
            if kind == PARAGRAPH and not self.fits(self.starts[best], self.ends[self.paragraph_end[best + 1]]):
                continue
            return start, best
        return start, last

    def _farthest_fit(self, start: int, first: int) -> int:
        """The index of the last boundary from `first` (which fits) that ends a chunk from `start` within budget."""
        limit = max(first, bisect_right(self.ends, start + self.reach) - 1)
        # Galloping, then halving: every count is of about a chunk's text, not of all that `reach` allows.
        low, step = first, 1
        while low + step <= limit and self.fits(start, self.ends[low + step]):
            low += step
            step *= 2
        high = min(low + step - 1, limit)
        while low < high:
            middle = (low + high + 1) // 2
            if self.fits(start, self.ends[middle]):
                low = middle
            else:
                high = middle - 1
        return low

    def _later_start(self, start: int, fresh: int) -> int:
        """The next sentence after `start` that a chunk may begin with, or `fresh` when there is none before it."""
        i = bisect_right(self.starts, start)
        while i < len(self.starts) and self.starts[i] < fresh and self.kinds[i] < SENTENCE:
            i += 1
        return min(self.starts[i], fresh) if i < len(self.starts) else fresh

    def _overlap_start(self, start: int, end: int, fresh: int, ended: int) -> int:
        """Where the chunk after (start, end) begins: at the earliest sentence of it whose tail fits in the overlap;
        failing that, when it ended inside a sentence, at a line or else a word; failing all, at `fresh`, its new
        text."""
        if not self.overlap or ended == END:
            return fresh
        inside = range(bisect_right(self.starts, start), bisect_right(self.starts, end - 1))
        tiers = [SENTENCE] + ([LINE] if ended < SENTENCE else []) + ([WORD] if ended < LINE else [])
        for lowest in tiers:
            best = None
            for i in reversed(inside):
                if self.kinds[i] < lowest:
                    continue
                if self.count(self.starts[i], end) > self.overlap:
                    break
                best = self.starts[i]
            if best is not None:
                return best
        return fresh

    def _merge_tiny_tail(self, spans: list[tuple[int, int, int]]) -> None:
        """A last chunk with too little new text joins the one before when both fit in the budget together; when
        they do not and even with its overlap it is too small, it reaches back into the one before just far enough."""
        if len(spans) < 2:
            return
        start, end, fresh = spans[-1]
        if self.count(fresh, end) >= self.tiny:
            return
        before = spans[-2]
        if self.fits(before[0], end):
            spans[-2:] = [(before[0], end, before[2])]
            return
        if self.count(start, end) >= self.tiny:
            return
        inside = range(bisect_right(self.starts, before[0]), bisect_right(self.starts, start))
        for lowest in (SENTENCE, WORD):
            for i in reversed(inside):
                if self.kinds[i] < lowest:
                    continue
                if not self.fits(self.starts[i], end):
                    break
                if self.count(self.starts[i], end) >= self.tiny:
                    spans[-1] = (self.starts[i], end, fresh)
                    return
