"""The HTTP server: one app that speaks both the Ollama (/api) and OpenAI (/v1) dialects over one scheduler."""

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware

from ember import __version__
from ember.api import audio, backups, collections, errors, health, jobs, ocr, ollama, openai, rerank
from ember.config import Settings
from ember.engines.base import EngineFactory
from ember.ops.backup import BackupSchedule
from ember.ops.guards import BrowserGuard
from ember.ops.keys import KeyGuard, Keyring
from ember.ops.requests import RequestLog
from ember.runtime.service import Runtime
from ember.store.store import ModelStore

log = logging.getLogger("ember.api")

# Uploads of model files may be large; every other body is small and capped.
UNCAPPED_PREFIXES = ("/api/blobs/",)
# Files sent as multipart forms (audio to transcribe, images to read): their own type, and a cap sized for an hour of
# recorded audio rather than for a JSON body.
FORM_PREFIXES = ("/v1/audio/", "/api/ocr")
MAX_FORM_BYTES = 1 << 30


class BodyLimit:
    """Refuses bodies over the limit with 413, whether or not the client sent Content-Length."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(UNCAPPED_PREFIXES):
            return await self.app(scope, receive, send)
        limit = MAX_FORM_BYTES if scope["path"].startswith(FORM_PREFIXES) else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await self._refuse(scope, receive, send, limit)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the app's body read, so the app's own error handler answers 413.
                    raise HTTPException(413, self.message(limit))
            return message

        await self.app(scope, counting_receive, send)

    def message(self, limit: int) -> str:
        if limit == MAX_FORM_BYTES:
            return f"the upload is larger than {limit >> 20} MB; split the file"
        return f"request body is larger than {limit} bytes (EMBER_MAX_BODY_BYTES)"

    async def _refuse(self, scope, receive, send, limit: int):
        await errors.error_response(Request(scope), 413, self.message(limit))(scope, receive, send)


class JsonBodies:
    """Reads every API body as JSON whatever its Content-Type: `curl -d '{...}'` sends form-encoding, and Ollama
    accepts it anyway, so scripts written for Ollama must work here too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope["path"].startswith(UNCAPPED_PREFIXES + FORM_PREFIXES):
            # Changed in place: the router records the matched route in this same scope, for the request log.
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"] = [*headers, (b"content-type", b"application/json")]
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, store: ModelStore | None = None,
               runtime: Runtime | None = None, factory: EngineFactory | None = None) -> FastAPI:
    """The server app. Tests pass a `runtime` (or an engine `factory`) with fakes at the engine seam."""
    settings = settings or Settings.from_env()
    runtime = runtime or Runtime(settings, store or ModelStore(settings.models), factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.store.cleanup_partials()
        runtime.start()
        backups = BackupSchedule(settings)  # nothing unless EMBER_BACKUP_EVERY is set
        backups.start()
        yield
        await asyncio.to_thread(backups.stop)
        await runtime.close()

    app = FastAPI(title="ember", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  responses=errors.ERROR_RESPONSES)
    app.state.settings = settings
    app.state.runtime = runtime
    errors.install(app)
    app.include_router(ollama.router)
    app.include_router(openai.router)
    app.include_router(jobs.router)
    app.include_router(collections.router)
    app.include_router(rerank.router)
    app.include_router(audio.router)
    app.include_router(ocr.router)
    app.include_router(health.router)
    app.include_router(backups.router)
    # Outermost last. A request passes: the request log (id, metrics), the browser guard (so nothing else runs for a
    # refused page), CORS (headers, and preflights answered, for origins that passed), the key check, then the body.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(JsonBodies)
    app.add_middleware(KeyGuard, keyring=Keyring(settings.api_keys, settings.keys_file), routes=lambda: app.routes)
    app.add_middleware(CORSMiddleware, allow_origin_regex=".*", allow_methods=["*"], allow_headers=["*"],
                       expose_headers=["*"], max_age=600)
    app.add_middleware(BrowserGuard, origins=settings.origins, allowed_hosts=settings.allowed_hosts,
                       check_host=settings.on_loopback)
    app.add_middleware(RequestLog, metrics=runtime.metrics)
    return app
