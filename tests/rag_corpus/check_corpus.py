#!/usr/bin/env python3
"""Check the retrieval evaluation corpus (docs/) against its questions (questions.jsonl).

Text is extracted the plain way a loader would do it: pypdf page by page for PDF, python-docx paragraphs and table
cells (in document order) for DOCX, BeautifulSoup get_text for HTML, the raw file for Markdown. Whitespace is
collapsed and case folded before matching. Checked:

- the corpus: 24 documents, 12 per language, 3 of each format per language, 500 to 1,500 words each, the structure
  each format promises (headings, lists, tables; <nav>/<footer>/<meta charset> in HTML; 2 to 4 pages and a heading
  font bigger than the body in PDF);
- the questions: 60, 30 asked in each language, about a quarter of each language's asked about a document in the
  other language, every document asked about at least twice, the fields and their types;
- each answer: 2 to 8 words, not given away by its question, present exactly once in its document (and on its page,
  only there, for a PDF), and present in no other document, near-distractors (TOPICS) included;
- coverage: how many answers sit in a table, in a list, under a heading of level 3 or deeper, on page 2+ of a PDF
  (located in the sources that make_corpus.py renders).

Run from the repository root:  .venv/bin/python tests/rag_corpus/check_corpus.py   (exit status 0 when all pass)
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from bs4 import BeautifulSoup
from docx import Document
from pypdf import PdfReader

ROOT = Path(__file__).resolve().parent
DOCS = ROOT / "docs"
QUESTIONS = ROOT / "questions.jsonl"
FIELDS = {"id", "question", "question_lang", "doc", "answer", "page"}
FORMATS = ("md", "pdf", "docx", "html")

# Documents on the same subject, in either language: each is a near-distractor for the others' questions.
TOPICS = {
    "water supply rules": [
        "en/port-calloway-water-rules.md",
        "en/millbrook-valley-water-handbook.docx",
        "ru/lesnogorsk-vodokanal-pravila.md",
        "ru/snt-rassvet-pravila.html",
    ],
    "business travel policy": [
        "en/corvane-travel-policy.pdf",
        "en/brightwell-travel-expense-guidelines.html",
        "ru/terminal-yug-polozhenie-o-komandirovkah.docx",
    ],
    "programming library manual": [
        "en/quillstream-manual.md",
        "en/tarnlink-documentation.html",
        "ru/klyuchnik-rukovodstvo.html",
    ],
    "bank card terms": ["ru/severny-kedr-usloviya-kart.docx", "ru/volzhsky-mayak-tarify-kart.pdf"],
    "museum visitor guide": [
        "en/orrin-museum-visitor-guide.html",
        "ru/zarechinsk-muzei-rechnogo-flota.html",
        "ru/verkhneborsk-muzei-chasov.md",
    ],
    "polar station logbook": ["en/halvard-ridge-station-logbook.pdf", "ru/belyi-mys-zhurnal-stancii.pdf"],
    "board game rules": ["en/saltmarsh-barons-rules.docx", "ru/kupecheskaya-yarmarka-pravila.docx"],
    "hiking trail guide": ["en/ferrow-hill-trail-guide.md", "ru/kamennaya-gryada-marshrut.md"],
    "restaurant recipes": ["en/lanternfish-bistro-recipes.docx", "ru/sosnovy-dvor-recepty.pdf"],
    "spacecraft maintenance manual": ["en/kestrel-7-maintenance-manual.pdf"],
}

CYRILLIC = re.compile(r"[А-Яа-яЁё]")
LATIN = re.compile(r"[A-Za-z]")


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def words(text: str) -> int:
    return sum(1 for token in text.split() if re.search(r"\w", token))


# ----------------------------------------------------------------------------------------------------------------
# Extraction: a list of page texts (one element for every format but PDF)


def extract(path: Path) -> list[str]:
    if path.suffix == ".pdf":
        return [page.extract_text() for page in PdfReader(path).pages]
    if path.suffix == ".docx":
        parts = []
        for item in Document(str(path)).iter_inner_content():
            if hasattr(item, "rows"):  # a table
                parts.extend(" ".join(cell.text for cell in row.cells) for row in item.rows)
            else:
                parts.append(item.text)
        return ["\n".join(parts)]
    if path.suffix == ".html":
        return [BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser").get_text(" ")]
    return [path.read_text(encoding="utf-8")]


def content_text(path: Path, pages: list[str]) -> str:
    """The document's own text for the word count: no HTML nav/footer, no PDF page footer, no Markdown markup."""
    if path.suffix == ".html":
        soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        return soup.find("main").get_text(" ")
    if path.suffix == ".pdf":
        return "\n".join(page.rsplit("\n", 1)[0] for page in pages)
    if path.suffix == ".md":
        return re.sub(r"[#|`*]|-{3,}", " ", pages[0])
    return pages[0]


def pdf_font_sizes(path: Path) -> set[float]:
    sizes: set[float] = set()

    def visit(text, cm, tm, font_dict, font_size):
        if text.strip():
            sizes.add(round(font_size * tm[0], 1))

    for page in PdfReader(path).pages:
        page.extract_text(visitor_text=visit)
    return sizes


# ----------------------------------------------------------------------------------------------------------------
# Where an answer sits in its source (for the coverage report)


def locate(rel: str, answer: str) -> tuple[str, int]:
    """(block kind, level of the nearest heading above) of the source block holding the answer."""
    sys.path.insert(0, str(ROOT))
    from make_corpus import load_sources, plain

    src = {s.out_rel: s for s in load_sources()}[rel]
    level = 0
    for block in src.blocks:
        if block.kind == "heading":
            level = block.level
            texts = [block.text]
        elif block.kind == "list":
            texts = block.items
        elif block.kind == "table":
            texts = [cell for row in block.rows for cell in row]
        else:
            texts = [block.text]
        if any(norm(answer) in norm(plain(t)) for t in texts):
            return block.kind, level
    return "?", level


# ----------------------------------------------------------------------------------------------------------------


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
        return ok


def main() -> int:
    c = Checker()
    paths = sorted(p for p in DOCS.rglob("*") if p.is_file())
    rels = [p.relative_to(DOCS).as_posix() for p in paths]
    pages = {rel: extract(p) for rel, p in zip(rels, paths)}
    normed = {rel: [norm(t) for t in pgs] for rel, pgs in pages.items()}
    whole = {rel: " ".join(pgs) for rel, pgs in normed.items()}

    # --- the corpus ----------------------------------------------------------------------------------------------
    c.check(len(paths) == 24, f"expected 24 documents, found {len(paths)}")
    per = Counter((rel.split("/")[0], rel.rsplit(".", 1)[1]) for rel in rels)
    for lang in ("en", "ru"):
        for fmt in FORMATS:
            c.check(per[(lang, fmt)] == 3, f"{lang}: {per[(lang, fmt)]} {fmt} documents, expected 3")
    topic_docs = [d for docs in TOPICS.values() for d in docs]
    c.check(sorted(topic_docs) == sorted(rels), "TOPICS must list every document exactly once")

    word_counts = {}
    for rel, path in zip(rels, paths):
        word_counts[rel] = n = words(content_text(path, pages[rel]))
        c.check(500 <= n <= 1500, f"{rel}: {n} words, expected 500 to 1,500")
        lang = rel.split("/")[0]
        script = CYRILLIC if lang == "ru" else LATIN
        letters = re.findall(r"[^\W\d_]", whole[rel])
        share = sum(1 for ch in letters if script.match(ch)) / max(len(letters), 1)
        c.check(share > 0.8, f"{rel}: only {share:.0%} of its letters are in the {lang} script (extraction broken?)")
        if path.suffix == ".md":
            raw = pages[rel][0]
            for what, pattern in [
                ("# heading", r"(?m)^# "),
                ("## heading", r"(?m)^## "),
                ("list", r"(?m)^(- |\d+\. )"),
                ("table", r"(?m)^\|-"),
            ]:
                c.check(re.search(pattern, raw) is not None, f"{rel}: no {what}")
        elif path.suffix == ".html":
            raw = path.read_text(encoding="utf-8")
            soup = BeautifulSoup(raw, "html.parser")
            c.check('<meta charset="utf-8">' in raw, f'{rel}: no <meta charset="utf-8">')
            for tag in ("nav", "footer", "main", "h1", "h2", "p", "table"):
                c.check(soup.find(tag) is not None, f"{rel}: no <{tag}>")
            c.check(soup.find(["ul", "ol"]) is not None, f"{rel}: no list")
        elif path.suffix == ".docx":
            doc = Document(str(path))
            styles = {p.style.name for p in doc.paragraphs}
            for style in ("Heading 1", "Heading 2"):
                c.check(style in styles, f"{rel}: no {style} paragraph")
            c.check(bool(styles & {"List Bullet", "List Number"}), f"{rel}: no list paragraph")
            c.check(len(doc.tables) >= 1, f"{rel}: no table")
        elif path.suffix == ".pdf":
            c.check(2 <= len(pages[rel]) <= 4, f"{rel}: {len(pages[rel])} pages, expected 2 to 4")
            c.check(all(words(p) > 100 for p in pages[rel]), f"{rel}: a page with almost no text")
            sizes = sorted(s for s in pdf_font_sizes(path) if s > 9)
            c.check(len(sizes) >= 2, f"{rel}: no heading font bigger than the body ({sizes})")

    # --- the questions -------------------------------------------------------------------------------------------
    lines = [line for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = []
    for n, line in enumerate(lines, 1):
        try:
            questions.append(json.loads(line))
        except json.JSONDecodeError as e:
            c.check(False, f"questions.jsonl line {n}: {e}")
    c.check(len(questions) == 60, f"expected 60 questions, found {len(questions)}")
    ids = Counter(q.get("id") for q in questions)
    c.check(all(v == 1 for v in ids.values()), f"duplicate ids: {[k for k, v in ids.items() if v > 1]}")

    per_doc = Counter()
    by_lang = Counter()
    cross = Counter()
    coverage = defaultdict(list)
    for q in questions:
        qid = q.get("id", "?")
        if not c.check(set(q) == FIELDS, f"{qid}: fields {sorted(q)}, expected {sorted(FIELDS)}"):
            continue
        lang, rel, answer, page = q["question_lang"], q["doc"], q["answer"], q["page"]
        c.check(lang in ("en", "ru"), f"{qid}: question_lang {lang!r}")
        c.check(re.fullmatch(rf"{lang}-\d\d", qid) is not None, f"{qid}: id must be '{lang}-NN'")
        if not c.check(rel in pages, f"{qid}: no document {rel}"):
            continue
        by_lang[lang] += 1
        per_doc[rel] += 1
        doc_lang = rel.split("/")[0]
        if doc_lang != lang:
            cross[lang] += 1
        # the question is written in its language
        if lang == "en":
            c.check(not CYRILLIC.search(q["question"]), f"{qid}: Cyrillic in an English question")
        else:
            letters = re.findall(r"[^\W\d_]", q["question"])
            c.check(
                sum(1 for ch in letters if CYRILLIC.match(ch)) / len(letters) > 0.6,
                f"{qid}: a Russian question mostly not in Cyrillic",
            )
        # the answer phrase
        a = norm(answer)
        c.check(2 <= len(answer.split()) <= 8, f"{qid}: answer has {len(answer.split())} words, expected 2 to 8")
        c.check(a not in norm(q["question"]), f"{qid}: the question contains its answer")
        count = whole[rel].count(a)
        c.check(count == 1, f"{qid}: answer {answer!r} occurs {count} times in {rel}, expected once")
        if rel.endswith(".pdf"):
            if c.check(isinstance(page, int) and 1 <= page <= len(normed[rel]), f"{qid}: bad page {page!r}"):
                on = [i + 1 for i, t in enumerate(normed[rel]) if a in t]
                c.check(on == [page], f"{qid}: answer {answer!r} is on page(s) {on}, not on page {page} only")
                if page >= 2:
                    coverage["on page 2+ of a PDF"].append(qid)
        else:
            c.check(page is None, f"{qid}: page must be null for a {rel.rsplit('.', 1)[1]} document")
        siblings = next(docs for docs in TOPICS.values() if rel in docs)
        for other in rels:
            if other != rel and a in whole[other]:
                kind = "its near-distractor" if other in siblings else "another document"
                c.check(False, f"{qid}: answer {answer!r} also occurs in {kind} {other}")
        kind, level = locate(rel, answer)
        c.check(kind != "?", f"{qid}: answer not found in the source of {rel}")
        if kind in ("table", "list"):
            coverage[f"in a {kind}"].append(qid)
        if level >= 3:
            coverage["under a heading of level 3+"].append(qid)

    c.check(by_lang == Counter(en=30, ru=30), f"questions per language {dict(by_lang)}, expected 30 and 30")
    for lang in ("en", "ru"):
        share = cross[lang] / max(by_lang[lang], 1)
        c.check(0.2 <= share <= 0.3, f"{lang}: {cross[lang]} cross-language questions, about a quarter expected")
    for rel in rels:
        c.check(per_doc[rel] >= 2, f"{rel}: {per_doc[rel]} questions, expected at least 2")
    for what in ("in a table", "in a list", "under a heading of level 3+", "on page 2+ of a PDF"):
        c.check(len(coverage[what]) >= 5, f"only {len(coverage[what])} answers {what}")

    # --- report --------------------------------------------------------------------------------------------------
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} documents, {size / 1024:.0f} KiB")
    for rel, path in zip(rels, paths):
        extra = f", {len(pages[rel])} pages" if path.suffix == ".pdf" else ""
        print(f"  {rel:<50} {word_counts[rel]:>5} words{extra}, {per_doc[rel]} questions")
    print(f"{len(questions)} questions: {dict(by_lang)}; asked across languages: {dict(cross)}")
    for what, qids in coverage.items():
        print(f"  answers {what}: {len(qids)}")
    if c.failures:
        print(f"\nFAILED ({len(c.failures)}):")
        for f in c.failures:
            print(f"  - {f}")
        return 1
    print("\nOK: every answer occurs once in its document (on its page for PDFs) and in no other document")
    return 0


if __name__ == "__main__":
    sys.exit(main())
