"""The HTTP server: one app that speaks both the Ollama (/api) and OpenAI (/v1) dialects over one scheduler."""

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ember import __version__
from ember.api import errors, ollama, openai
from ember.config import Settings
from ember.runtime.scheduler import Scheduler
from ember.store.store import ModelStore

log = logging.getLogger("ember.api")

# Uploads of model files may be large; every other body is small and capped.
UNCAPPED_PREFIXES = ("/api/blobs/",)


class BodyLimit:
    """Refuses bodies over the limit with 413, whether or not the client sent Content-Length."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(UNCAPPED_PREFIXES):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, send)

    async def _refuse(self, scope, send):
        message = f"request body is larger than {self.max_bytes} bytes (EMBER_MAX_BODY_BYTES)"
        if scope["path"].startswith("/v1/"):
            body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        else:
            body = {"error": message}
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None, store: ModelStore | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    store = store or ModelStore(settings.models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.cleanup_partials()
        app.state.scheduler.start()
        yield
        await app.state.scheduler.close()

    app = FastAPI(title="ember", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.store = store
    app.state.scheduler = Scheduler(settings, store)
    errors.install(app)
    app.include_router(ollama.router)
    app.include_router(openai.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
