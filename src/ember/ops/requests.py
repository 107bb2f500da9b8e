"""Every request gets an id (the `X-Request-Id` header, the client's own when it sends a sane one), one access log
line, and its count and duration in the metrics. Logs are text or, with `--log-format json`, one JSON object a line.

Request headers are never logged: they may hold an API key.
"""

import asyncio
import contextvars
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.ops.metrics import Metrics

log = logging.getLogger("ember.access")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestLog:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given if _SANE_ID.fullmatch(given) else secrets.token_hex(8)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # if the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = 499  # the client went away before an answer began (nginx's code for it)
            raise
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            # The route's template, not the path: one series per endpoint, whatever names and digests clients send.
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_done(scope["method"], template, status, seconds)
            log.info("%s %s %d %.3fs", scope["method"], scope["path"], status, seconds,
                     extra={"method": scope["method"], "path": scope["path"], "status": status,
                            "duration_s": round(seconds, 4), "client": (scope.get("client") or ("", 0))[0]})
            request_id.reset(token)


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


# The fields a LogRecord always has; anything else on a record came from `extra=` and goes into the JSON.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. A few lines of our own rather than python-json-logger: the record's fields and
    `extra` are all it needs."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if getattr(record, "request_id", ""):
            entry["request_id"] = record.request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(fmt: str) -> None:
    """`text` (the default) or `json`, for ember's loggers and uvicorn's, on standard error."""
    handler = logging.StreamHandler()
    handler.addFilter(_WithRequestId())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
