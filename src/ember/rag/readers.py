"""Reading documents into text with its structure: the heading path above every passage and, for a PDF, its page.

Retrieval cites where an answer came from ("Guide › Billing › Refunds, page 3"), and chunking must not glue the end
of one section to the start of the next, so every reader turns its format into the same shape: a `Document` whose
text is its `Section`s joined by blank lines, each section carrying its heading path and page. A section opens with
its own heading line, so the words of a heading are embedded and searched together with the passage under it.

Whatever goes wrong inside a parser (pypdf, python-docx, zipfile and BeautifulSoup raise many kinds of exceptions on a
damaged file) comes out as `UnreadableDocument`, so that one bad file in a folder is reported and the rest are read.
"""

import io
import logging
import re
import statistics
import textwrap
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from math import hypot
from pathlib import Path

MAX_BYTES = 50 * 1024 * 1024
# pypdf logs what it repairs or cannot ("EOF marker not found") straight to the terminal; a file it cannot read
# becomes an UnreadableDocument with the reason, and one it repaired needs no word.
logging.getLogger("pypdf").setLevel(logging.ERROR)

SUFFIXES: dict[str, str] = {
    ".txt": "text", ".text": "text", ".log": "text", ".rst": "text", ".csv": "text",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    # Read by OCR (English and Russian): their text, page by page for a multi-page TIFF.
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image", ".webp": "image",
    ".bmp": "image", ".gif": "image",
    # Transcribed by speech-to-text, in sections of about a minute whose heading is their time in the recording.
    ".wav": "audio", ".mp3": "audio", ".m4a": "audio", ".ogg": "audio", ".oga": "audio", ".opus": "audio",
    ".flac": "audio", ".webm": "audio",
}
MAX_AUDIO_BYTES = 1024 * 1024 * 1024  # an hour of WAV is ~600 MB; its text is small
AUDIO_SECTION_SECONDS = 60.0

# What turns an audio file into timed text: (start s, end s, text) segments (the runtime's Whisper).
Transcribe = Callable[[Path], list[tuple[float, float, str]]]


class UnreadableDocument(ValueError):
    """A file that cannot be read as a document; `reason` says why and what to do, `str()` names the file too."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class Section:
    text: str  # whitespace-tidied, paragraphs separated by "\n\n"; opens with its heading's line if it starts at one
    headings: tuple[str, ...]  # the heading path above it, outermost first
    page: int | None  # 1-based PDF page, else None
    start: int  # offset of `text` in Document.text


@dataclass(frozen=True)
class Document:
    path: Path
    kind: str  # "text", "markdown", "html", "pdf", "docx", "image" or "audio"
    text: str  # the sections joined by "\n\n": what chunk and citation spans index into
    sections: list[Section]
    title: str | None


def supported(path: Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def read_document(path: Path, *, max_bytes: int = MAX_BYTES, transcribe: Transcribe | None = None) -> Document:
    """The text and structure of the file at `path`; raises `UnreadableDocument` and nothing else."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UnreadableDocument(path, f"ember cannot read '{path.suffix or 'no suffix'}' files; convert it to one of "
                                       f"{', '.join(sorted(SUFFIXES))}")
    if kind == "audio":
        return _read_audio(path, transcribe)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UnreadableDocument(path, "is not a file")
        if size > max_bytes:
            raise UnreadableDocument(path, f"is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit for "
                                           "one document; split it into smaller files")
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableDocument(path, f"cannot be opened: {e.strerror or e}") from e
    if not data.strip():
        raise UnreadableDocument(path, "is empty: there is no text to add")
    builder = _Builder()
    try:
        title = _READERS[kind](path, data, builder)
    except UnreadableDocument:
        raise
    except Exception as e:  # a damaged file can make a parser raise almost anything
        raise UnreadableDocument(path, f"is damaged or not really a {kind} file ({type(e).__name__}: {e}); "
                                       "open it in its program and save it again") from e
    doc = builder.document(path, kind, title)
    if not doc.sections:
        raise UnreadableDocument(path, "has no text to add: only markup, pictures or site menus were found")
    return doc


# -- the shape every reader fills -----------------------------------------------------------------------------------

_LINE_BREAKS = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f\u00ad\u200b\u2060\ufeff]")  # incl. soft hyphens, zero-width spaces
_SPACES = re.compile(r"[^\S\n]+")


def tidy(text: str, preformatted: bool = False) -> str:
    """Runs of spaces made one, lines trimmed, at most one blank line in a row; code keeps its indentation."""
    lines = _LINE_BREAKS.split(_CONTROL.sub("", text))
    if preformatted:
        lines = textwrap.dedent("\n".join(line.expandtabs(4).rstrip() for line in lines)).split("\n")
    else:
        lines = [_SPACES.sub(" ", line).strip() for line in lines]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def one_line(text: str) -> str:
    return " ".join(_CONTROL.sub("", text).split())


@dataclass
class _Draft:
    headings: tuple[str, ...]
    page: int | None
    blocks: list[str] = field(default_factory=list)
    has_body: bool = False  # holds more than its own heading line


class _Builder:
    """Collects headings, pages and blocks in reading order; a heading or a new page starts a new section."""

    def __init__(self) -> None:
        self.drafts = [_Draft((), None)]
        self.path: list[tuple[int, str]] = []  # (level, heading) from the outermost in
        self.page: int | None = None
        self.first_heading: str | None = None
        self._in_lines = False

    def _start(self) -> _Draft:
        self._in_lines = False
        draft = _Draft(tuple(text for _, text in self.path), self.page)
        self.drafts.append(draft)
        return draft

    def heading(self, level: int, text: str) -> None:
        text = one_line(text)
        if not text:
            return
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, text))
        self.first_heading = self.first_heading or text
        self._start().blocks.append(text)

    def span(self, label: str) -> None:
        """A section under a label of its own (an audio section's time), not a heading of the text."""
        self.path = [(1, label)]
        self._start()

    def new_page(self, page: int) -> None:
        self.page = page
        self._start()

    def block(self, text: str, preformatted: bool = False) -> None:
        text = tidy(text, preformatted)
        if text:
            draft = self.drafts[-1]
            draft.blocks.append(text)
            draft.has_body = True
            self._in_lines = False

    def line(self, text: str) -> None:
        """A list item or a table row: consecutive lines make one block, one per line."""
        text = one_line(text)
        if not text:
            return
        draft = self.drafts[-1]
        if self._in_lines:
            draft.blocks[-1] += "\n" + text
        else:
            draft.blocks.append(text)
        draft.has_body = True
        self._in_lines = True

    def end_lines(self) -> None:
        self._in_lines = False

    def table(self, rows: Iterable[str]) -> None:
        """A table's rows (cells already joined), one block of its own."""
        self.end_lines()
        for row in rows:
            self.line(row)
        self.end_lines()

    def document(self, path: Path, kind: str, title: str | None) -> Document:
        sections: list[Section] = []
        offset = 0
        # A heading with nothing under it before the next heading is kept only in its children's heading paths.
        for draft in (d for d in self.drafts if d.has_body):
            text = "\n\n".join(draft.blocks)
            if sections:
                offset += 2
            sections.append(Section(text, draft.headings, draft.page, offset))
            offset += len(text)
        return Document(path, kind, "\n\n".join(s.text for s in sections), sections, title)


# -- plain text -------------------------------------------------------------------------------------------------------

_CYRILLIC_WORD = re.compile(r"^[\u0400-\u04ff]+$")
_LETTERS_WORD = re.compile(r"[^\W\d_]+")


def decode_text(data: bytes) -> str:
    """Bytes of a text file as text: UTF-8 (with or without a BOM), UTF-16 with a BOM, else a legacy 8-bit code page."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Russian files from Windows tools are still often in cp1251. Any byte string decodes as cp1251, so it is taken
    # only when the result reads as Russian (whole Cyrillic words, not Cyrillic letters inside Latin ones, which is
    # what a Western file in cp1252 turns into); otherwise cp1252, which is latin-1 plus Windows' quotes and dashes.
    try:
        as_cyrillic = data.decode("cp1251")
        words = _LETTERS_WORD.findall(as_cyrillic)
        cyrillic = sum(1 for w in words if _CYRILLIC_WORD.match(w))
        mixed = sum(1 for w in words if not w.isascii() and not _CYRILLIC_WORD.match(w))
        if cyrillic > 2 * mixed:
            return as_cyrillic
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_text(path: Path, data: bytes, builder: _Builder) -> str | None:
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnreadableDocument(path, "looks like a binary file, not text; give it the suffix of its real format")
    for paragraph in re.split(r"\n[^\S\n]*\n", decode_text(data).replace("\r\n", "\n").replace("\r", "\n")):
        builder.block(paragraph)
    return None


# -- Markdown ---------------------------------------------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)


def _read_markdown(path: Path, data: bytes, builder: _Builder) -> str | None:
    from markdown_it import MarkdownIt

    text = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    title = None
    # YAML front matter would parse as a rule and a setext heading; its title is the document's title.
    front = _FRONT_MATTER.match(text)
    if front and re.search(r"^\w[\w-]*\s*:", front.group(1), re.M):
        found = re.search(r"^title\s*:\s*(.+)$", front.group(1), re.M | re.I)
        title = found.group(1).strip().strip("\"'") if found else None
        text = text[front.end():]
    tokens = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).parse(text)
    first_h1 = None
    item_depth = 0
    marker: str | None = None  # for the first paragraph of a list item
    rows: list[list[str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        kind = token.type
        if kind == "heading_open":
            heading = _markdown_inline(tokens[i + 1])
            builder.heading(int(token.tag[1]), heading)
            if token.tag == "h1" and first_h1 is None:
                first_h1 = one_line(heading)
            i += 3
            continue
        if kind == "list_item_open":
            item_depth += 1
            marker = f"{token.info}{token.markup} " if token.info else "- "
        elif kind == "list_item_close":
            item_depth -= 1
        elif kind in ("bullet_list_close", "ordered_list_close") and item_depth == 0:
            builder.end_lines()
        elif kind == "inline" and tokens[i - 1].type == "paragraph_open":
            paragraph = _markdown_inline(token)
            if item_depth:
                builder.line((marker or "") + paragraph)
                marker = None
            else:
                builder.block(paragraph)
        elif kind in ("fence", "code_block"):
            builder.block(token.content, preformatted=True)
        elif kind == "html_block":
            builder.block(_html_fragment_text(token.content))
        elif kind == "table_open":
            rows = []
        elif kind == "tr_open":
            rows.append([])
        elif kind == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
            rows[-1].append(one_line(_markdown_inline(token)))
        elif kind == "table_close":
            builder.table(" | ".join(cells) for cells in rows)
        i += 1
    return title or first_h1


def _markdown_inline(token) -> str:
    """An inline token as plain text: emphasis and link markup dropped, link text, image alt text and code kept."""
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(_markdown_inline(child))
    return "".join(parts)


def _html_fragment_text(html: str) -> str:
    from bs4 import BeautifulSoup

    return BeautifulSoup(html, "html.parser").get_text(" ")


# -- HTML -------------------------------------------------------------------------------------------------------------

# Site furniture rather than the page's own text: menus, banners, sidebars, forms, scripts.
_DROP = {"script", "style", "nav", "header", "footer", "aside", "form", "noscript", "template", "head", "button",
         "select", "svg", "iframe", "object"}
_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
_BLOCKS = {"p", "div", "section", "article", "main", "body", "html", "blockquote", "dl", "dt", "dd", "figure",
           "figcaption", "address", "details", "summary", "fieldset", "center", "hr", "caption", "ul", "ol", "menu"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


def _read_html(path: Path, data: bytes, builder: _Builder) -> str | None:
    from bs4 import BeautifulSoup
    from bs4.dammit import EncodingDetector

    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    text = None
    if declared:
        try:
            text = data.decode(declared, errors="replace")
        except LookupError:  # a charset Python does not know
            text = None
    soup = BeautifulSoup(text if text is not None else decode_text(data), "html.parser")
    title_tag = soup.find("title")
    title = one_line(title_tag.get_text(" ")) if title_tag else ""
    _HtmlWalker(builder).walk(soup)
    return title or builder.first_heading


class _HtmlWalker:
    """Walks the tree in reading order, gathering inline text into blocks; headings, tables and lists apart."""

    def __init__(self, builder: _Builder):
        self.builder = builder
        self.pending: list[str] = []
        self.items = 0  # how many <li> we are inside
        self.marker: str | None = None

    def flush(self) -> None:
        text = "".join(self.pending)
        self.pending = []
        if self.items:
            for line in text.split("\n"):
                if line.strip():
                    self.builder.line((self.marker or "") + line)
                    self.marker = None
        else:
            self.builder.block(text)

    def walk(self, node) -> None:
        from bs4.element import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, Comment | Declaration | Doctype | ProcessingInstruction):
                    self.pending.append(re.sub(r"\s+", " ", str(child)))
                continue
            if not isinstance(child, Tag) or self._furniture(child):
                continue
            name = child.name
            if name in _HEADINGS:
                self.flush()
                self.builder.heading(int(name[1]), child.get_text(" "))
            elif name == "table":
                self.flush()
                self._table(child)
            elif name == "pre":
                self.flush()
                self.builder.block(child.get_text(), preformatted=True)
            elif name == "br":
                self.pending.append("\n")
            elif name == "li":
                self.flush()
                self.items += 1
                self.marker = "- "
                self.walk(child)
                self.flush()
                self.items -= 1
            elif name in _BLOCKS:
                self.flush()
                self.walk(child)
                self.flush()
                if name in ("ul", "ol", "menu", "dl") and not self.items:
                    self.builder.end_lines()
            else:
                self.walk(child)

    @staticmethod
    def _furniture(tag) -> bool:
        if tag.name in ("header", "footer"):
            # An article's own header holds its title: only the page's banner and footer are furniture.
            return tag.find_parent(["article", "main"]) is None
        if tag.name in _DROP or tag.get("role") in _DROP_ROLES:
            return True
        return tag.has_attr("hidden") or tag.get("aria-hidden") == "true"

    def _table(self, table) -> None:
        caption = table.find("caption")
        if caption:
            self.builder.block(caption.get_text(" "))
        # A nested table's rows are left to its cell's text.
        rows = [tr for tr in table.find_all("tr") if tr.find_parent("table") is table]
        self.builder.table(" | ".join(one_line(cell.get_text(" ")) for cell in tr.find_all(["td", "th"],
                                                                                        recursive=False))
                           for tr in rows)


# -- PDF --------------------------------------------------------------------------------------------------------------


@dataclass
class _PdfLine:
    text: str
    size: float  # font size in points, as drawn
    y: float | None  # baseline height on the page, None where the PDF did not say
    bold: bool


def _read_pdf(path: Path, data: bytes, builder: _Builder) -> str | None:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    if b"%PDF" not in data[:1024]:
        raise UnreadableDocument(path, "is not a PDF (no %PDF header); give it the suffix of its real format")
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")  # many PDFs are encrypted only to restrict printing, with an empty password
        except DependencyError as e:
            raise UnreadableDocument(path, "is encrypted with AES, which needs the 'cryptography' package: install it "
                                           "(pip install cryptography) or save a copy without encryption") from e
        if not opened:
            raise UnreadableDocument(path, "is password-protected; save a copy without the password and add that")
    pages: list[list[_PdfLine]] = []
    failure: Exception | None = None
    for page in reader.pages:
        try:
            pages.append(_pdf_page_lines(page))
        except Exception as e:  # one damaged page: the others are still worth reading
            pages.append([])
            failure = failure or e
    if failure is not None and not any(pages):
        raise failure
    if not any(line.text.strip() for lines in pages for line in lines):
        # A scanned (image-only) PDF: its pages are rendered and read by OCR.
        _read_ocr(path, data, builder)
        return _pdf_title(reader) or None
    _drop_running_lines(pages)
    body = _body_size(pages)
    heading_sizes = sorted({round(line.size * 2) / 2 for lines in pages for line in lines
                            if _pdf_heading(line, body)}, reverse=True)
    level_of = {size: min(rank + 1, 6) for rank, size in enumerate(heading_sizes)}
    step = _line_step(pages, body)
    for number, lines in enumerate(pages, 1):
        builder.new_page(number)
        _pdf_page(lines, builder, body, level_of, step)
    return _pdf_title(reader) or builder.first_heading


def _pdf_title(reader) -> str:
    try:
        return one_line(str(reader.metadata.title or "")) if reader.metadata else ""
    except Exception:  # damaged metadata: the text is what matters
        return ""


_BOLD_FONT = re.compile(r"bold|black|heavy|semibold|demi", re.I)


def _pdf_page_lines(page) -> list[_PdfLine]:
    """The page's text as pypdf lays it out, a line at a time, with each line's font size and height."""
    lines: list[_PdfLine] = []
    parts: list[str] = []
    sizes: Counter[float] = Counter()
    bold: Counter[bool] = Counter()
    where: list[float | None] = [None]

    def visit(text: str, cm, tm, font_dict, font_size) -> None:
        pieces = text.split("\n")
        for n, piece in enumerate(pieces):
            if n:
                close()
            if piece.strip():
                m = _multiply(tm, cm) if tm and cm else None
                scale = hypot(m[2], m[3]) if m else 1.0
                sizes[round(float(font_size) * (scale or 1.0), 1)] += len(piece.strip())
                font = str((font_dict or {}).get("/BaseFont", ""))
                bold[bool(_BOLD_FONT.search(font))] += len(piece.strip())
                if where[0] is None and m:
                    where[0] = float(m[5])
            parts.append(piece)

    def close() -> None:
        lines.append(_PdfLine("".join(parts), sizes.most_common(1)[0][0] if sizes else 0.0, where[0],
                              bool(bold) and bold.most_common(1)[0][0]))
        parts.clear()
        sizes.clear()
        bold.clear()
        where[0] = None

    page.extract_text(visitor_text=visit)
    close()
    return [line for line in lines if line.text.strip() or line.y is None]


def _multiply(m, n) -> list[float]:
    return [m[0] * n[0] + m[1] * n[2], m[0] * n[1] + m[1] * n[3], m[2] * n[0] + m[3] * n[2],
            m[2] * n[1] + m[3] * n[3], m[4] * n[0] + m[5] * n[2] + n[4], m[4] * n[1] + m[5] * n[3] + n[5]]


def _running_key(line: _PdfLine) -> str:
    return re.sub(r"\d+", "#", one_line(line.text)).casefold()


def _drop_running_lines(pages: list[list[_PdfLine]]) -> None:
    """Removes running headers and footers ("Handbook · page 2 of 3"): the same line, numbers aside, at the top or
    bottom of at least half the pages. They would otherwise sit inside the chunks of every page."""
    if len(pages) < 2:
        return
    body = _body_size(pages)

    def edges(lines: list[_PdfLine]) -> list[_PdfLine]:
        texts = [line for line in lines if line.text.strip()]
        return [line for line in texts[:2] + texts[-2:] if line.size <= body + 0.5]

    seen = Counter(key for lines in pages for key in {_running_key(line) for line in edges(lines)})
    running = {key for key, count in seen.items() if count >= 2 and count * 2 >= len(pages)}
    for lines in pages:
        doomed = {id(line) for line in edges(lines) if _running_key(line) in running}
        lines[:] = [line for line in lines if id(line) not in doomed]


def _body_size(pages: Iterable[list[_PdfLine]]) -> float:
    weights: Counter[float] = Counter()
    for lines in pages:
        for line in lines:
            weights[round(line.size * 2) / 2] += len(line.text.strip())
    return weights.most_common(1)[0][0] if weights else 0.0


def _pdf_heading(line: _PdfLine, body: float) -> bool:
    """A short line in a clearly bigger font than the body's, or in a bold one a little bigger."""
    text = line.text.strip()
    bigger = line.size >= body * 1.25 or (line.bold and line.size >= body * 1.05)
    return body > 0 and bigger and len(text) <= 200 and any(ch.isalpha() for ch in text)


def _line_step(pages: list[list[_PdfLine]], body: float) -> float | None:
    """The usual distance between two lines of one paragraph; a bigger gap starts a new paragraph."""
    gaps = []
    for lines in pages:
        for above, below in zip(lines, lines[1:]):
            if above.y is not None and below.y is not None and not _pdf_heading(above, body) \
                    and not _pdf_heading(below, body) and above.y > below.y:
                gaps.append(above.y - below.y)
    return statistics.median(gaps) if gaps else None


def _pdf_page(lines: list[_PdfLine], builder: _Builder, body: float, level_of: dict[float, int],
              step: float | None) -> None:
    paragraph: list[str] = []
    heading: list[str] = []
    heading_size = 0.0
    previous: _PdfLine | None = None

    def emit_paragraph() -> None:
        if paragraph:
            builder.block("\n".join(paragraph))
            paragraph.clear()

    def emit_heading() -> None:
        if heading:
            builder.heading(level_of[heading_size], " ".join(heading))
            heading.clear()

    for line in lines:
        text = line.text.strip()
        if not text:
            emit_paragraph()
            previous = None
            continue
        if _pdf_heading(line, body):
            emit_paragraph()
            size = round(line.size * 2) / 2
            if not (heading and size == heading_size):  # a heading wrapped over two lines stays one heading
                emit_heading()
            heading.append(text)
            heading_size = size
        else:
            emit_heading()
            gap = (previous.y - line.y) if previous and previous.y is not None and line.y is not None else None
            if paragraph and step and gap is not None and not 0 < gap <= step * 1.3:
                emit_paragraph()
            paragraph.append(text)
        previous = line
    emit_paragraph()
    emit_heading()


# -- DOCX -------------------------------------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"^(?:heading|заголовок)\s*(\d)$", re.I)


def _read_docx(path: Path, data: bytes, builder: _Builder) -> str | None:
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise UnreadableDocument(path, "is an old-format (.doc) or password-protected Word file; save it as .docx "
                                       "without a password")
    try:
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    except zipfile.BadZipFile as e:
        raise UnreadableDocument(path, "is not a .docx file (it is not a zip archive); save it from Word as .docx") \
            from e
    if "word/document.xml" not in names:
        raise UnreadableDocument(path, "is a zip archive but not a Word document (it has no word/document.xml)")

    import docx
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    title_paragraph = None
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            builder.table(_docx_row(row) for row in item.rows)
            continue
        text = item.text
        level = _docx_heading_level(item)
        if level is not None and text.strip():
            builder.heading(level, text)
            if level == 0 and title_paragraph is None:
                title_paragraph = one_line(text)
        elif _docx_list_item(item):
            builder.line("- " + text)
        else:
            builder.block(text)
    title = document.core_properties.title
    return one_line(title) if title and title.strip() else title_paragraph or builder.first_heading


def _docx_row(row) -> str:
    cells, seen = [], set()
    for cell in row.cells:
        if id(cell._tc) not in seen:  # a merged cell repeats for every column it spans
            seen.add(id(cell._tc))
            cells.append(one_line(cell.text))
    return " | ".join(cells)


def _docx_heading_level(paragraph) -> int | None:
    """0 for Title, N for Heading N (also through a custom style based on one), else None."""
    style = paragraph.style
    for _ in range(10):  # a style's base chain; bounded against a cycle in a damaged file
        if style is None:
            break
        name = (style.name or "").strip()
        if name.lower() in ("title", "название"):
            return 0
        found = _HEADING_STYLE.match(name)
        if found:
            return int(found.group(1))
        style = style.base_style
    outline = paragraph._p.pPr.outlineLvl if paragraph._p.pPr is not None else None
    return outline.val + 1 if outline is not None and outline.val < 9 else None


def _docx_list_item(paragraph) -> bool:
    if paragraph._p.pPr is not None and paragraph._p.pPr.numPr is not None:
        return True
    name = (paragraph.style.name if paragraph.style is not None else "") or ""
    return name.lower().startswith(("list", "абзац списка"))


# -- audio: speech to text -------------------------------------------------------------------------------------------

def clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _read_audio(path: Path, transcribe: Transcribe | None) -> Document:
    from ember.core.errors import EmberError

    if transcribe is None:
        raise UnreadableDocument(path, "audio is transcribed by ember's runtime, which this reader was not given")
    try:
        if path.stat().st_size > MAX_AUDIO_BYTES:
            raise UnreadableDocument(path, f"is over the {MAX_AUDIO_BYTES >> 20} MB limit for one recording; split it")
        segments = transcribe(path)
    except OSError as e:
        raise UnreadableDocument(path, f"cannot be opened: {e.strerror or e}") from e
    except EmberError as e:
        raise UnreadableDocument(path, e.message) from e
    builder = _Builder()
    # Sections of about a minute, each under its time span: a citation then says where to listen.
    group: list[tuple[float, float, str]] = []

    def flush() -> None:
        if group:
            builder.span(f"{clock(group[0][0])}–{clock(group[-1][1])}")
            builder.block(" ".join(text.strip() for _, _, text in group))
            group.clear()

    for start, end, text in segments:
        if not text.strip():
            continue
        if group and end - group[0][0] > AUDIO_SECTION_SECONDS:
            flush()
        group.append((start, end, text))
    flush()
    doc = builder.document(path, "audio", None)
    if not doc.sections:
        raise UnreadableDocument(path, "has no speech that could be transcribed")
    return doc


# -- images (and scanned PDFs): OCR ------------------------------------------------------------------------------------

def _read_ocr(path: Path, data: bytes, builder: _Builder) -> str | None:
    from ember.core.errors import EmberError
    from ember.media.ocr import UnreadableImage, read_bytes

    try:
        pages = read_bytes(data, path.name)
    except UnreadableImage as e:  # its message names the file, which UnreadableDocument does too
        raise UnreadableDocument(path, e.reason) from e
    except EmberError as e:  # Tesseract missing: what to install
        raise UnreadableDocument(path, e.message) from e
    for page in pages:
        if len(pages) > 1 or path.suffix.lower() == ".pdf":
            builder.new_page(page.number)
        for paragraph in re.split(r"\n\s*\n", page.text):
            builder.block(paragraph)
    return None


_READERS: dict[str, Callable[[Path, bytes, _Builder], str | None]] = {
    "text": _read_text,
    "markdown": _read_markdown,
    "html": _read_html,
    "pdf": _read_pdf,
    "docx": _read_docx,
    "image": _read_ocr,
}
