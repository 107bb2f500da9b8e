"""Reading documents (every format, the ways a file can be broken), chunking them and the words full-text search sees.

Fixture files are made here at test time (fpdf2 for the PDFs, python-docx for the DOCX), small enough to read fast.
"""

import random
import re
import sqlite3
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.rag.chunking import Chunk, approx_tokens, chunk_document, context_line, heading_label
from ember.rag.keywords import SOUND_PREFIX, match_query, name_keys, search_terms, search_text, sound_key
from ember.rag.readers import SUFFIXES, Document, Section, UnreadableDocument, read_document, supported

FONTS = Path("/usr/share/fonts/truetype/dejavu")

MARKDOWN = """---
title: Customer guide
author: Support
---
# Guide

Welcome to the guide. It covers **billing** and [refunds](https://example.org/refunds).

## Billing

Invoices are sent on the first day of each month.

### Refunds

Refunds are paid within 14 days.

```python
# this is a comment in code, not a heading
print("refund")
```

Setext heading
--------------

| Plan | Price |
|------|-------|
| Basic | 5 EUR |
| Pro | 12 EUR |

- first item
- second item

# Appendix

The end.
"""

HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Water rules — Example town</title>
<style>body { color: red }</style><script>var tracking = "SCRIPT TEXT";</script></head>
<body>
<header><p>SITE BANNER</p><nav><ul><li><a href="/">Home NAVLINK</a></li><li>About NAVLINK</li></ul></nav></header>
<aside>SIDEBAR TEXT</aside>
<main><article>
<header><h1>Water rules</h1></header>
<p>The town supplies water to <b>4,200</b> homes.</p>
<h2>Watering</h2>
<p>Lawns may be watered twice a week.</p>
<h3>Fees</h3>
<table><caption>Fees for 2024</caption>
<tr><th>Service</th><th>Price</th></tr>
<tr><td>Connection</td><td>120 EUR</td></tr>
<tr><td>Meter test</td><td>35 EUR</td></tr>
</table>
<ul><li>Report leaks at once.</li><li>Keep the meter reachable.</li></ul>
<pre>  code   keeps
    its indentation</pre>
<form><label>Search FORM TEXT</label></form>
<noscript>NOSCRIPT TEXT</noscript>
</article></main>
<footer><p>FOOTER TEXT © Example town</p></footer>
</body></html>
"""

PDF_PAGES = [
    ("Pumping stations", "Kestrel pumps run on Mondays and Thursdays. " * 3
     + "The night shift checks the pressure every two hours."),
    ("Водоканал", "Водоканал города Лесногорска работает круглосуточно. Аварийная служба принимает заявки "
     "по телефону 05. Плата за подключение — 3 000 рублей."),
    ("Reservoir and водохранилище", "The reservoir holds 40 000 cubic metres of water. "
     "Водохранилище наполняется весной."),
]


def make_pdf(path: Path, pages: list[tuple[str, str]], *, password: str | None = None) -> Path:
    from fpdf import FPDF

    class Doc(FPDF):
        def footer(self) -> None:
            self.set_y(-14)
            self.set_font("DejaVu", "", 8)
            self.cell(0, 6, f"Station handbook · page {self.page_no()} of 3", align="C")

    pdf = Doc()
    pdf.set_title("Station handbook")
    pdf.add_font("DejaVu", "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    for heading, body in pages:
        pdf.add_page()
        pdf.set_font("DejaVu", "B", 16)
        pdf.multi_cell(0, 9, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
        pdf.set_font("DejaVu", "", 11)
        pdf.multi_cell(0, 6, body, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Handbook", 0)
    document.add_paragraph("This handbook is for new customers.")
    document.add_heading("Accounts", 1)
    document.add_paragraph("Open an account at the office.")
    document.add_heading("Deposits", 2)
    document.add_paragraph("Tenants pay a deposit of 120 dollars.")
    document.add_paragraph("Owners show a deed", style="List Bullet")
    document.add_paragraph("Tenants show a lease", style="List Bullet")
    table = document.add_table(rows=3, cols=2)
    for row, cells in zip(table.rows, [("Block", "Rate"), ("A", "3.20"), ("B", "4.75")]):
        for cell, text in zip(row.cells, cells):
            cell.text = text
    document.add_paragraph("Rates change every January.")
    document.add_heading("Contact", 1)
    document.add_paragraph("Call us on weekdays.")
    document.save(str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "guide.md").write_text(MARKDOWN, encoding="utf-8")
    (folder / "rules.html").write_text(HTML, encoding="utf-8")
    (folder / "legacy.txt").write_bytes("Водоканал работает круглосуточно.\n\nВторой абзац: ёлка и ель.\n"
                                        .encode("cp1251"))
    (folder / "french.txt").write_bytes("Café crème à la française, déjà vu. Voilà “très” bien.".encode("cp1252"))
    (folder / "bom.txt").write_bytes(b"\xef\xbb\xbfFirst line\nsecond line\n\n\n\nNext   paragraph\t here.")
    return {
        "markdown": folder / "guide.md",
        "html": folder / "rules.html",
        "pdf": make_pdf(folder / "handbook.pdf", PDF_PAGES),
        "docx": make_docx(folder / "handbook.docx"),
        "cp1251": folder / "legacy.txt",
        "cp1252": folder / "french.txt",
        "bom": folder / "bom.txt",
    }


def section_with(doc: Document, phrase: str) -> Section:
    found = [s for s in doc.sections if phrase in s.text]
    assert len(found) == 1, (phrase, [s.text for s in doc.sections])
    return found[0]


def check_chunks(doc: Document, chunks: list[Chunk], max_tokens: int) -> None:
    """What every chunking must give: exact spans inside one section, with its headings and page, in order, within
    the budget unless a single word, and every word of every section in some chunk."""
    covered = set()
    for chunk in chunks:
        assert doc.text[chunk.start:chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        assert approx_tokens(chunk.text) <= max_tokens or not re.search(r"\s", chunk.text)
        owners = [s for s in doc.sections if s.start <= chunk.start and chunk.end <= s.start + len(s.text)]
        assert len(owners) == 1, f"chunk crosses a section: {chunk.text!r}"
        assert (chunk.headings, chunk.page) == (owners[0].headings, owners[0].page)
        covered.update(range(chunk.start, chunk.end))
    for a, b in zip(chunks, chunks[1:]):
        assert a.start < b.start and a.end < b.end
    for section in doc.sections:
        for i, ch in enumerate(section.text):
            assert ch.isspace() or section.start + i in covered, f"text left out: {section.text[i:i + 30]!r}"


# -- readers ----------------------------------------------------------------------------------------------------------


def test_suffixes():
    assert supported(Path("a.MD")) and supported(Path("b.htm")) and supported(Path("c.log"))
    assert not supported(Path("slides.pptx")) and not supported(Path("README"))
    assert {"text", "markdown", "html", "pdf", "docx", "image", "audio"} == set(SUFFIXES.values())
    assert supported(Path("scan.TIFF")) and supported(Path("call.m4a"))


def test_document_text_is_its_sections_joined(files):
    for path in files.values():
        doc = read_document(path)
        assert doc.text == "\n\n".join(s.text for s in doc.sections)
        for section in doc.sections:
            assert doc.text[section.start:section.start + len(section.text)] == section.text
            assert section.text.strip() == section.text and "\n\n\n" not in section.text


def test_markdown_headings_code_and_tables(files):
    doc = read_document(files["markdown"])
    assert doc.kind == "markdown" and doc.title == "Customer guide"
    assert "author:" not in doc.text  # the front matter is not text
    assert section_with(doc, "Welcome").headings == ("Guide",)
    assert section_with(doc, "Invoices").headings == ("Guide", "Billing")
    refunds = section_with(doc, "paid within 14 days")
    assert refunds.headings == ("Guide", "Billing", "Refunds")
    assert "# this is a comment in code, not a heading" in refunds.text  # a "#" in a code block is code
    assert refunds.text.startswith("Refunds\n\n")  # a section opens with its heading line
    table = section_with(doc, "Basic | 5 EUR")
    assert table.headings == ("Guide", "Setext heading")
    assert "Plan | Price\nBasic | 5 EUR\nPro | 12 EUR" in table.text
    assert "- first item\n- second item" in table.text
    assert section_with(doc, "The end.").headings == ("Appendix",)
    assert "It covers billing and refunds." in doc.text  # emphasis and link markup dropped, link text kept
    assert "**" not in doc.text and "https://" not in doc.text


def test_html_drops_site_furniture_and_keeps_tables(files):
    doc = read_document(files["html"])
    assert doc.kind == "html" and doc.title == "Water rules — Example town"
    for furniture in ("NAVLINK", "SITE BANNER", "FOOTER TEXT", "SCRIPT TEXT", "SIDEBAR", "FORM TEXT", "NOSCRIPT",
                      "color: red"):
        assert furniture not in doc.text
    assert section_with(doc, "4,200 homes").headings == ("Water rules",)  # the article's own <header> is kept
    assert section_with(doc, "twice a week").headings == ("Water rules", "Watering")
    fees = section_with(doc, "Connection | 120 EUR")
    assert fees.headings == ("Water rules", "Watering", "Fees")
    assert "Fees for 2024\n\nService | Price\nConnection | 120 EUR\nMeter test | 35 EUR" in fees.text
    assert "- Report leaks at once.\n- Keep the meter reachable." in fees.text
    assert "code   keeps\n  its indentation" in fees.text


def test_markdown_inline_markup_and_html_blocks(tmp_path):
    path = tmp_path / "notes.markdown"
    path.write_text("Intro\n\nA line\nwrapped, a break  \nand ![a diagram](d.png) here.\n\n"
                    "<div class=\"note\">An <em>HTML</em> block</div>\n\n<!-- a comment -->\n", encoding="utf-8")
    doc = read_document(path)
    assert doc.title is None and doc.sections[0].headings == ()
    assert doc.text == "Intro\n\nA line wrapped, a break\nand a diagram here.\n\nAn HTML block"


def test_html_declared_charset(tmp_path):
    page = '<html><head><meta charset="windows-1251"><title>Тарифы</title></head><body><p>Плата — 99 ₽</p></body>'
    path = tmp_path / "tariffs.htm"
    path.write_bytes(page.replace("₽", "руб.").encode("cp1251"))
    doc = read_document(path)
    assert doc.title == "Тарифы" and "Плата — 99 руб." in doc.text

    unknown = tmp_path / "unknown.html"
    unknown.write_text('<meta charset="no-such-charset"><h1>Rates</h1><p>Line one<br>line two</p>', encoding="utf-8")
    doc = read_document(unknown)
    assert doc.title == "Rates" and doc.text == "Rates\n\nLine one\nline two"


def test_pdf_pages_headings_and_running_footer(files):
    doc = read_document(files["pdf"])
    assert doc.kind == "pdf" and doc.title == "Station handbook"
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert section_with(doc, "Kestrel pumps").headings == ("Pumping stations",)
    russian = section_with(doc, "Лесногорска")
    assert russian.page == 2 and russian.headings == ("Водоканал",)
    assert "Водоканал города Лесногорска работает круглосуточно." in russian.text
    assert section_with(doc, "40 000 cubic metres").page == 3
    assert "Station handbook · page" not in doc.text  # the running footer is furniture
    for chunk in chunk_document(doc, max_tokens=30, overlap_tokens=8):
        if "Kestrel" in chunk.text:
            assert chunk.page == 1
        if "Водохранилище" in chunk.text or "reservoir" in chunk.text:
            assert chunk.page == 3


def test_docx_headings_lists_and_tables_in_order(files):
    doc = read_document(files["docx"])
    assert doc.kind == "docx" and doc.title == "Handbook"
    assert section_with(doc, "new customers").headings == ("Handbook",)
    assert section_with(doc, "at the office").headings == ("Handbook", "Accounts")
    deposits = section_with(doc, "deposit of 120")
    assert deposits.headings == ("Handbook", "Accounts", "Deposits")
    assert "- Owners show a deed\n- Tenants show a lease\n\nBlock | Rate\nA | 3.20\nB | 4.75\n\nRates change" \
        in deposits.text
    assert section_with(doc, "weekdays").headings == ("Handbook", "Contact")


def test_legacy_encodings(files):
    assert read_document(files["cp1251"]).text == "Водоканал работает круглосуточно.\n\nВторой абзац: ёлка и ель."
    assert read_document(files["cp1252"]).text == "Café crème à la française, déjà vu. Voilà “très” bien."
    doc = read_document(files["bom"])
    assert doc.text == "First line\nsecond line\n\nNext paragraph here."
    assert len(doc.sections) == 1 and doc.sections[0].headings == () and doc.title is None


def test_utf16_and_latin1_text(tmp_path):
    utf16 = tmp_path / "notepad.txt"
    utf16.write_bytes("Блокнот сохранил это в UTF-16.".encode("utf-16"))
    assert read_document(utf16).text == "Блокнот сохранил это в UTF-16."
    latin1 = tmp_path / "old.csv"
    latin1.write_bytes(b"name;price\nCaf\xe9;3\x81")  # 0x81 is not in cp1252
    assert read_document(latin1).text == "name;price\nCafé;3\x81"


def unreadable(path: Path, **kwargs) -> str:
    with pytest.raises(UnreadableDocument) as caught:
        read_document(path, **kwargs)
    error = caught.value
    assert isinstance(error, ValueError) and error.path == path
    assert str(error) == f"{path}: {error.reason}"
    return error.reason


def test_broken_files_raise_unreadable_document_naming_the_file(tmp_path):
    rng = random.Random(7)
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n" + rng.randbytes(4000))
    assert "damaged" in unreadable(corrupt)

    not_docx = tmp_path / "archive.docx"
    with zipfile.ZipFile(not_docx, "w") as z:
        z.writestr("hello.txt", "not a word document")
    assert "not a Word document" in unreadable(not_docx)

    not_zip = tmp_path / "random.docx"
    not_zip.write_bytes(rng.randbytes(500))
    assert "not a .docx" in unreadable(not_zip)

    old_word = tmp_path / "old.docx"
    old_word.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))
    assert "save it as .docx" in unreadable(old_word)

    empty = tmp_path / "empty.md"
    empty.write_bytes(b"")
    assert "empty" in unreadable(empty)

    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n \t\n")
    assert "empty" in unreadable(blank)

    unsupported = tmp_path / "slides.pptx"
    unsupported.write_bytes(b"PK\x03\x04")
    assert ".pptx" in unreadable(unsupported) and ".docx" in unreadable(unsupported)

    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(100))
    assert "binary" in unreadable(binary)

    furniture_only = tmp_path / "nav.html"
    furniture_only.write_text("<html><body><nav>Home</nav><script>x()</script></body></html>")
    assert "no text" in unreadable(furniture_only)

    assert "cannot be opened" in unreadable(tmp_path / "missing.txt")

    folder = tmp_path / "folder.md"
    folder.mkdir()
    assert "not a file" in unreadable(folder)

    not_pdf = tmp_path / "letter.pdf"
    not_pdf.write_text("Dear customer, this is plain text.")
    assert "not a PDF" in unreadable(not_pdf)

    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    assert "over the" in unreadable(big, max_bytes=1000)
    assert read_document(big).text.startswith("word word")


def test_pdf_without_text_layer_or_with_a_password(tmp_path):
    from fpdf import FPDF

    scanned = FPDF()
    scanned.add_page()
    scanned.rect(20, 20, 100, 60, style="F")  # a picture of a page, no text: OCR finds none either
    path = tmp_path / "scan.pdf"
    scanned.output(str(path))
    assert "no text to add" in unreadable(path)

    locked = make_pdf(tmp_path / "locked.pdf", PDF_PAGES[:1], password="secret")
    assert "password" in unreadable(locked)


# -- chunking ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["markdown", "html", "pdf", "docx", "cp1251", "bom"])
@pytest.mark.parametrize("max_tokens,overlap", [(200, 40), (40, 10), (12, 4), (3, 1)])
def test_chunks_are_exact_spans_within_sections_and_budget(files, kind, max_tokens, overlap):
    doc = read_document(files[kind])
    check_chunks(doc, chunk_document(doc, max_tokens=max_tokens, overlap_tokens=overlap), max_tokens)


def test_the_evaluation_corpus_chunks_exactly():
    corpus = Path(__file__).resolve().parent.parent / "rag_corpus" / "docs"
    paths = sorted(p for p in corpus.rglob("*") if supported(p))
    assert paths, "the evaluation corpus is missing"
    for path in paths:
        doc = read_document(path)
        check_chunks(doc, chunk_document(doc), 200)


def plain(text: str, path: str = "t.txt") -> Document:
    return Document(Path(path), "text", text, [Section(text, (), None, 0)], None)


# Texts of words (English, Russian, a number, an abbreviation, a 70-letter word) and every kind of break.
TEXT = st.lists(
    st.one_of(
        st.sampled_from(["word", "Pump", "насос", "Водоканал", "x" * 70, "3.5", "ул.", "А.", "e.g.", "42"]),
        st.sampled_from([" ", ". ", "! ", "? ", "… ", ", ", "\n", "\n\n", " \n \n ", "  ", "\t", ".\n", "»! "]),
    ),
    min_size=0, max_size=120,
).map("".join)


def test_long_section_chunks_overlap_by_whole_sentences():
    sentences = [f"Fact {n} is that pump {n} is serviced on day {n} of the month." for n in range(1, 41)]
    doc = plain(" ".join(sentences))
    chunks = chunk_document(doc, max_tokens=60, overlap_tokens=20)
    check_chunks(doc, chunks, 60)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "consecutive chunks of one section overlap"
        shared = doc.text[b.start:a.end]
        assert re.fullmatch(r"(Fact \d+ [^.]+\.\s*)+", shared), shared  # whole sentences
        assert approx_tokens(shared) <= 20
    for sentence in sentences:  # every fact is whole in some chunk, and chunks end at sentence ends
        assert any(sentence in c.text for c in chunks)
    assert all(c.text.endswith(".") and c.text.startswith("Fact") for c in chunks)


def test_paragraphs_are_packed_whole():
    paragraphs = [f"Paragraph {n} says one thing. It says it twice." for n in range(12)]
    doc = plain("\n\n".join(paragraphs))
    chunks = chunk_document(doc, max_tokens=50, overlap_tokens=0)
    check_chunks(doc, chunks, 50)
    for chunk in chunks:
        assert set(chunk.text.split("\n\n")) <= set(paragraphs)
    assert len(chunks) < len(paragraphs)


def test_russian_sentences_split_at_their_ends_not_at_abbreviations():
    text = ("Водоканал города работает круглосуточно! Заявки принимает А. С. Пушкин по адресу ул. Ленина, д. 5. "
            "Почему вода мутная? Идёт ремонт, т. е. замена труб… Ремонт закончится в 2025 г. осенью. "
            "Плата за подключение — 3 000 рублей. Справки по телефону 05.")
    doc = plain(text)
    for max_tokens in (25, 32, 45):  # the longest sentence is 25
        chunks = chunk_document(doc, max_tokens=max_tokens, overlap_tokens=5)
        check_chunks(doc, chunks, max_tokens)
        for chunk in chunks:
            assert chunk.text[-1] in ".!?…", chunk.text
            assert re.match(r"[А-ЯЁ]", chunk.text), chunk.text
            assert not re.search(r"\b(ул|д|т|г|А|С)\.$", chunk.text)


def test_an_overlong_sentence_splits_between_words_and_a_huge_word_stays_whole():
    words = " ".join(f"слово{n}" for n in range(200))
    doc = plain(words)
    chunks = chunk_document(doc, max_tokens=30, overlap_tokens=6)
    check_chunks(doc, chunks, 30)
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # inside a sentence, words overlap

    huge = "x" * 500
    doc = plain(f"Before it. {huge} After it.")
    chunks = chunk_document(doc, max_tokens=20, overlap_tokens=5)
    check_chunks(doc, chunks, 20)
    assert any(c.text == huge for c in chunks)


def test_tiny_tail_joins_the_chunk_before():
    sentences = [f"Sentence number {n} of this section talks about pumps and valves." for n in range(6)]
    doc = plain(" ".join(sentences) + " Done.")
    chunks = chunk_document(doc, max_tokens=50, overlap_tokens=10)
    check_chunks(doc, chunks, 50)
    assert chunks[-1].text.endswith("Done.") and approx_tokens(chunks[-1].text) >= 0.15 * 50
    assert all(approx_tokens(c.text) >= 0.15 * 50 for c in chunks)


def words(text: str) -> int:
    return len(text.split())


def test_tiny_tail_with_its_overlap_stays_and_without_reaches_back():
    # Counted in words, budget 20, overlap 4 and so tiny under 3: the closing "Done." does not fit after the first
    # paragraph, which makes a chunk of its own.
    first = "One two three four five six seven eight nine ten. Eleven twelve 13 14 15 16 17. Last three words."
    doc = plain(first + "\n\nDone.")
    chunks = chunk_document(doc, max_tokens=20, overlap_tokens=4, count_tokens=words)
    assert [c.text for c in chunks] == [first, "Last three words.\n\nDone."]  # its overlap makes it big enough

    first = "One two three four five six seven eight nine ten. Eleven twelve 13 14 15 16 17 18 19 20."
    doc = plain(first + "\n\nDone.")
    chunks = chunk_document(doc, max_tokens=20, overlap_tokens=4, count_tokens=words)
    assert [c.text for c in chunks] == [first, "Eleven twelve 13 14 15 16 17 18 19 20.\n\nDone."]


@settings(max_examples=60, deadline=None)
@given(text=TEXT, max_tokens=st.integers(1, 40), overlap=st.integers(0, 20))
def test_a_tokenizer_of_its_own_keeps_its_budget(text, max_tokens, overlap):
    doc = plain(text)
    for chunk in chunk_document(doc, max_tokens=max_tokens, overlap_tokens=overlap, count_tokens=words):
        assert doc.text[chunk.start:chunk.end] == chunk.text
        assert words(chunk.text) <= max_tokens or words(chunk.text) == 1


def test_blank_sections_give_no_chunks():
    doc = Document(Path("x.md"), "markdown", "  \n\n\t", [Section("  \n\n\t", ("A",), None, 0)], None)
    assert chunk_document(doc) == []


def test_headings_and_pages_never_shared(files):
    doc = read_document(files["markdown"])
    chunks = chunk_document(doc, max_tokens=500)
    assert len(chunks) == len(doc.sections)  # each section fits, and still each is its own chunk
    assert heading_label(chunks[2]) == "Guide › Billing › Refunds"
    assert context_line(doc, chunks[2]) == "Customer guide › Guide › Billing › Refunds"


def test_bad_budget_is_refused():
    with pytest.raises(ValueError):
        chunk_document(plain("text"), max_tokens=0)


def test_approx_tokens():
    assert approx_tokens("") == 0
    assert approx_tokens("The pump is on.") == 7  # 4 words * 1.3 + 1
    assert approx_tokens("maintained") == 3  # a word over 5 letters: a piece per 4 of them
    assert approx_tokens("Вода есть.") == 5  # 2 * 1.7 + 1, rounded up
    assert approx_tokens("a3f9c2d8e1b7a6c5d4e3f2a1b0c9d8e7") == 8  # a long code: a piece per 4 characters
    assert approx_tokens("東京都") == 3



@settings(max_examples=150, deadline=None)
@given(text=TEXT, max_tokens=st.integers(1, 60), overlap=st.integers(0, 30))
def test_any_text_chunks_into_exact_spans(text, max_tokens, overlap):
    doc = plain(text)
    check_chunks(doc, chunk_document(doc, max_tokens=max_tokens, overlap_tokens=overlap), max_tokens)


@settings(max_examples=60, deadline=None)
@given(sections=st.lists(TEXT, min_size=1, max_size=4), max_tokens=st.integers(3, 40))
def test_any_sections_chunk_without_crossing(sections, max_tokens):
    parts, start = [], 0
    for n, text in enumerate(sections):
        parts.append(Section(text, (f"H{n}",), n + 1, start))
        start += len(text) + 2
    doc = Document(Path("x.pdf"), "pdf", "\n\n".join(sections), parts, None)
    check_chunks(doc, chunk_document(doc, max_tokens=max_tokens, overlap_tokens=max_tokens // 4), max_tokens)


# -- keywords ---------------------------------------------------------------------------------------------------------


def test_russian_and_english_word_forms_meet():
    assert search_terms("Водоканалы", sound_keys=False) == search_terms("водоканала") == search_terms("водоканалом")
    assert search_terms("running") == search_terms("runs") == ["run"]
    assert search_terms("ёлка Ёж", sound_keys=False) == search_terms("елка еж")
    assert search_terms("океан") == search_terms("океаны") == search_terms("океаном")
    assert search_terms("COVID-19, snake_case", sound_keys=False) == ["covid", "19", "snake", "case"]
    assert search_text("тарифы on cards") == " ".join(search_terms("тарифов on card"))
    assert search_text("") == "" and search_terms("— !!! ...") == []


def test_names_meet_across_scripts_by_sound():
    pairs = [("Lesnogorsk", "в Лесногорске"), ("Volzhsky Mayak", "Волжского Маяка"), ("Port Calloway", "Порт-Кэллоуэя"),
             ("Millbrook", "Миллбрук"), ("Ferrow Hill", "Ферроу-Хилл"), ("Svyatogor", "Святогора"),
             ("Kupecheskaya", "Купеческая"), ("Crag", "Крэг")]
    for english, russian in pairs:
        keys = [t for t in search_terms(russian) if t.startswith(SOUND_PREFIX)]
        assert keys and keys == [t for t in search_terms(english) if t.startswith(SOUND_PREFIX)], (english, russian)
    assert sound_key("lesnogorsk") == sound_key("лесногорск") == "qqlasnagarsk"
    assert sound_key("юг") is None and sound_key("covid19") is None  # too short to tell apart; digits
    assert "qqlasnagarsk" in search_text("Тарифы Лесногорска") and "qq" not in search_text("тарифы лесногорска")
    # A question's first word is capitalized as its start, not as a name.
    assert name_keys("Какую долю возвращает водоканал Миллбрук?") == [sound_key("millbrook")]
    assert name_keys("What is the price of water in Lesnogorsk and Lesnogorsk?") == ["qqlasnagarsk"]


def test_match_query_is_safe_fts5():
    assert match_query("?!") is None
    hostile = 'pumps AND "valves" OR (NEAR(a b) NOT x*) ^start col:value "unbalanced'
    query = match_query(hostile)
    assert query is not None and re.fullmatch(r'"[^"\s]+"( OR "[^"\s]+")*', query), query
    assert '"pump"' in query and '"valv"' in query and '"and"' in query and '"near"' in query
    assert query.count('"pump"') == 1  # each term once

    db = sqlite3.connect(":memory:")
    if not _has_fts5(db):
        pytest.skip("this SQLite has no FTS5")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(terms)")
    db.executemany("INSERT INTO t VALUES (?)", [(search_text(s),) for s in (
        "The pumps and valves of the station.", "Водоканалы города работают круглосуточно.", "Nothing here.")])
    for question, expected in ((hostile, 1), ("Как работает водоканал?", 1), ('NOT "pumps" *', 1)):
        found = db.execute("SELECT count(*) FROM t WHERE t MATCH ?", (match_query(question),)).fetchone()[0]
        assert found == expected, question


def _has_fts5(db: sqlite3.Connection) -> bool:
    try:
        db.execute("CREATE VIRTUAL TABLE probe USING fts5(x)")
        return True
    except sqlite3.OperationalError:
        return False
