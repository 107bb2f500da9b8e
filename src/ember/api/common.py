"""Pieces both dialects share: reaching the runtime, starting a generation, serialising a stream."""

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema

from ember.core.errors import BadRequest, EmberError
from ember.core.types import Event
from ember.runtime.service import Runtime
from ember.store.store import ModelStore

log = logging.getLogger("ember.api")


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def store(request: Request) -> ModelStore:
    return request.app.state.runtime.store


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_time(seconds: float) -> str:
    """A time.time() value as Ollama writes times."""
    return iso(datetime.fromtimestamp(seconds, UTC))


async def start(events: AsyncIterator[Event]) -> tuple[Event, AsyncIterator[Event]]:
    """Wait for the first event, so that a refused request (400, 404, 503) gets its status before any body is sent."""
    first = await anext(events)
    return first, events


async def _rest(first: Event, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    try:
        yield first
        async for event in events:
            yield event
    finally:
        # Ends the generation when the client goes away mid-stream (the response is cancelled or closed here).
        await events.aclose()


def stream(first: Event, events: AsyncIterator[Event], render: Callable[[Event], list[str]],
           media_type: str, tail: Callable[[], list[str]] = list) -> StreamingResponse:
    async def body():
        try:
            async for event in _rest(first, events):
                for line in render(event):
                    yield line
        except EmberError as e:  # the status line is sent: the error goes in the stream, as each dialect sends it
            log.info("stream ended by an error: %s", e.message)
            if media_type == "text/event-stream":
                error = {"message": e.message, "type": "api_error", "code": e.status}
                yield f"data: {json.dumps({'error': error})}\n\n"
            else:
                yield ndjson({"error": e.message})
            return
        for line in tail():
            yield line

    return StreamingResponse(body(), media_type=media_type)


async def collect(first: Event, events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in _rest(first, events)]


def ndjson(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def no_images(images: list[str] | None, model: str) -> None:
    if images:
        raise BadRequest(f"{model} cannot read images: ember's image input arrives with the vision models")


# The 200 answers of routes that stream (as `stream` asks): documented, so the OpenAPI description is true.
NDJSON_OK = {200: {"description": "One JSON object, or with stream=true one per line",
                   "content": {"application/json": {}, "application/x-ndjson": {}}}}
SSE_OK = {200: {"description": "One JSON object, or with stream=true server-sent events",
                "content": {"application/json": {}, "text/event-stream": {}}}}

# What a model name and a digest look like, in the OpenAPI description only: the store checks them itself, with
# messages that say what is wrong (a pydantic pattern error would not).
_NAME_PART = "[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
ModelNameField = Annotated[str, WithJsonSchema(
    {"type": "string", "pattern": f"^{_NAME_PART}(:{_NAME_PART})?$", "description": "a model name: 'smollm2', "
     "'mymodel:v1'"})]
OptionalModelName = Annotated[str | None, WithJsonSchema(
    {"type": "string", "pattern": f"^{_NAME_PART}(:{_NAME_PART})?$"})]
DigestField = Annotated[str, WithJsonSchema({"type": "string", "pattern": "^sha256[:-][0-9a-fA-F]{64}$"})]
