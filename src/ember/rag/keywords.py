"""Words for full-text search that carry Russian: lowercased, ё folded to е, each word stemmed in its own language.

SQLite's FTS5 stems only English (its `porter` tokenizer), and a Russian word changes its ending with every case
("водоканал", "водоканала", "водоканалом"), so a question rarely repeats a document's exact forms. Stems are made here
with the Snowball stemmers (PyStemmer, in C) and FTS5 sees them as plain words, both in what is stored for a chunk
(`search_text`) and in what a question asks for (`match_query`). Nothing is dropped: stop words are left to BM25,
whose IDF already weighs them near zero.
"""

import re
import threading
import unicodedata

import Stemmer

# Runs of letters and digits: "covid-19" is "covid" and "19", and "snake_case" two words, as FTS5 splits them too.
_WORD = re.compile(r"[^\W_]+")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
# Snowball's Russian stemmer takes "-ла"/"-на" after а/я for a past-tense or participle ending, so "водоканала" and
# "океаны" lose a letter that "водоканалу" and "океаном" keep ("водокана" against "водоканал"). Dropping that letter
# from every stem ending so gives all the forms of such a noun one stem; the verbs it touches already end so.
_RUSSIAN_OVERSTEM = re.compile(r"[ая][лн]$")

# A PyStemmer stemmer keeps internal state and must not be used by two threads at once (its own documentation says
# so): each thread gets its own pair, which needs no lock on the path every chunk and question takes.
_local = threading.local()


def _stemmers() -> tuple["Stemmer.Stemmer", "Stemmer.Stemmer"]:
    pair = getattr(_local, "stemmers", None)
    if pair is None:
        pair = _local.stemmers = (Stemmer.Stemmer("russian"), Stemmer.Stemmer("english"))
    return pair


def search_terms(text: str) -> list[str]:
    """Every word of `text` in order, lowercased and stemmed: "Водоканалы" and "водоканала" give one term, as do
    "running" and "runs"."""
    russian, english = _stemmers()
    # NFC first: a letter typed as a base and a combining mark ("й" as "и" + U+0306) would split the word in two.
    text = unicodedata.normalize("NFC", text).casefold().replace("ё", "е")
    terms = []
    for word in _WORD.findall(text):
        if _CYRILLIC.search(word):
            stem = russian.stemWord(word)
            terms.append(stem[:-1] if _RUSSIAN_OVERSTEM.search(stem) else stem)
        else:
            terms.append(english.stemWord(word))
    return terms


def search_text(text: str) -> str:
    """What the full-text table stores for a chunk: its terms, space-separated."""
    return " ".join(search_terms(text))


def match_query(text: str) -> str | None:
    """An FTS5 MATCH expression for a question: any of its terms, OR-ed (BM25 ranks chunks with more and rarer ones
    first), or None when it has no words. Each term is double-quoted, so FTS5's syntax in a question (AND, OR, NOT,
    NEAR, *, ^, :, parentheses, quotes) is only ever searched for as text."""
    terms = dict.fromkeys(search_terms(text))
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
