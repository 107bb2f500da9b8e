"""OCR with the real Tesseract (English and Russian), through the library, the CLI's function and HTTP.

The images are drawn here with Pillow in DejaVu Sans, so what they hold is known to the letter.
"""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from ember.api import ocr as ocr_api
from ember.api.app import create_app
from ember.api.routes import flat_routes
from ember.cli.ocr import ocr_command
from ember.core.errors import BadRequest, EmberError
from ember.engines import tesseract
from ember.media import ocr
from tests.helpers import settings

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
LINES = ["The quick brown fox jumps", "over the lazy dog today", "Съешь же ещё этих мягких",
         "французских булок, да выпей чаю"]
PAGE_ONE = "The ferry leaves pier four at noon"
PAGE_TWO = "Библиотека открыта каждый день"
MISSING_LANGUAGE = "deu"


def draw(lines: list[str], size: tuple[int, int] = (1400, 420)) -> Image.Image:
    font = ImageFont.truetype(FONT, 40)
    image = Image.new("L", size, 255)
    pen = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        pen.text((60, 40 + i * 80), line, font=font, fill=0)
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ocr")
    found = {"png": folder / "mixed.png", "pdf": folder / "scan.pdf", "corrupt": folder / "broken.png",
             "txt": folder / "notes.txt"}
    draw(LINES).save(found["png"], dpi=(300, 300))
    first, second = draw([PAGE_ONE], (1400, 160)), draw([PAGE_TWO], (1400, 160))
    first.save(found["pdf"], save_all=True, append_images=[second], resolution=300)  # pictures only, no text layer
    found["corrupt"].write_bytes(found["png"].read_bytes()[:2000])  # a real PNG header, the data cut short
    found["txt"].write_text("plain text, not a picture\n", encoding="utf-8")
    return found


@pytest.fixture(scope="module")
def mixed(files) -> list[ocr.Page]:
    return ocr.read(files["png"])


@pytest.fixture(scope="module")
def http(tmp_path_factory) -> TestClient:
    app = create_app(settings(tmp_path_factory.mktemp("home")))
    if not any(getattr(route, "path", None) == "/api/ocr" for route in flat_routes(app.routes)):
        app.include_router(ocr_api.router)  # until app.py includes it
    return TestClient(app, base_url="http://127.0.0.1:11434")  # a loopback Host, as the guard wants


def upload(*paths: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (p.name, p.read_bytes())) for p in paths]


def test_the_missing_language_is_missing():
    """The tests below rely on it."""
    assert MISSING_LANGUAGE not in tesseract.engine().installed_languages()


# -- the library ----------------------------------------------------------------------------------------------------

def test_english_and_russian_lines_come_back_exactly(mixed):
    [page] = mixed
    assert (page.number, page.width, page.height, page.hocr) == (1, 1400, 420, None)
    assert [line.text for line in page.lines] == LINES
    assert [row for row in page.text.splitlines() if row] == LINES  # blank rows only between paragraphs
    for line in page.lines:
        left, top, width, height = line.box
        assert left >= 0 and top >= 0 and width > 0 and height > 0
        assert left + width <= page.width and top + height <= page.height
        assert 50 < line.confidence <= 100
    tops = [line.box[1] for line in page.lines]
    assert tops == sorted(tops)

    body = ocr.to_json(mixed)
    assert [line["text"] for line in body["pages"][0]["lines"]] == LINES
    assert body["pages"][0]["lines"][0]["box"] == list(page.lines[0].box)
    assert json.loads(json.dumps(body, ensure_ascii=False)) == body


def test_an_image_only_pdf_gives_its_pages_in_order(files):
    progress = []
    pages = ocr.read(files["pdf"], workers=2, progress=lambda done, total: progress.append((done, total)))
    assert [p.number for p in pages] == [1, 2]
    assert [p.text for p in pages] == [PAGE_ONE, PAGE_TWO]
    # Rendered back at the 300 dpi it was made at (PDF points round to a pixel either way).
    assert abs(pages[0].width - 1400) <= 1 and abs(pages[0].height - 160) <= 1
    assert progress[0] == (0, 2) and sorted(progress[1:]) == [(1, 2), (2, 2)]


def test_image_text_for_chat_and_other_image_kinds(files):
    image = Image.open(files["png"])
    for kind, options in (("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})):
        data = _encoded(image.convert("RGB"), kind, **options)
        assert [row for row in ocr.image_text(data).splitlines() if row] == LINES


def _encoded(image: Image.Image, kind: str, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def test_bad_files_are_named_and_say_what_is_read(files):
    with pytest.raises(ocr.UnreadableImage) as corrupt:
        ocr.read(files["corrupt"])
    assert str(files["corrupt"]) in corrupt.value.message and "damaged" in corrupt.value.reason
    with pytest.raises(ocr.UnreadableImage) as text:
        ocr.read(files["txt"])
    assert str(files["txt"]) in text.value.message and "PNG, JPEG, TIFF, WebP, BMP, GIF or PDF" in text.value.reason
    with pytest.raises(ocr.UnreadableImage, match="no such file"):
        ocr.read(files["png"].with_name("absent.png"))
    with pytest.raises(ocr.UnreadableImage, match="damaged"):
        ocr.read_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 4, "broken.pdf")
    assert isinstance(corrupt.value, BadRequest)


def test_a_missing_language_names_its_package(files):
    with pytest.raises(BadRequest, match=f"'{MISSING_LANGUAGE}' is not installed: apt-get install "
                                         f"tesseract-ocr-{MISSING_LANGUAGE}"):
        ocr.read(files["png"], f"eng+{MISSING_LANGUAGE}")
    for nonsense in ("+", "eng+", "../../etc"):  # not a language: not passed to Tesseract, nor named as a package
        with pytest.raises(BadRequest, match="give Tesseract language codes"):
            ocr.read(files["png"], nonsense)


# -- the CLI --------------------------------------------------------------------------------------------------------

def test_cli_reads_the_good_file_and_reports_the_bad_ones(files, capsys):
    code = ocr_command([files["corrupt"], files["txt"], files["png"]], format="json")
    captured = capsys.readouterr()
    assert code == 1
    assert f"ember: {files['corrupt']}: " in captured.err and f"ember: {files['txt']}: " in captured.err
    body = json.loads(captured.out)
    assert [f["file"] for f in body["files"]] == [str(files[k]) for k in ("corrupt", "txt", "png")]
    assert "error" in body["files"][0] and "error" in body["files"][1]
    assert [line["text"] for line in body["files"][2]["pages"][0]["lines"]] == LINES


def test_cli_text_has_headers_for_several_pages(files, capsys):
    assert ocr_command([files["pdf"]]) == 0
    out = capsys.readouterr().out
    assert out == f"==> {files['pdf']} (page 1) <==\n{PAGE_ONE}\n\n==> {files['pdf']} (page 2) <==\n{PAGE_TWO}\n"


def test_cli_hocr_and_refusals(files, capsys):
    assert ocr_command([files["pdf"]], format="hocr") == 0
    document = ET.fromstring(capsys.readouterr().out.encode())
    pages = [e for e in document.iter() if e.get("class") == "ocr_page"]
    assert [p.get("id") for p in pages] == ["page_1", "page_2"]
    assert pages[1].get("title").startswith(f'image "{files["pdf"]}"') and "ppageno 1" in pages[1].get("title")
    ids = [e.get("id") for e in document.iter() if e.get("id")]
    assert len(ids) == len(set(ids))
    words = [e.text for e in document.iter() if e.get("class") == "ocrx_word"]
    assert " ".join(words) == f"{PAGE_ONE} {PAGE_TWO}"

    with pytest.raises(EmberError, match=f"tesseract-ocr-{MISSING_LANGUAGE}"):
        ocr_command([files["png"]], lang=MISSING_LANGUAGE)
    with pytest.raises(EmberError, match="--format"):
        ocr_command([files["png"]], format="pdf")


# -- HTTP -----------------------------------------------------------------------------------------------------------

def test_http_reads_good_files_and_names_the_bad(http, files):
    r = http.post("/api/ocr", files=upload(files["corrupt"], files["png"], files["txt"]))
    assert r.status_code == 200, r.text
    broken, good, text = r.json()["files"]
    assert broken["file"] == "broken.png" and "damaged" in broken["error"]
    assert text["file"] == "notes.txt" and "PDF" in text["error"]
    assert good["file"] == "mixed.png" and [line["text"] for line in good["pages"][0]["lines"]] == LINES

    r = http.post("/api/ocr", files=upload(files["corrupt"], files["txt"]))
    assert r.status_code == 400
    assert "broken.png" in r.json()["error"] and "notes.txt" in r.json()["error"]


def test_http_formats_and_languages(http, files):
    r = http.post("/api/ocr", files=upload(files["pdf"]), data={"format": "text", "lang": "eng+rus"})
    assert r.status_code == 200, r.text
    assert r.json() == {"files": [{"file": "scan.pdf", "pages": [{"page": 1, "text": PAGE_ONE},
                                                                 {"page": 2, "text": PAGE_TWO}]}]}

    r = http.post("/api/ocr", files=upload(files["png"]), data={"format": "hocr"})
    assert r.status_code == 200, r.text
    hocr = r.json()["files"][0]["hocr"]
    assert "class='ocr_page'" in hocr and "Съешь" in hocr and 'image "mixed.png"' in hocr

    r = http.post("/api/ocr", files=upload(files["png"]), data={"lang": f"eng+{MISSING_LANGUAGE}"})
    assert r.status_code == 400
    assert f"apt-get install tesseract-ocr-{MISSING_LANGUAGE}" in r.json()["error"]

    r = http.post("/api/ocr", files=upload(files["png"]), data={"format": "pdf"})
    assert r.status_code == 400 and "'format'" in r.json()["error"]
