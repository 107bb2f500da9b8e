"""Collections take images (read by OCR, a scanned PDF page by page) and recordings (transcribed, each section under
its time in the recording, so that a citation says where to listen)."""

import json
import subprocess

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _page(lines: list[str]) -> Image.Image:
    image = Image.new("RGB", (1400, 120 + 80 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 44)
    for i, line in enumerate(lines):
        draw.text((60, 60 + 80 * i), line, fill="black", font=font)
    return image


@pytest.fixture(scope="module")
def media(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("media-docs")
    _page(["Boiler room notice", "The boiler is serviced every October."]).save(folder / "notice.png")
    _page(["Склад номер два", "Ключ от склада хранится у охранника."]).save(
        folder / "scan.pdf", save_all=True, append_images=[_page(["Page two", "Lunch is served at noon."])])
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(folder / "briefing.wav"),
                    "Good morning. The supply flight arrives on Friday at the northern airfield."], check=True)
    with httpx.Client(base_url=server.url, timeout=300) as api:
        assert api.post("/api/collections", json={"name": "media-api"}).status_code == 201
        with api.stream("POST", "/api/collections/media-api/files", json={"paths": [str(folder)]}) as r:
            final = [json.loads(line) for line in r.iter_lines() if line][-1]
        assert final["status"] == "success" and len(final["added"]) == 3, final
        yield "media-api"
        api.delete("/api/collections/media-api")


def _top(api: httpx.Client, collection: str, question: str) -> dict:
    return api.post(f"/api/collections/{collection}/query", json={"query": question, "k": 1}).json()["results"][0]


def test_images_and_scans_are_read_by_ocr(api, media):
    kinds = {f["path"].rsplit("/", 1)[-1]: f["kind"] for f in api.get(f"/api/collections/{media}").json()["files"]}
    assert kinds == {"notice.png": "image", "scan.pdf": "pdf", "briefing.wav": "audio"}
    assert "October" in _top(api, media, "When is the boiler serviced?")["text"]
    key = _top(api, media, "Где хранится ключ от склада?")
    assert "охранника" in key["text"] and key["page"] == 1
    assert _top(api, media, "What time is lunch?")["page"] == 2


def test_a_recording_is_cited_by_its_time(api, media):
    top = _top(api, media, "When does the supply flight arrive?")
    assert "Friday" in top["text"]
    assert top["headings"][0].startswith("00:00:00–00:00:0")  # the whole recording is a few seconds long
