#!/usr/bin/env python3
"""Build the retrieval evaluation corpus: tests/rag_corpus/sources/ -> tests/rag_corpus/docs/.

Every document is written once, as a small Markdown-like source under sources/<lang>/<stem>.md, with a front
matter that names its output format (md, pdf, docx or html) and its title. This script renders each source into
its format under docs/<lang>/:

    md    the source body as it is (front matter dropped)
    html  <h1>..<h4>, <p>, <ul>/<ol>, <table>, <pre>, inside <main>; a <nav> and a <footer> of site boilerplate
    docx  Heading 1..4, Normal paragraphs, List Bullet/List Number, a Table Grid table (python-docx)
    pdf   DejaVu fonts (Cyrillic), headings bigger than body text, a page break at each `<!-- pagebreak -->` (fpdf2)

Source syntax, one block per blank-line-separated group of lines:
    # / ## / ### / ####     headings (levels 1 to 4)
    - item / 1. item        bullet / numbered list
    | a | b | + |---|---|   table (the first row is the header)
    ``` ... ```             code block
    <!-- pagebreak -->      a new PDF page (PDF sources only)
    anything else           a paragraph; inline `code` is kept in md/html/docx and unquoted in PDF

The output is deterministic: fixed PDF creation date and document id, fixed DOCX core properties and zip entry
timestamps. Run from the repository root:  .venv/bin/python tests/rag_corpus/make_corpus.py
"""

from __future__ import annotations

import html
import io
import re
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCES = ROOT / "sources"
DOCS = ROOT / "docs"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FIXED_DATE = datetime(2024, 6, 1, 9, 0, 0, tzinfo=UTC)
ZIP_DATE = (2024, 6, 1, 9, 0, 0)
PAGEBREAK = "<!-- pagebreak -->"


# ----------------------------------------------------------------------------------------------------------------
# Parsing


@dataclass
class Block:
    kind: str  # heading | para | list | table | code | pagebreak
    text: str = ""
    level: int = 0  # heading level
    ordered: bool = False  # list
    items: list[str] = field(default_factory=list)  # list items
    rows: list[list[str]] = field(default_factory=list)  # table rows, header first


@dataclass
class Source:
    path: Path
    lang: str
    stem: str
    meta: dict[str, str]
    body: str
    blocks: list[Block]

    @property
    def fmt(self) -> str:
        return self.meta["format"]

    @property
    def out_rel(self) -> str:
        return f"{self.lang}/{self.stem}.{self.fmt}"


def parse_front_matter(text: str) -> tuple[dict[str, str], str]:
    if not text.startswith("---\n"):
        raise ValueError("source must start with a '---' front matter")
    head, body = text[4:].split("\n---\n", 1)
    meta = {}
    for line in head.splitlines():
        key, _, value = line.partition(":")
        meta[key.strip()] = value.strip()
    return meta, body.lstrip("\n")


def parse_blocks(body: str) -> list[Block]:
    blocks: list[Block] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.strip() == PAGEBREAK:
            blocks.append(Block("pagebreak"))
            i += 1
            continue
        if line.startswith("```"):
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            blocks.append(Block("code", text="\n".join(lines[i + 1 : j])))
            i = j + 1
            continue
        m = re.match(r"(#{1,4}) (.+)", line)
        if m:
            blocks.append(Block("heading", text=m.group(2).strip(), level=len(m.group(1))))
            i += 1
            continue
        # group the following non-empty lines
        j = i
        group = []
        while j < len(lines) and lines[j].strip() and not lines[j].startswith(("#", "```")):
            group.append(lines[j])
            j += 1
        i = j
        if group[0].startswith("|"):
            rows = []
            for row in group:
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    continue
                rows.append(cells)
            width = len(rows[0])
            if any(len(r) != width for r in rows):
                raise ValueError(f"ragged table: {rows}")
            blocks.append(Block("table", rows=rows))
        elif re.match(r"(- |\d+\. )", group[0]):
            ordered = bool(re.match(r"\d+\. ", group[0]))
            items: list[str] = []
            for row in group:
                m = re.match(r"(- |\d+\. )(.*)", row)
                if m:
                    items.append(m.group(2).strip())
                else:  # continuation line of the previous item
                    items[-1] += " " + row.strip()
            blocks.append(Block("list", ordered=ordered, items=items))
        else:
            blocks.append(Block("para", text=" ".join(s.strip() for s in group)))
    return blocks


def load_sources() -> list[Source]:
    sources = []
    for path in sorted(SOURCES.glob("*/*.md")):
        meta, body = parse_front_matter(path.read_text(encoding="utf-8"))
        sources.append(Source(path, path.parent.name, path.stem, meta, body, parse_blocks(body)))
    return sources


def split_code(text: str) -> list[tuple[str, bool]]:
    """'a `b` c' -> [('a ', False), ('b', True), (' c', False)]."""
    parts = text.split("`")
    return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


def plain(text: str) -> str:
    return text.replace("`", "")


# ----------------------------------------------------------------------------------------------------------------
# Markdown


def render_md(src: Source, out: Path) -> None:
    if PAGEBREAK in src.body:
        raise ValueError(f"{src.path}: page breaks belong to PDF sources only")
    out.write_text(src.body.rstrip("\n") + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# HTML

HTML_STYLE = (
    "body{font-family:Georgia,'DejaVu Serif',serif;max-width:52rem;margin:0 auto;padding:0 1rem;color:#222}"
    "nav ul{list-style:none;padding:0;display:flex;gap:1rem;flex-wrap:wrap}"
    "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #999;padding:.3rem .6rem;text-align:left}"
    "pre{background:#f4f4f4;padding:.6rem;overflow-x:auto}footer{border-top:1px solid #ccc;margin-top:3rem;"
    "font-size:.85rem;color:#555}"
)


def inline_html(text: str) -> str:
    return "".join(f"<code>{html.escape(p)}</code>" if code else html.escape(p) for p, code in split_code(text))


def render_html(src: Source, out: Path) -> None:
    meta = src.meta
    nav_items = [s.strip() for s in meta["nav"].split("|")]
    slugs = [re.sub(r"\W+", "-", item.lower()).strip("-") for item in nav_items[1:]]
    links = ["/"] + [f"/{slug}/" for slug in slugs]
    lines = [
        "<!DOCTYPE html>",
        f'<html lang="{src.lang}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(meta['title'])}</title>",
        f"<style>{HTML_STYLE}</style>",
        "</head>",
        "<body>",
        '<header class="site-header">',
        f'<p class="site-name"><a href="/">{html.escape(meta["site"])}</a></p>',
        f'<nav aria-label="{html.escape(meta.get("nav_label", "Main"))}">',
        "<ul>",
        *(f'<li><a href="{href}">{html.escape(item)}</a></li>' for item, href in zip(nav_items, links)),
        "</ul>",
        "</nav>",
        "</header>",
        "<main>",
        "<article>",
    ]
    for b in src.blocks:
        if b.kind == "heading":
            lines.append(f"<h{b.level}>{inline_html(b.text)}</h{b.level}>")
        elif b.kind == "para":
            lines.append(f"<p>{inline_html(b.text)}</p>")
        elif b.kind == "list":
            tag = "ol" if b.ordered else "ul"
            lines.append(f"<{tag}>")
            lines.extend(f"<li>{inline_html(item)}</li>" for item in b.items)
            lines.append(f"</{tag}>")
        elif b.kind == "table":
            lines.append("<table>")
            lines.append("<thead>")
            lines.append("<tr>" + "".join(f"<th>{inline_html(c)}</th>" for c in b.rows[0]) + "</tr>")
            lines.append("</thead>")
            lines.append("<tbody>")
            for row in b.rows[1:]:
                lines.append("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>")
            lines.append("</tbody>")
            lines.append("</table>")
        elif b.kind == "code":
            lines.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif b.kind == "pagebreak":
            raise ValueError(f"{src.path}: page breaks belong to PDF sources only")
    lines += ["</article>", "</main>", "<footer>"]
    lines += [f"<p>{html.escape(p.strip())}</p>" for p in meta["footer"].split("||")]
    lines += ["</footer>", "</body>", "</html>"]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# DOCX


def render_docx(src: Source, out: Path) -> None:
    from docx import Document
    from docx.shared import Pt

    doc = Document()
    props = doc.core_properties
    props.title = src.meta["title"]
    props.author = src.meta.get("author", "")
    props.last_modified_by = src.meta.get("author", "")
    props.subject = src.meta.get("subject", "")
    props.language = {"en": "en-GB", "ru": "ru-RU"}[src.lang]
    props.created = FIXED_DATE.replace(tzinfo=None)
    props.modified = FIXED_DATE.replace(tzinfo=None)
    props.last_printed = FIXED_DATE.replace(tzinfo=None)
    props.revision = 1
    props.comments = ""
    props.keywords = ""
    props.category = ""

    def add_runs(paragraph, text: str) -> None:
        for part, code in split_code(text):
            run = paragraph.add_run(part)
            if code:
                run.font.name = "Consolas"

    def restarted_numbering() -> int:
        """A new numbering instance of the List Number style that starts again at 1.

        Paragraphs of the List Number style share one numbering across the document, so a second numbered list
        would go on counting from where the first one stopped."""
        numbering = doc.part.numbering_part.element
        style_num_id = doc.styles["List Number"].element.pPr.numPr.numId.val
        abstract_id = numbering.num_having_numId(style_num_id).abstractNumId.val
        num = numbering.add_num(abstract_id)
        num.add_lvlOverride(ilvl=0).add_startOverride(1)
        return num.numId

    for b in src.blocks:
        if b.kind == "heading":
            doc.add_heading(plain(b.text), level=b.level)
        elif b.kind == "para":
            add_runs(doc.add_paragraph(), b.text)
        elif b.kind == "list":
            style = "List Number" if b.ordered else "List Bullet"
            num_id = restarted_numbering() if b.ordered else None
            for item in b.items:
                paragraph = doc.add_paragraph(style=style)
                if num_id is not None:
                    num_pr = paragraph._p.get_or_add_pPr().get_or_add_numPr()
                    num_pr.get_or_add_ilvl().val = 0
                    num_pr.get_or_add_numId().val = num_id
                add_runs(paragraph, item)
        elif b.kind == "table":
            table = doc.add_table(rows=len(b.rows), cols=len(b.rows[0]))
            table.style = "Table Grid"
            for r, row in enumerate(b.rows):
                for c, text in enumerate(row):
                    cell = table.cell(r, c)
                    run = cell.paragraphs[0].add_run(plain(text))
                    run.bold = r == 0
            doc.add_paragraph()
        elif b.kind == "code":
            for line in b.text.splitlines():
                p = doc.add_paragraph()
                run = p.add_run(line)
                run.font.name = "Consolas"
                run.font.size = Pt(9)
        elif b.kind == "pagebreak":
            raise ValueError(f"{src.path}: page breaks belong to PDF sources only")
    buf = io.BytesIO()
    doc.save(buf)
    out.write_bytes(normalize_zip(buf.getvalue()))


def normalize_zip(data: bytes) -> bytes:
    """Rewrite a zip with fixed entry timestamps, so that the bytes do not depend on when the script ran."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_DATE)
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, src.read(info.filename), compresslevel=9)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# PDF

PDF_FOOTER = {"en": "{title} · page {page} of {{nb}}", "ru": "{title} · стр. {page} из {{nb}}"}


def table_widths(pdf, rows: list[list[str]], total: float, padding: float = 3.5) -> list[float]:
    """Column widths for a table: every column at least as wide as its longest word (no word is split over two
    lines, which would split it in the extracted text too), the rest shared in proportion to the text a column holds.
    Header cells are bold, so they are measured in bold."""
    ncols = len(rows[0])
    size = pdf.font_size_pt
    minimum, weight = [], []
    for c in range(ncols):
        longest = 0.0
        for r, row in enumerate(rows):
            pdf.set_font("DejaVu", "B" if r == 0 else "", size)
            longest = max([longest] + [pdf.get_string_width(word) for word in row[c].split()])
        pdf.set_font("DejaVu", "", size)
        minimum.append(longest + padding)
        weight.append(max(pdf.get_string_width(row[c]) for row in rows) + padding)
    spare = total - sum(minimum)
    if spare < 0:
        raise ValueError(f"table too wide for the page: {rows[0]}")
    extra = [max(w - m, 0.0) for w, m in zip(weight, minimum)]
    if sum(extra) <= spare:  # everything fits on one line per cell: share what is left evenly
        return [w + (spare - sum(extra)) / ncols for w in weight]
    return [m + spare * e / sum(extra) for m, e in zip(minimum, extra)]


def render_pdf(src: Source, out: Path) -> None:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos
    from fpdf.fonts import FontFace

    short = src.meta.get("short_title", src.meta["title"])

    class Doc(FPDF):
        def footer(self) -> None:
            self.set_y(-14)
            self.set_font("DejaVu", "", 8)
            self.set_text_color(110, 110, 110)
            self.cell(0, 6, PDF_FOOTER[src.lang].format(title=short, page=self.page_no()), align="C")
            self.set_text_color(0, 0, 0)

    pdf = Doc(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(src.meta["title"])
    pdf.set_author(src.meta.get("author", ""))
    pdf.set_subject(src.meta.get("subject", ""))
    pdf.set_lang({"en": "en-GB", "ru": "ru-RU"}[src.lang])
    pdf.set_creator("tests/rag_corpus/make_corpus.py")
    pdf.set_margins(20, 18, 20)
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_font("DejaVu", "", str(FONT_DIR / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONT_DIR / "DejaVuSans-Bold.ttf"))
    pdf.add_font("DejaVuMono", "", str(FONT_DIR / "DejaVuSansMono.ttf"))
    pdf.add_page()

    body_size, line_h = 10.5, 5.4
    heading_sizes = {1: 17, 2: 13.5, 3: 11.5, 4: 10.5}
    width = pdf.w - pdf.l_margin - pdf.r_margin
    pages = 1
    for b in src.blocks:
        if b.kind == "pagebreak":
            pdf.add_page()
            pages += 1
        elif b.kind == "heading":
            pdf.ln(3 if b.level > 1 else 0)
            pdf.set_font("DejaVu", "B", heading_sizes[b.level])
            pdf.multi_cell(
                width, heading_sizes[b.level] * 0.5, plain(b.text), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT
            )
            pdf.ln(2)
        elif b.kind == "para":
            pdf.set_font("DejaVu", "", body_size)
            pdf.multi_cell(width, line_h, plain(b.text), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(2)
        elif b.kind == "list":
            pdf.set_font("DejaVu", "", body_size)
            for n, item in enumerate(b.items, 1):
                marker = f"{n}." if b.ordered else "•"
                pdf.set_x(pdf.l_margin + 3)
                pdf.cell(6, line_h, marker)
                pdf.multi_cell(width - 9, line_h, plain(item), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.ln(0.8)
            pdf.ln(1.5)
        elif b.kind == "table":
            pdf.set_font("DejaVu", "", body_size - 1)
            col_widths = table_widths(pdf, [[plain(c) for c in row] for row in b.rows], width)
            with pdf.table(
                col_widths=col_widths,
                text_align="LEFT",
                line_height=5,
                padding=1.5,
                headings_style=FontFace(emphasis="BOLD", fill_color=(232, 232, 232)),
            ) as table:
                for row in b.rows:
                    tr = table.row()
                    for cell in row:
                        tr.cell(plain(cell))
            pdf.ln(3)
        elif b.kind == "code":
            pdf.set_font("DejaVuMono", "", 9)
            pdf.multi_cell(width, 4.6, b.text, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(2)
    if pdf.page_no() != pages:
        raise ValueError(f"{src.path}: content overflowed: {pdf.page_no()} pages for {pages} planned ones")
    pdf.output(str(out))


# ----------------------------------------------------------------------------------------------------------------

RENDERERS = {"md": render_md, "html": render_html, "docx": render_docx, "pdf": render_pdf}


def main() -> int:
    sources = load_sources()
    written = []
    for src in sources:
        out = DOCS / src.out_rel
        out.parent.mkdir(parents=True, exist_ok=True)
        RENDERERS[src.fmt](src, out)
        written.append(out)
    # anything else under docs/ is a leftover of an older run (a renamed source)
    for stale in sorted(p for p in DOCS.rglob("*") if p.is_file() and p not in written):
        stale.unlink()
    for out in written:
        print(f"{out.relative_to(ROOT)}  {out.stat().st_size:>7} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
