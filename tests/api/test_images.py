"""Images in chat: the bundled model cannot see, so each image is read by OCR and its text reaches the model, marked
as such; the answer says OCR was used. Through Ollama's `images` and OpenAI's image_url data URLs, and the CLI."""

import base64
import io

import ollama
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.cli.test_cli import ember

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
STEADY = {"temperature": 0, "num_predict": 24}
QUESTION = "What is the door code written on the note? Answer with the code only."


def _note_png() -> bytes:
    image = Image.new("RGB", (900, 220), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 40)
    draw.text((40, 40), "Storage room", fill="black", font=font)
    draw.text((40, 120), "The door code is 4721", fill="black", font=font)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def note() -> str:
    return base64.b64encode(_note_png()).decode()


def test_ollama_chat_and_generate_with_an_image(server, api, note):
    client = ollama.Client(host=server.url)
    reply = client.chat(model="smollm2", messages=[{"role": "user", "content": QUESTION, "images": [note]}],
                        options=STEADY)
    assert "4721" in reply.message.content
    done = client.generate(model="smollm2", prompt=QUESTION, images=[note], options=STEADY)
    assert "4721" in done.response
    # The ollama package keeps only the fields it knows; the final object says how the image was read.
    raw = api.post("/api/chat", json={"model": "smollm2", "stream": False, "options": STEADY, "messages": [
        {"role": "user", "content": QUESTION, "images": [note, note]}]}).json()
    assert raw["image_input"]["read_by"] == "ocr" and raw["image_input"]["images"] == 2


def test_openai_image_url_parts(server, note):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    content = [{"type": "text", "text": QUESTION},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{note}"}}]
    reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}],
                                           temperature=0, max_tokens=24)
    assert "4721" in reply.choices[0].message.content
    assert reply.model_extra["image_input"]["read_by"] == "ocr"
    chunks = list(client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}],
                                                 temperature=0, max_tokens=24, stream=True))
    assert "4721" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].model_extra["image_input"]["images"] == 1


def test_bad_images_are_refused_with_a_reason(api):
    remote = api.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert remote.status_code == 400 and "never fetches" in remote.json()["error"]["message"]
    garbled = api.post("/api/chat", json={"model": "smollm2", "messages": [
        {"role": "user", "content": "hi", "images": ["not base64!"]}]})
    assert garbled.status_code == 400 and "messages[0].images[0] is not base64" in garbled.json()["error"]
    not_image = api.post("/api/generate", json={"model": "smollm2", "prompt": "hi",
                                                "images": [base64.b64encode(b"just some text").decode()]})
    assert not_image.status_code == 400, not_image.text


def test_cli_run_with_an_image(ember_home, tmp_path):
    path = tmp_path / "note.png"
    path.write_bytes(_note_png())
    (tmp_path / "Modelfile").write_text("FROM smollm2\nPARAMETER temperature 0\nPARAMETER num_predict 24\n")
    assert ember(ember_home, "create", "steady-reader", "-f", str(tmp_path / "Modelfile")).returncode == 0
    result = ember(ember_home, "run", "steady-reader", QUESTION, "--image", str(path))
    assert result.returncode == 0, result.stderr
    assert "4721" in result.stdout
    assert "OCR" in result.stderr
