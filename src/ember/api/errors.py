"""Every error leaves as JSON with a 4xx/5xx status that names the problem, in the shape each dialect's clients
expect."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.api.routes import allowed_methods
from ember.core.errors import Busy, EmberError, disk_error

log = logging.getLogger("ember.api")


def error_response(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    if request.url.path.startswith("/v1/"):
        kind = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "not_found_error", 408: "timeout", 413: "invalid_request_error",
                503: "server_busy"}.get(status, "api_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return f"malformed JSON in request body: {err.get('ctx', {}).get('error', err.get('msg'))}"
        if err.get("type") == "missing":
            parts.append(f"'{'.'.join(loc)}' is required" if loc else "a JSON body is required")
        elif loc:
            parts.append(f"'{'.'.join(loc)}': {err.get('msg')} (got {err.get('input')!r:.80})")
        else:
            parts.append(str(err.get("msg")))
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(EmberError)
    async def _ember(request: Request, exc: EmberError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        if exc.status >= 500 and not isinstance(exc, Busy):  # a full queue is the server working as meant
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(request, exc.status, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(request, 400, describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        headers = exc.headers
        if exc.status_code == 405:
            allowed = allowed_methods(request.app.routes, request.scope)
            message = f"method {request.method} is not allowed on {request.url.path} (allowed: {', '.join(allowed)})"
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return error_response(request, exc.status_code, message, headers)

    # Its own handler: Starlette answers a bare-Exception handler's response and then raises the error again (a
    # traceback, a dropped connection); a full disk is an answer, not a crash.
    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError):
        full = disk_error(exc)
        if full:
            log.error("%s %s: %s", request.method, request.url.path, full.message)
            return error_response(request, full.status, full.message)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, 500, f"internal error: {type(exc).__name__}: {exc}")


_ERROR_BODY = {"type": "object", "required": ["error"],
               "properties": {"error": {"description": "what was wrong and what to do: a string in the Ollama "
                                        "dialect (/api), an object with a message in the OpenAI one (/v1)"}}}
_ERROR_STATUSES = {400: "Bad request: the message names the field or limit", 401: "No API key, or a wrong one",
                   403: "A foreign web page, a rebinding Host, or a key whose scope is too small",
                   404: "No such model, blob, job or endpoint", 405: "Method not allowed",
                   408: "The generation ran past EMBER_REQUEST_TIMEOUT",
                   413: "The body or upload is larger than its limit", 499: "The client went away",
                   503: "Busy (see Retry-After) or shutting down", 507: "The disk is full"}

# Every route may answer these: documented once for all, so that the OpenAPI description tells clients (and
# schemathesis) the truth.
ERROR_RESPONSES = {status: {"description": text, "content": {"application/json": {"schema": _ERROR_BODY}}}
                   for status, text in _ERROR_STATUSES.items()}
