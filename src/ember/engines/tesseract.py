"""Image to text with Tesseract: ember's `Recognizer`.

Tesseract holds no model between calls: each page is one `tesseract` process (through pytesseract), started with
eng+rus in ~0.15 s here, against ~2 s to read an A4 page. So there is nothing for the scheduler to load or evict, and
pages run in parallel simply as processes, one per core.

Each process runs on one thread. Debian builds Tesseract with OpenMP, and its threads cost far more than they give:
on the 2-core machine here one A4 page took 8.5 s with them and 2.3 s without, and two pages at once took 12.9 s
against 2.7 s. OMP_THREAD_LIMIT=1 goes into the environment of the tesseract processes only: torch and ONNX Runtime
in this same process read the OpenMP variables too, and must keep their threads.
"""

import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ember.core.errors import BadRequest, EmberError
from ember.engines.base import EngineStatus, LoadSpec
from ember.extras import require

DEFAULT_LANGUAGES = "eng+rus"  # this order: with rus first, English words come out in Cyrillic letters
TESSERACT_MISSING = ("OCR needs the Tesseract program, which is not installed: "
                     "apt-get install tesseract-ocr tesseract-ocr-rus")
CHILD_ENVIRONMENT = {"OMP_THREAD_LIMIT": "1"}
NOT_LANGUAGES = {"osd"}  # installed beside the languages: orientation and script detection, not a script to read

Box = tuple[int, int, int, int]  # left, top, width, height in pixels


class TesseractFailed(BadRequest):
    """Tesseract refused an image (too large, damaged); the message is Tesseract's own."""


class _TesseractEnvironment(Mapping):
    """os.environ as it is at each call, plus CHILD_ENVIRONMENT: what tesseract processes are started with."""

    def __getitem__(self, key: str) -> str:
        return CHILD_ENVIRONMENT[key] if key in CHILD_ENVIRONMENT else os.environ[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**os.environ, **CHILD_ENVIRONMENT})

    def __len__(self) -> int:
        return len({**os.environ, **CHILD_ENVIRONMENT})


@cache
def _pytesseract():
    module = require("pytesseract", "media", "OCR")
    # pytesseract starts every tesseract process with `env=` its module's `environ` (os.environ, imported by name):
    # the one seam it has for the children's environment, and one that changes nothing else in this process.
    module.pytesseract.environ = _TesseractEnvironment()
    return module


@dataclass(frozen=True)
class Recognized:
    """What Tesseract read in one image."""

    lines: list[tuple[Box, float, str]]  # (box, confidence 0-100, text), in reading order
    paragraphs: list[int]  # the paragraph each line belongs to, numbered from 0 in reading order
    hocr: str | None  # the page as hOCR (XHTML), when asked for


def parse_languages(spec: str) -> list[str]:
    """"eng+rus" as ["eng", "rus"]; Tesseract tries them in this order."""
    languages = [part.strip() for part in spec.split("+")]
    if not any(languages) or not all(_LANGUAGE_CODE.fullmatch(part) for part in languages):
        raise BadRequest(f"OCR languages {spec!r}: give Tesseract language codes joined by '+', "
                         f"e.g. {DEFAULT_LANGUAGES}")
    return languages


# Tesseract's names for its trained data: eng, chi_sim, deu_latf, script/Cyrillic.
_LANGUAGE_CODE = re.compile(r"(?:script/)?[A-Za-z][A-Za-z_]{1,30}")


def _package(language: str) -> str:
    """The Debian package of a Tesseract language: chi_sim is in tesseract-ocr-chi-sim."""
    return "tesseract-ocr-" + language.lower().replace("_", "-")


def _lines(tsv: str) -> tuple[list[tuple[Box, float, str]], list[int]]:
    """Lines, and the paragraph of each, from Tesseract's TSV: a row per page, block, paragraph, line and word
    (levels 1-5); a line's box is on its own row, its confidence the mean of its words'."""
    rows = [row.split("\t") for row in tsv.splitlines()[1:]]
    line_boxes: dict[tuple[str, str, str], Box] = {}
    words: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    for row in rows:
        if len(row) < 12:
            continue
        level, _, block, paragraph, line, _, left, top, width, height, confidence, text = row[:12]
        key = (block, paragraph, line)
        if level == "4":
            line_boxes[key] = (int(left), int(top), int(width), int(height))
        elif level == "5" and text.strip():
            words.setdefault(key, []).append((text.strip(), max(0.0, float(confidence))))
    lines, paragraphs, paragraph_keys = [], [], []
    for key, box in line_boxes.items():  # dicts keep Tesseract's reading order
        if key not in words:
            continue
        texts, confidences = zip(*words[key])
        lines.append((box, round(sum(confidences) / len(confidences), 2), " ".join(texts)))
        if not paragraph_keys or paragraph_keys[-1] != key[:2]:
            paragraph_keys.append(key[:2])
        paragraphs.append(len(paragraph_keys) - 1)
    return lines, paragraphs


class Tesseract:
    """The Tesseract program, shared by every OCR call in the process; safe to use from several threads at once."""

    def __init__(self) -> None:
        self._pt = _pytesseract()
        # No model file: what is loaded is the program, found on PATH.
        self.spec = LoadSpec(Path(self._pt.pytesseract.tesseract_cmd))
        self._lock = threading.Lock()
        self._busy = 0
        self._installed: set[str] | None = None

    def status(self) -> EngineStatus:
        return EngineStatus(weights_bytes=0, cache_bytes=0, context=0, slots=os.cpu_count() or 1,
                            busy_slots=self._busy, threads=1, runner="tesseract")

    def close(self) -> None:
        pass  # nothing is held between pages

    def installed_languages(self, *, fresh: bool = False) -> set[str]:
        with self._lock:
            if self._installed is None or fresh:
                try:
                    self._installed = set(self._pt.get_languages()) - NOT_LANGUAGES
                except self._pt.TesseractNotFoundError:
                    raise EmberError(TESSERACT_MISSING) from None
            return self._installed

    def check_languages(self, languages: list[str]) -> None:
        """BadRequest naming the package to install for a language Tesseract does not have."""
        missing = [lang for lang in languages if lang not in self.installed_languages()]
        if missing:  # perhaps installed since the list was read
            missing = [lang for lang in languages if lang not in self.installed_languages(fresh=True)]
        if missing:
            have = ", ".join(sorted(self.installed_languages())) or "none"
            raise BadRequest(f"OCR language '{missing[0]}' is not installed: apt-get install {_package(missing[0])} "
                             f"(installed: {have})")

    def read(self, image: Path, languages: list[str], *, hocr: bool = False) -> Recognized:
        """Lines of an image file Tesseract reads (TIFF, PNG, JPEG, ...), and its hOCR if asked for: one process.
        The resolution stored in the file is used; without one Tesseract estimates it from the text's height."""
        with self._lock:
            self._busy += 1
        try:
            outputs = self._pt.run_and_get_multiple_output(str(image), ["tsv", "hocr"] if hocr else ["tsv"],
                                                           lang="+".join(languages))
        except self._pt.TesseractNotFoundError:
            raise EmberError(TESSERACT_MISSING) from None
        except self._pt.TesseractError as e:
            raise TesseractFailed(f"Tesseract could not read it: {e.message or f'exit status {e.status}'}") from None
        finally:
            with self._lock:
                self._busy -= 1
        lines, paragraphs = _lines(outputs[0])
        return Recognized(lines, paragraphs, outputs[1].decode("utf-8") if hocr else None)

    def recognize(self, image: Path, languages: list[str]) -> list[tuple[Box, float, str]]:
        return self.read(image, languages).lines


@cache
def engine() -> Tesseract:
    return Tesseract()
