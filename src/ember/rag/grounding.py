"""Answers grounded in retrieved chunks: the prompt that carries them, the citations that come back, and the answer
given when nothing relevant was found (without asking the model, which would invent one).

The prompt is a setting (`PARAMETER grounding_prompt "…"` in a Modelfile, or the request's options); `{sources}` in
it is replaced by the numbered chunks, and a prompt without `{sources}` gets them appended.
"""

import re
from pathlib import Path

from ember.rag.retrieve import Hit

GROUNDING_PROMPT = (
    "Answer the user's question using only the numbered sources below. After each sentence that uses a source, "
    "cite it by its number in square brackets, like [1] or [2][3]. If the sources do not contain the answer, say "
    "that the documents do not say, and do not guess. Answer in the language of the question.\n\n"
    "Sources:\n{sources}"
)
CYRILLIC = re.compile(r"[\u0400-\u04FF]")
NOTHING_FOUND = {
    "en": "I could not find anything about this in the documents ({collections}).",
    "ru": "В документах ({collections}) об этом ничего не нашлось.",
}


def language(text: str) -> str:
    """"ru" when the text is mostly Cyrillic letters, else "en": which language to answer "nothing found" in."""
    letters = [c for c in text if c.isalpha()]
    return "ru" if letters and sum(bool(CYRILLIC.match(c)) for c in letters) * 2 >= len(letters) else "en"


def nothing_found(question: str, collections: list[str]) -> str:
    return NOTHING_FOUND[language(question)].format(collections=", ".join(collections))


def place(source: str, page: int | None, headings: list[str] | tuple[str, ...]) -> str:
    """"guide.pdf, page 2, Billing › Refunds": what a citation points to, as a reader finds it."""
    parts = [Path(source).name]
    if page is not None:
        parts.append(f"page {page}")
    if headings:
        parts.append(" › ".join(headings))
    return ", ".join(parts)


def label(hit: Hit) -> str:
    return place(hit.chunk.source, hit.chunk.page, hit.chunk.headings)


def sources_block(hits: list[Hit]) -> str:
    return "\n\n".join(f"[{n}] ({label(hit)})\n{hit.chunk.text.strip()}" for n, hit in enumerate(hits, 1))


def system_prompt(hits: list[Hit], template: str | None = None) -> str:
    template = template or GROUNDING_PROMPT
    block = sources_block(hits)
    return template.replace("{sources}", block) if "{sources}" in template else f"{template}\n\n{block}"


def citations(hits: list[Hit], collection_of: dict[int, str] | None = None) -> list[dict]:
    """The numbered sources as the answer's citations: [n] in the text is citations[n-1]."""
    out = []
    for n, hit in enumerate(hits, 1):
        c = hit.chunk
        out.append({"index": n, "source": c.source, "file": Path(c.source).name, "page": c.page,
                    "headings": list(c.headings), "start": c.start, "end": c.end, "score": round(hit.score, 6),
                    "text": c.text, **({"collection": collection_of[id(hit)]} if collection_of else {})})
    return out

