"""Words for full-text search that carry Russian: lowercased, ё folded to е, each word stemmed in its own language.

SQLite's FTS5 stems only English (its `porter` tokenizer), and a Russian word changes its ending with every case
("водоканал", "водоканала", "водоканалом"), so a question rarely repeats a document's exact forms. Stems are made here
with the Snowball stemmers (PyStemmer, in C) and FTS5 sees them as plain words, both in what is stored for a chunk
(`search_text`) and in what a question asks for (`match_query`). Nothing is dropped: stop words are left to BM25,
whose IDF already weighs them near zero.

Names cross languages by sound, not by spelling: an English question about a Russian document writes "Lesnogorsk"
and "Volzhsky Mayak", a Russian one about an English document "Порт-Кэллоуэй" and "Миллбрук". Each capitalized word
also gets a sound key (`sound_key`: transliterated, like consonants merged, every run of vowels one "a"), stored and
searched beside the stems, so such a name finds its document in either script.
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

# Cyrillic to Latin by sound, for sound keys only (33 letters: not worth a transliteration package). Vowels all become
# "a" later, so only their being vowels matters.
_LATIN = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ж": "zh", "з": "z", "и": "i", "й": "i", "к": "k",
    "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "h",
    "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sh", "ъ": "", "ы": "i", "ь": "", "э": "e", "ю": "u", "я": "a",
    "і": "i", "ї": "i", "є": "e", "ґ": "g", "ў": "u"})
# Spellings of one sound, English and transliterated: "Calloway" and "Кэллоуэй" both become "kala".
_SAME_SOUND = (("ph", "f"), ("ck", "k"), ("kh", "h"), ("c", "k"), ("q", "k"), ("x", "ks"), ("w", "u"), ("y", "i"))
_VOWELS = re.compile(r"[aeiou]+")
_REPEATS = re.compile(r"(.)\1+")
SOUND_PREFIX = "qq"  # marks a sound key among the stems: a key never holds "q" (merged into "k")
MIN_SOUND_KEY = 3  # shorter keys ("ag" for "Юг") would match too much

# A PyStemmer stemmer keeps internal state and must not be used by two threads at once (its own documentation says
# so): each thread gets its own pair, which needs no lock on the path every chunk and question takes.
_local = threading.local()


def _stemmers() -> tuple["Stemmer.Stemmer", "Stemmer.Stemmer"]:
    pair = getattr(_local, "stemmers", None)
    if pair is None:
        pair = _local.stemmers = (Stemmer.Stemmer("russian"), Stemmer.Stemmer("english"))
    return pair


def search_terms(text: str, sound_keys: bool = True) -> list[str]:
    """Every word of `text` in order, lowercased and stemmed ("Водоканалы" and "водоканала" give one term, as do
    "running" and "runs"), each capitalized word followed by its sound key (unless `sound_keys` is false)."""
    return [term for _, stem, key in _words(text) for term in (stem, key if sound_keys else None) if term]


def name_keys(question: str) -> list[str]:
    """The sound keys of a question's names: its capitalized words but the first (capitalized as the sentence's
    start: "What", "Какой")."""
    return list(dict.fromkeys(key for _, _, key in _words(question)[1:] if key))


def _words(text: str) -> list[tuple[str, str, str | None]]:
    """(word, stem, sound key or None) for each word of `text`."""
    russian, english = _stemmers()
    # NFC first: a letter typed as a base and a combining mark ("й" as "и" + U+0306) would split the word in two.
    text = unicodedata.normalize("NFC", text).replace("ё", "е").replace("Ё", "Е")
    out = []
    for word in _WORD.findall(text):
        lower = word.casefold()
        if _CYRILLIC.search(lower):
            stem = russian.stemWord(lower)
            stem = stem[:-1] if _RUSSIAN_OVERSTEM.search(stem) else stem
        else:
            stem = english.stemWord(lower)
        out.append((word, stem, sound_key(stem) if word[0].isupper() else None))
    return out


def sound_key(stem: str) -> str | None:
    """How a (stemmed) name sounds, the same from either script: "lesnogorsk" and "лесногорск" give "qqlasnagarsk".
    None for a word too short to tell apart, or with digits."""
    latin = stem.translate(_LATIN)
    if not latin.isascii() or not latin.isalpha():
        return None
    for spelling, sound in _SAME_SOUND:
        latin = latin.replace(spelling, sound)
    # A final vowel is an ending ("Маяка", "Kamennaya" against "каменн-"): left out.
    key = _REPEATS.sub(r"\1", _VOWELS.sub("a", latin)).removesuffix("a")
    return SOUND_PREFIX + key if len(key) >= MIN_SOUND_KEY else None


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
