"""Pieces both dialects share: reaching the runtime, starting a generation, serialising a stream."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema

from ember.core.errors import EmberError
from ember.core.types import Event
from ember.runtime.service import Runtime
from ember.store.store import ModelStore

log = logging.getLogger("ember.api")

T = TypeVar("T")


class ClientGone(EmberError):
    """The client disconnected before its answer: the work was cancelled and this answer goes nowhere."""

    status = 499  # nginx's code for it; the request log shows it


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def store(request: Request) -> ModelStore:
    return request.app.state.runtime.store


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_time(seconds: float) -> str:
    """A time.time() value as Ollama writes times."""
    return iso(datetime.fromtimestamp(seconds, UTC))


async def _disconnected(request: Request) -> None:
    # Once the body is read, uvicorn's receive() returns only when the client has gone (or the answer is complete).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone once `work` is cancelled because the client disconnected first: Starlette
    cancels no handler when its client goes away, so a non-streamed answer would otherwise run to its end."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            # Its cleanup (the engine's cancel flag, an embedding batch in progress) ends before the handler does.
            await asyncio.wait((task,))
    if task in done:
        return task.result()
    gone.result()  # a failed receive() is a bug to see, not a disconnect
    if not task.cancelled():
        task.exception()  # retrieved: whatever it ended with, nobody is left to hear it
    log.info("%s %s cancelled: the client disconnected before the answer", request.method, request.url.path)
    raise ClientGone("the client disconnected")


async def start(events: AsyncIterator[Event], request: Request) -> tuple[Event, AsyncIterator[Event]]:
    """Wait for the first event, so that a refused request (400, 404, 503) gets its status before any body is sent;
    a client that disconnects meanwhile (a model load, a long prompt) cancels the generation."""
    try:
        first = await unless_gone(request, anext(events))
    except ClientGone:
        await events.aclose()  # in case the cancelled wait never started it
        raise
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
        except (asyncio.CancelledError, GeneratorExit):  # Starlette stops the body when the client disconnects
            log.info("stream cancelled: the client disconnected")
            raise
        for line in tail():
            yield line

    return StreamingResponse(body(), media_type=media_type)


async def collect(first: Event, events: AsyncIterator[Event], request: Request) -> list[Event]:
    """Every event of a non-streamed answer; a client that disconnects first cancels the generation (within a step)."""

    async def gather() -> list[Event]:
        return [event async for event in _rest(first, events)]

    try:
        return await unless_gone(request, gather())
    except ClientGone:
        await events.aclose()  # in case the cancelled gathering never started
        raise


def ndjson(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


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
# Document collections to answer from (ember rag): one name or several.
CollectionsField = str | list[str] | None


def collection_names(value: str | list[str] | None) -> list[str] | None:
    names = [value] if isinstance(value, str) else [n for n in value or [] if n]
    return names or None
