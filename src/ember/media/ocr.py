"""Reading the text in images and scanned PDFs (OCR), in English and Russian by default.

A file becomes pages: each frame of a TIFF, the first frame of any other image, each page of a PDF rendered by PDFium
at 300 dpi. Every page of a PDF is read by OCR, text layer or not (`ember rag` reads a text layer itself and sends
only image-only PDFs here). Tesseract reads each page in its own process, several pages at once, one per core (see
ember.engines.tesseract); PDFium renders the pages one at a time meanwhile, as it may not be called from two threads
at once.

A page's lines keep their boxes and confidence (JSON, hOCR), and its text is the lines joined, a blank line between
paragraphs.
"""

import io
import os
import re
import tempfile
import threading
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.core.errors import BadRequest
from ember.engines import tesseract
from ember.engines.tesseract import DEFAULT_LANGUAGES, TesseractFailed
from ember.extras import require

SUPPORTED = "PNG, JPEG, TIFF, WebP, BMP, GIF or PDF"
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF")
PDF_DPI = 300
# The longest side a PDF page is rendered to: an A0 poster at 300 dpi would be 140 megapixels, minutes of Tesseract.
MAX_PDF_SIDE = 10_000
_PDFIUM = threading.Lock()  # PDFium is not thread-safe, across documents too

Progress = Callable[[int, int], None]  # (pages done, pages in the file): once with 0 first, then after each page


class UnreadableImage(BadRequest):
    """A file that cannot be read by OCR; `reason` says why and what to do, the message names the file too."""

    def __init__(self, filename: str, reason: str):
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason


@dataclass(frozen=True)
class Line:
    text: str
    box: tuple[int, int, int, int]  # left, top, width, height in the page's pixels
    confidence: float  # 0-100: the mean of Tesseract's confidence in the line's words


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    width: int  # pixels, as read (a PDF page rendered at 300 dpi)
    height: int
    lines: list[Line]
    text: str  # the lines, one per row, a blank row between paragraphs
    hocr: str | None = None  # the page as an hOCR document, when asked for


def check_languages(languages: str) -> list[str]:
    """The languages of "eng+rus" as a list, or BadRequest naming the package of one that is not installed."""
    parsed = tesseract.parse_languages(languages)
    tesseract.engine().check_languages(parsed)
    return parsed


def read(path: Path, languages: str = DEFAULT_LANGUAGES, *, hocr: bool = False, workers: int | None = None,
         progress: Progress | None = None) -> list[Page]:
    """The pages of an image or PDF file, read by OCR. Pages run in parallel on up to `workers` processes (default:
    one per core)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UnreadableImage(str(path), "no such file") from None
    except IsADirectoryError:
        raise UnreadableImage(str(path), f"is a folder; give image or PDF files ({SUPPORTED})") from None
    except OSError as e:
        raise UnreadableImage(str(path), f"cannot be read: {e.strerror or e}") from None
    return read_bytes(data, str(path), languages, hocr=hocr, workers=workers, progress=progress)


def read_bytes(data: bytes, filename: str, languages: str = DEFAULT_LANGUAGES, *, hocr: bool = False,
               workers: int | None = None, progress: Progress | None = None) -> list[Page]:
    """`read` for a file's contents (an upload); `filename` names it in errors and in the hOCR."""
    parsed = check_languages(languages)
    if data[:5] == b"%PDF-":
        count, frames = _pdf_pages(data, filename)
    else:
        count, frames = _image_frames(data, filename)
    if count == 0:
        raise UnreadableImage(filename, "has no pages")
    return _recognize(frames, count, filename, parsed, hocr, workers, progress)


def image_text(data: bytes, name: str = "image", languages: str = DEFAULT_LANGUAGES) -> str:
    """All the text of one image (every page of a PDF), for a model that cannot see: pages apart by blank lines."""
    return "\n\n".join(page.text for page in read_bytes(data, name, languages) if page.text)


def to_json(pages: list[Page]) -> dict[str, Any]:
    return {"pages": [{"page": p.number, "width": p.width, "height": p.height, "text": p.text,
                       "lines": [{"text": line.text, "box": list(line.box), "confidence": line.confidence}
                                 for line in p.lines],
                       **({"hocr": p.hocr} if p.hocr is not None else {})} for p in pages]}


def hocr_document(pages: list[Page]) -> str:
    """One hOCR document with every page: the first page's document with the others' ocr_page elements added."""
    documents = [p.hocr for p in pages if p.hocr]
    if not documents:
        return ""
    bodies = [doc[doc.index("<body>") + len("<body>"):doc.rindex("</body>")] for doc in documents]
    first = documents[0]
    return first[:first.index("<body>") + len("<body>")] + "".join(bodies) + first[first.rindex("</body>"):]


# -- pages in -------------------------------------------------------------------------------------------------------

Frame = tuple[Any, int | None]  # a PIL image ready for Tesseract, and its resolution in dpi if known


def _image_frames(data: bytes, filename: str) -> tuple[int, Generator[Frame]]:
    Image = require("PIL.Image", "media", "OCR")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.UnidentifiedImageError:
        raise UnreadableImage(filename, f"is not an image or PDF that OCR reads ({SUPPORTED})") from None
    except Exception as e:  # a damaged header can make Pillow raise almost anything
        raise UnreadableImage(filename, f"the image is damaged ({e})") from None
    count = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1  # GIF and WebP frames are animation

    def frames() -> Generator[Frame]:
        for index in range(count):
            try:
                image.seek(index)
                plain = _plain(image)
            except Image.DecompressionBombError as e:
                raise UnreadableImage(filename, f"the image is too large to read ({e})") from None
            except Exception as e:  # a damaged or cut short image raises as Pillow decodes it
                where = f"frame {index + 1}: " if count > 1 else ""
                raise UnreadableImage(filename, f"{where}the image is damaged or cut short ({e})") from None
            dpi = image.info.get("dpi")
            yield plain, round(dpi[0]) if dpi and 70 <= dpi[0] <= 2400 else None

    return count, frames()


def _plain(frame):
    """A frame as Tesseract reads it: upright, in black-and-white, grey or RGB, transparency made white paper."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(frame)  # a loaded copy: the next frame's seek leaves it alone
    if image.mode in ("1", "L", "RGB"):
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # 16-bit grey scans
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def _pdf_pages(data: bytes, filename: str) -> tuple[int, Generator[Frame]]:
    pdfium = require("pypdfium2", "media", "OCR of PDF files")
    with _PDFIUM:
        try:
            document = pdfium.PdfDocument(data)
            count = len(document)
        except pdfium.PdfiumError as e:
            reason = "is encrypted; remove the password first" if "password" in str(e).lower() else \
                f"the PDF is damaged ({e})"
            raise UnreadableImage(filename, reason) from None

    def frames() -> Generator[Frame]:
        try:
            for index in range(count):
                with _PDFIUM:
                    try:
                        page = document[index]
                        width, height = page.get_size()  # points
                        scale = min(PDF_DPI / 72, MAX_PDF_SIDE / max(width, height, 1))
                        image = page.render(scale=scale, grayscale=True).to_pil()
                        page.close()
                    except pdfium.PdfiumError as e:
                        raise UnreadableImage(filename, f"page {index + 1} cannot be rendered ({e})") from None
                yield image, round(scale * 72)
        finally:
            with _PDFIUM:
                document.close()

    return count, frames()


# -- Tesseract over the pages ---------------------------------------------------------------------------------------

# One single-threaded Tesseract per core in this whole process: several requests (or an ingest beside a request) each
# with a pool of their own would otherwise run more processes than cores, and every one of them slower.
_TESSERACT_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 1)

def _recognize(frames: Generator[Frame], count: int, filename: str, languages: list[str], hocr: bool,
               workers: int | None, progress: Progress | None) -> list[Page]:
    threads = max(1, min(workers or os.cpu_count() or 1, count))
    done = 0
    done_lock = threading.Lock()

    def page(number: int, frame: Frame) -> Page:
        nonlocal done
        result = _read_page(number, frame, filename, languages, hocr)
        with done_lock:
            done += 1
            finished = done
        if progress:
            progress(finished, count)
        return result

    if progress:
        progress(0, count)
    futures: list[Future[Page]] = []
    pool = ThreadPoolExecutor(threads, thread_name_prefix="ember-ocr")
    try:
        for number, frame in enumerate(frames, 1):
            # A rendered page is ~9 MB (26 in colour): only a few wait their turn, not a whole book.
            pending = [f for f in futures if not f.done()]
            while len(pending) >= 2 * threads:
                pending = list(wait(pending, return_when=FIRST_COMPLETED).not_done)
            futures.append(pool.submit(page, number, frame))
            if any(f.done() and f.exception() for f in futures):
                break  # a page failed: the file has failed, the rest need not be rendered
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        frames.close()  # a PDF left part-way is closed now, not when collected


def _read_page(number: int, frame: Frame, filename: str, languages: list[str], hocr: bool) -> Page:
    image, dpi = frame
    # Uncompressed TIFF: written and read fastest, and it carries the resolution to Tesseract.
    with tempfile.TemporaryDirectory(prefix="ember-ocr-") as folder:
        path = Path(folder) / "page.tif"
        image.save(path, format="TIFF", **({"dpi": (dpi, dpi)} if dpi else {}))
        try:
            with _TESSERACT_SLOTS:
                recognized = tesseract.engine().read(path, languages, hocr=hocr)
        except TesseractFailed as e:
            raise UnreadableImage(filename, f"page {number}: {e.message}") from None
    lines = [Line(text, box, confidence) for box, confidence, text in recognized.lines]
    rows: list[str] = []
    for i, line in enumerate(lines):
        if i and recognized.paragraphs[i] != recognized.paragraphs[i - 1]:
            rows.append("")
        rows.append(line.text)
    page_hocr = _named_hocr(recognized.hocr, filename, number) if recognized.hocr is not None else None
    return Page(number, image.width, image.height, lines, "\n".join(rows), page_hocr)


def _named_hocr(document: str, filename: str, number: int) -> str:
    """Tesseract's hOCR of one page, naming the file and page instead of the temporary file it read, with ids that
    stay unique when pages are put together (page_1 → page_3, line_1_4 → line_3_4)."""
    image_name = filename.replace("&", "&amp;").replace('"', "&quot;").replace("'", "&#39;").replace("<", "&lt;")
    document = re.sub(r'image "[^"]*"', lambda _: f'image "{image_name}"', document, count=1)
    document = re.sub(r"ppageno \d+", f"ppageno {number - 1}", document, count=1)
    return re.sub(r"id='(\w+?)_1(?=['_])", lambda m: f"id='{m.group(1)}_{number}", document)
