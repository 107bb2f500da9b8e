"""Images sent to a model: no engine here can see yet (no small vision model ships in a wheel), so each image is read
by OCR and its text goes into the prompt, marked as such, and the answer says that OCR was used.

Images arrive base64-encoded (Ollama's `images`, OpenAI's data: URLs); nothing is ever fetched from a URL.
"""

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from dataclasses import replace

from ember.core.errors import BadRequest
from ember.core.types import GenerateRequest, Message


def _decode(image: str, where: str) -> bytes:
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not base64: send the image's bytes base64-encoded (Ollama's images), or as "
                         "a data: URL (OpenAI's image_url)") from None


def _marked(texts: list[tuple[int, str]]) -> str:
    """The images' text as it goes into the prompt: the model must know it was read, not written, by the user."""
    blocks = []
    for number, text in texts:
        if text.strip():
            blocks.append(f"[Image {number}: its text, read by OCR]\n{text.strip()}\n[End of image {number}]")
        else:
            blocks.append(f"[Image {number}: OCR found no text in it]")
    return "\n\n".join(blocks)


# A chat sends its whole history again each turn (Open WebUI, the clients): an image already read is not read again.
_READ: OrderedDict[str, str] = OrderedDict()
_READ_KEPT = 64
_read_lock = threading.Lock()


def _text_of(data: bytes, where: str) -> str:
    from ember.media.ocr import image_text

    key = hashlib.sha256(data).hexdigest()
    with _read_lock:
        if key in _READ:
            _READ.move_to_end(key)
            return _READ[key]
    text = image_text(data, name=where)
    with _read_lock:
        _READ[key] = text
        while len(_READ) > _READ_KEPT:
            _READ.popitem(last=False)
    return text


def _read(images: list[str], where: str, first: int) -> list[tuple[int, str]]:
    return [(first + j, _text_of(_decode(image, f"{where}[{j}]"), f"{where}[{j}]")) for j, image in enumerate(images)]


def has_images(request: GenerateRequest) -> bool:
    return bool(request.images) or any(m.images for m in request.messages or [])


def read_images(request: GenerateRequest) -> tuple[GenerateRequest, int]:
    """The request with its images replaced by their OCR text, and how many there were. Blocking (Tesseract runs
    for about a second an image): call it off the event loop."""
    if request.is_chat:
        if not any(m.images for m in request.messages or []):
            return request, 0
        messages: list[Message] = []
        count = 0
        for i, m in enumerate(request.messages or []):
            if not m.images:
                messages.append(m)
                continue
            texts = _read(m.images, f"messages[{i}].images", count + 1)
            count += len(texts)
            messages.append(replace(m, content=f"{m.content}\n\n{_marked(texts)}".strip(), images=[]))
        return replace(request, messages=messages), count
    if not request.images:
        return request, 0
    texts = _read(request.images, "images", 1)
    return replace(request, prompt=f"{request.prompt or ''}\n\n{_marked(texts)}".strip(), images=[]), len(texts)
