"""Who may talk to ember from a browser: an origin guard (no web page can make ember act, or read its answers, unless
it is served from this machine or listed in EMBER_ORIGINS) and a host guard against DNS rebinding.

A browser sends a cross-site POST with `Content-Type: text/plain` without asking first (no CORS preflight), and ember
reads any body as JSON, so CORS headers alone would not stop a page from copying, creating or deleting models: a
request from a foreign `Origin` is refused with 403 before any route runs. A rebinding page (an attacker's name that
resolves to 127.0.0.1) is same-origin to the browser and sends no foreign `Origin`, but its `Host` is the attacker's
name: while ember listens on loopback only, a `Host` that is not a loopback name or address is refused too (as
Ollama does since CVE-2024-28224).
"""

import fnmatch
import ipaddress
import socket
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.api import errors

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, localhost and names under .localhost (which resolve to loopback by RFC 6761)."""
    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(origin: str) -> str:
    try:
        return urlsplit(origin).hostname or ""
    except ValueError:
        return ""


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Loopback pages (http or https, any port) and the patterns in EMBER_ORIGINS (`*` for any, or globs such as
    `https://*.example.com`). `null` (sandboxed frames, file pages) only when listed: any page can send it."""
    origin = origin.strip().lower()
    if any(fnmatch.fnmatchcase(origin, pattern.strip().lower()) for pattern in allowed if pattern.strip()):
        return True
    return urlsplit(origin).scheme in ("http", "https") and is_loopback(_host_of(origin))


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:11434
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if not host or is_loopback(host) or host == socket.gethostname().lower():
        return True
    return any(fnmatch.fnmatchcase(host, pattern.strip().lower()) for pattern in allowed if pattern.strip())


class BrowserGuard:
    """Refuses, with 403 and what to set, requests from origins that are not allowed and, while ember listens on
    loopback, requests for a Host that is not this machine. Runs before anything else in the app."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...], allowed_hosts: tuple[str, ...], check_host: bool):
        self.app, self.origins, self.allowed_hosts, self.check_host = app, origins, allowed_hosts, check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.check_host and not host_allowed(host, self.allowed_hosts):
            return await self._refuse(scope, receive, send, (
                f"host {host!r} is not this machine: ember listens on loopback and answers only requests for "
                "localhost or a loopback address (a guard against DNS rebinding); to reach it under another name, "
                "add the name to EMBER_ALLOWED_HOSTS"))
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, self.origins):
            return await self._refuse(scope, receive, send, (
                f"origin {origin!r} is not allowed: ember answers web pages only from this machine (localhost) and "
                "from the origins in EMBER_ORIGINS; to let this page use ember, add it there (comma-separated, "
                "or * for any)"))
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        await errors.error_response(Request(scope), 403, message)(scope, receive, send)
