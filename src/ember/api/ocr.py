"""OCR over HTTP (ember's own API; `ember ocr` does the same from the terminal): images and scanned PDFs uploaded as
multipart form fields named `file`, their text back as JSON.

Each file is answered on its own: one that cannot be read carries its `error` and the others are still read. The
answer is 200 when at least one file was read, and 400 (ember's error body) when none could be, or the languages
are not installed.
"""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from ember.core.errors import BadRequest
from ember.engines.tesseract import DEFAULT_LANGUAGES
from ember.media import ocr

router = APIRouter()
FORMATS = ("json", "text", "hocr")


def _answer(name: str, pages: list[ocr.Page], format: str) -> dict[str, Any]:
    if format == "hocr":
        return {"file": name, "hocr": ocr.hocr_document(pages)}
    if format == "text":
        return {"file": name, "pages": [{"page": p.number, "text": p.text} for p in pages]}
    return {"file": name, **ocr.to_json(pages)}


@router.post("/api/ocr")
async def read_files(
    file: Annotated[list[UploadFile], File(description="images (PNG, JPEG, TIFF, WebP, BMP, GIF) or PDF files")],
    lang: Annotated[str, Form(description="Tesseract languages joined by '+', in this order")] = DEFAULT_LANGUAGES,
    format: Annotated[str, Form(description="json: lines with boxes and confidence; text; hocr")] = "json",
):
    """The text of each uploaded image or PDF, read by Tesseract: by page, with each line's box and confidence."""
    if format not in FORMATS:
        raise BadRequest(f"'format' must be one of {', '.join(FORMATS)} (got {format!r})")
    await asyncio.to_thread(ocr.check_languages, lang)  # once for the request, not once a file
    answers: list[dict[str, Any]] = []
    for number, upload in enumerate(file, 1):
        name = upload.filename or f"file {number}"
        data = await upload.read()
        try:
            pages = await asyncio.to_thread(ocr.read_bytes, data, name, lang, hocr=format == "hocr")
        except ocr.UnreadableImage as e:
            answers.append({"file": name, "error": e.reason})
            continue
        answers.append(_answer(name, pages, format))
    if all("error" in answer for answer in answers):
        raise BadRequest("no file could be read: " + "; ".join(f"{a['file']}: {a['error']}" for a in answers))
    return {"files": answers}
