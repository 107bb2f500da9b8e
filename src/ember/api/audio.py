"""OpenAI's speech-to-text routes: /v1/audio/transcriptions and /v1/audio/translations, multipart as OpenAI takes
them, so `openai`'s `audio.transcriptions.create` works unchanged.

The form is read by hand rather than declared field by field: OpenAI's clients send arrays as
`timestamp_granularities[]`, and each wrong field deserves a message that names it. With `stream=true` the text comes
as server-sent events while the audio is decoded, in the shape OpenAI streams its newer transcription models:
`transcript.text.delta` for each segment (with ember's `segment`: its times, and the audio's duration, so a client
can show progress) and one `transcript.text.done` (OpenAI ignores `stream` for whisper-1; ember need not).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import FormData, UploadFile

from ember.api import common
from ember.core.errors import BadRequest
from ember.core.types import Segment, TranscribeRequest, Transcript
from ember.media.transcripts import FORMATS, language_name, render

router = APIRouter()

_FORM = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "WAV, MP3, M4A, OGG, FLAC or WebM"},
        "model": {"type": "string", "description": "whisper:base, whisper:tiny.en, a speech model made with a "
                  "Modelfile, or whisper-1 (ember picks by language)"},
        "language": {"type": "string", "description": "ISO 639-1, e.g. en or ru; detected when left out"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(FORMATS)},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment", "word"]}},
        "stream": {"type": "boolean", "description": "server-sent events as the audio is decoded"},
    }}}}
_OK = {200: {"description": "The transcript in the asked format, or with stream=true server-sent events",
             "content": {"application/json": {}, "text/plain": {}, "text/event-stream": {}}}}


def _one(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value.strip() if isinstance(value, str) and value.strip() else None
    raise BadRequest(f"'{name}' must be a text field, not a file")


def _request(form: FormData, task: str) -> tuple[TranscribeRequest, UploadFile, str, list[str]]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest("'file' is required: send the audio as a multipart file field named file")
    response_format = _one(form, "response_format") or "json"
    if response_format not in FORMATS:
        raise BadRequest(f"'response_format' {response_format!r}: use one of {', '.join(FORMATS)}")
    granularities = [g for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in form.getlist(key) if isinstance(g, str)]
    for g in granularities:
        if g not in ("segment", "word"):
            raise BadRequest(f"'timestamp_granularities' {g!r}: use segment or word")
    if granularities and response_format != "verbose_json":
        raise BadRequest("'timestamp_granularities' needs response_format verbose_json")
    temperature = _one(form, "temperature")
    try:
        temp = float(temperature) if temperature is not None else 0.0
    except ValueError:
        raise BadRequest(f"'temperature' {temperature!r} is not a number") from None
    if not 0.0 <= temp <= 1.0:
        raise BadRequest(f"'temperature' {temp} must be between 0 and 1")
    language = _one(form, "language") if task == "transcribe" else None  # a translation is always into English
    request = TranscribeRequest(model=_one(form, "model"), language=language.lower() if language else None,
                                task=task, prompt=_one(form, "prompt"), word_timestamps="word" in granularities,
                                temperature=temp, source=upload.filename or "the audio")
    return request, upload, response_format, granularities


async def _answer(request: Request, task: str):
    form = await request.form()
    streaming = False
    try:
        body, upload, response_format, granularities = _request(form, task)
        if (_one(form, "stream") or "").lower() == "true":
            first, events = await common.start(_events(common.runtime(request), body, upload, form), request)
            streaming = True  # the form is closed when the stream ends
            return common.stream(first, events, _sse, "text/event-stream")
        transcript = await common.unless_gone(request, common.runtime(request).transcribe(body, upload.file))
    finally:
        if not streaming:
            await form.close()
    out: Any = render(transcript, response_format, task, words="word" in granularities,
                      segments=not granularities or "segment" in granularities)
    if isinstance(out, str):
        return PlainTextResponse(out, media_type="text/vtt" if response_format == "vtt" else "text/plain")
    return JSONResponse(out)


async def _events(runtime, body: TranscribeRequest, upload: UploadFile, form: FormData
                  ) -> AsyncIterator[tuple[Segment, float] | Transcript]:
    """(segment, duration) as each is decoded, then the transcript. Closing it early stops the work."""
    loop = asyncio.get_running_loop()
    heard: asyncio.Queue[tuple[Segment, float]] = asyncio.Queue()
    work = asyncio.ensure_future(runtime.transcribe(
        body, upload.file, lambda segment, duration: loop.call_soon_threadsafe(heard.put_nowait, (segment, duration))))
    try:
        while not work.done():
            waiting = asyncio.ensure_future(heard.get())
            await asyncio.wait((waiting, work), return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                yield waiting.result()
            else:
                waiting.cancel()
        # The engine's thread queued its last put before its result, on the same loop: all are in the queue now.
        while not heard.empty():
            yield heard.get_nowait()
        yield work.result()
    finally:
        if not work.done():
            work.cancel()
            await asyncio.wait((work,))
        await form.close()


def _sse(event: tuple[Segment, float] | Transcript) -> list[str]:
    if isinstance(event, Transcript):
        body = {"type": "transcript.text.done", "text": event.text, "language": language_name(event.language),
                "duration": round(event.duration, 3), "usage": {"type": "duration", "seconds": round(event.duration)}}
    else:
        segment, duration = event
        body = {"type": "transcript.text.delta", "delta": segment.text, "duration": round(duration, 3),
                "segment": {"start": round(segment.start, 3), "end": round(segment.end, 3), "text": segment.text}}
    return [f"data: {json.dumps(body, ensure_ascii=False)}\n\n"]


@router.post("/v1/audio/transcriptions", responses=_OK, openapi_extra={"requestBody": {"content": _FORM}})
async def transcriptions(request: Request):
    """Speech to text in the speech's language (OpenAI's API)."""
    return await _answer(request, "transcribe")


@router.post("/v1/audio/translations", responses=_OK, openapi_extra={"requestBody": {"content": _FORM}})
async def translations(request: Request):
    """Speech in any language to English text (OpenAI's API; Whisper's own translate task)."""
    return await _answer(request, "translate")
