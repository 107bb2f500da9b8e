"""API keys with scopes: who may run models (`use`), change the store (`manage`), or back up and restore (`admin`).

Keys come from EMBER_API_KEYS ("KEY" or "KEY:SCOPE", comma-separated) and from the keys file (`ember keys add`),
where only their SHA-256 is kept. A plain hash is enough there: `ember keys add` makes 256-bit random keys, which no
one can guess from a hash, so a slow password hash would only slow every request. With no key configured ember is
open, as Ollama is; with any, every route but /health needs one.
"""

import enum
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.api import errors
from ember.api.routes import flat_routes
from ember.core.errors import BadRequest, NotFound
from ember.fsutil import atomic_file, make_dirs

KEY_PREFIX = "ember-"

log = logging.getLogger("ember.keys")


class Access(enum.IntEnum):
    """Each scope may do everything the ones below it may."""

    USE = 1
    MANAGE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, raw: str) -> "Access":
        try:
            return cls[raw.strip().upper()]
        except KeyError:
            raise BadRequest(f"unknown scope {raw!r}: use one of use, manage, admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


# Every route and what it needs. A route missing here needs admin, and a test fails until it is placed: a new route
# cannot slip past the check by being forgotten.
PUBLIC = {("GET", "/health"), ("HEAD", "/health")}
ROUTE_ACCESS: dict[tuple[str, str], Access] = {
    **{(method, path): Access.USE for method, path in (
        ("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("GET", "/api/tags"), ("HEAD", "/api/tags"),
        ("GET", "/api/ps"), ("POST", "/api/show"), ("POST", "/api/generate"), ("POST", "/api/chat"),
        ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("GET", "/api/jobs"),
        ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"), ("GET", "/v1/models/{name:path}"), ("GET", "/metrics"),
        ("GET", "/openapi.json"), ("HEAD", "/openapi.json"), ("GET", "/docs"), ("HEAD", "/docs"),
        ("GET", "/docs/oauth2-redirect"), ("HEAD", "/docs/oauth2-redirect"), ("GET", "/api/collections"),
        ("GET", "/api/collections/{name}"), ("POST", "/api/collections/{name}/query"), ("POST", "/api/rerank"),
        ("POST", "/v1/rerank"), ("POST", "/rerank"), ("POST", "/v1/reranking"),
        ("POST", "/v1/audio/transcriptions"), ("POST", "/v1/audio/translations"), ("POST", "/api/ocr"))},
    **{(method, path): Access.MANAGE for method, path in (
        ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/pull"), ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("HEAD", "/api/blobs/{digest}"), ("POST", "/api/blobs/{digest}"), ("DELETE", "/api/jobs/{job_id}"),
        ("POST", "/api/collections"), ("DELETE", "/api/collections/{name}"),
        ("POST", "/api/collections/{name}/files"), ("DELETE", "/api/collections/{name}/files"))},
    ("POST", "/api/backup"): Access.ADMIN,
    ("GET", "/api/backups"): Access.ADMIN,
}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class StoredKey:
    name: str
    access: Access
    sha256: str
    created: str

    def to_json(self) -> dict:
        return {"name": self.name, "scope": self.access.label, "sha256": self.sha256, "created": self.created}


class KeysFile:
    """The keys file (EMBER_HOME/keys.json, mode 0600): names, scopes and hashes; never the keys themselves."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[StoredKey]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [StoredKey(k["name"], Access.parse(k["scope"]), k["sha256"], k.get("created", ""))
                    for k in data["keys"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError, AttributeError, BadRequest) as e:
            raise BadRequest(f"the keys file {self.path} is damaged ({e}); fix it or remove it and add the keys "
                             "again with `ember keys add`") from None

    def _write(self, keys: list[StoredKey]) -> None:
        make_dirs(self.path.parent)
        with atomic_file(self.path) as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps({"keys": [k.to_json() for k in keys]}, indent=2).encode())

    def add(self, name: str, access: Access) -> str:
        """Makes a new key, stores its hash and returns it: the only time it is shown."""
        name = name.strip()
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise BadRequest(f"invalid key name {name!r}: use letters, digits, '-', '_' or '.' (up to 64)")
        keys = self.read()
        if any(k.name == name for k in keys):
            raise BadRequest(f"a key named {name!r} exists; remove it first with `ember keys rm {name}`")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        self._write([*keys, StoredKey(name, access, _digest(key), created)])
        return key

    def remove(self, name: str) -> None:
        keys = self.read()
        if not any(k.name == name for k in keys):
            raise NotFound(f"no key named {name!r}; `ember keys ls` lists them")
        self._write([k for k in keys if k.name != name])


class Keyring:
    """The keys a server accepts: EMBER_API_KEYS and the keys file, read again whenever the file changes, so that a
    key added or removed with `ember keys` counts without a restart."""

    def __init__(self, env_keys: tuple[str, ...], keys_file: Path):
        self.file = KeysFile(keys_file)
        self._env = [self._env_key(raw) for raw in env_keys]
        self._stamp: tuple[int, int] | None = None
        self._stored: list[tuple[str, Access]] = []
        self._entries()  # a damaged keys file stops the server from starting, with what is wrong

    @staticmethod
    def _env_key(raw: str) -> tuple[str, Access]:
        key, sep, scope = raw.rpartition(":")
        if sep and scope.strip().lower() in ("use", "manage", "admin"):
            return _digest(key), Access.parse(scope)
        return _digest(raw), Access.ADMIN

    def _entries(self) -> list[tuple[str, Access]]:
        try:
            stat = self.file.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                self._stored = [(k.sha256, k.access) for k in self.file.read()] if stamp else []
            except BadRequest as e:
                if self._stamp is None and not self._stored:
                    raise
                # Damaged while serving (a hand edit): the keys read last stay in force rather than none.
                log.error("%s; keeping the keys read before", e.message)
            self._stamp = stamp
        return self._env + self._stored

    @property
    def enabled(self) -> bool:
        return bool(self._entries())

    def access(self, key: str) -> Access | None:
        """The scope of `key`, or None. Every entry is compared, in constant time, whichever matches."""
        wanted = _digest(key)
        found = None
        for digest, access in self._entries():
            if hmac.compare_digest(digest, wanted) and (found is None or access > found):
                found = access
        return found


def presented_key(headers: dict[str, str]) -> str | None:
    """`Authorization: Bearer KEY` (what the OpenAI and Ollama clients send) or `X-Api-Key: KEY`."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None


class KeyGuard:
    """With keys configured, refuses requests without a key (401) or with one whose scope is too small (403)."""

    def __init__(self, app: ASGIApp, keyring: Keyring, routes: Callable[[], list]):
        self.app, self.keyring, self._routes = app, keyring, routes
        self._flat: list | None = None

    def _needed(self, scope: Scope) -> Access | None:
        method = scope["method"]
        if self._flat is None:  # the app's routes are all in place once requests arrive
            self._flat = flat_routes(self._routes())
        for route in self._flat:
            match, _ = route.matches(scope)
            if match == Match.FULL and (method, route.path) in PUBLIC:
                return None
            if match == Match.FULL:
                return ROUTE_ACCESS.get((method, route.path), Access.ADMIN)
        return Access.USE  # no such route (404) or method (405): still only for key holders

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keyring.enabled:
            return await self.app(scope, receive, send)
        needed = self._needed(scope)
        if needed is None:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = presented_key(headers)
        access = self.keyring.access(key) if key else None
        if access is None:
            why = "no API key was given" if key is None else "the API key is not valid"
            message = (f"{why}: this server needs one, sent as 'Authorization: Bearer KEY' or 'X-Api-Key: KEY' "
                       "(make one with `ember keys add NAME`)")
            return await self._refuse(scope, receive, send, 401, message, {"WWW-Authenticate": "Bearer"})
        if access < needed:
            message = (f"this API key's scope is '{access.label}'; {scope['method']} {scope['path']} needs "
                       f"'{needed.label}' (make one with `ember keys add NAME --scope {needed.label}`)")
            return await self._refuse(scope, receive, send, 403, message)
        scope.setdefault("state", {})["access"] = access
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
        await errors.error_response(Request(scope), status, message, headers)(scope, receive, send)
