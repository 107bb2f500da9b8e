"""Settings read from the environment, with the same meanings as Ollama's OLLAMA_* variables."""

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a whole number") from None


_SIZES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


def _list_env(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def _bytes_env(name: str) -> int:
    """A size such as 8GB, 512MiB or 1000000 (bytes); 0 when unset."""
    raw = os.environ.get(name, "").strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number or "0") * _SIZES[unit]
    except (ValueError, KeyError):
        raise SystemExit(f"{name}={raw!r} is not a size: use bytes or a number with KB, MB, GB, MiB or GiB") from None
    return int(value)


def _duration_env(name: str, default: str) -> float:
    """Seconds from a duration such as 24h, 10m or 90s; 0 when set to 0 or off."""
    from ember.core.durations import parse_duration
    from ember.core.errors import BadRequest

    raw = os.environ.get(name, default).strip().lower()
    if raw in ("0", "off", "never", ""):
        return 0.0
    try:
        return parse_duration(raw, name)
    except BadRequest as e:
        raise SystemExit(e.message) from None


def parse_host(raw: str | None) -> tuple[str, int]:
    """EMBER_HOST accepts 'host', 'host:port', ':port' or 'http://host:port', as OLLAMA_HOST does."""
    raw = (raw or "").strip()
    if not raw:
        return DEFAULT_HOST, DEFAULT_PORT
    for scheme in ("http://", "https://"):
        if raw.startswith(scheme):
            raw = raw[len(scheme):]
    raw = raw.rstrip("/")
    host, sep, port = raw.rpartition(":")
    if not sep:
        return raw, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"EMBER_HOST={raw!r}: the port must be a number from 1 to 65535")
    return (host.strip("[]") or DEFAULT_HOST), int(port)


@dataclass(frozen=True)
class Settings:
    home: Path
    models: Path
    host: str
    port: int
    context_length: int
    max_queue: int
    max_loaded_models: int
    num_parallel: int  # 0: chosen per model from free memory and num_ctx
    keep_alive: str
    max_body_bytes: int
    max_memory: int = 0  # bytes loaded models may hold in all; 0: what the machine has available
    origins: tuple[str, ...] = ()  # web origins allowed beside loopback pages (patterns; "*" for any)
    allowed_hosts: tuple[str, ...] = ()  # Host names answered beside loopback ones while bound to loopback
    api_keys: tuple[str, ...] = ()  # EMBER_API_KEYS: "key" (admin) or "key:scope", beside the keys file
    max_prompt_tokens: int = 0  # 0: the model's context window is the only limit
    max_predict: int = 0  # 0: no limit beyond the context window
    max_upload_bytes: int = 0  # 0: no limit beyond free disk
    request_timeout: float = 0.0  # seconds one generation may run; 0: no limit
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    backup_every: float = 0.0  # seconds between automatic backups while serving; 0: none
    backup_keep: int = 7  # automatic backups kept

    @property
    def keys_file(self) -> Path:
        return self.home / "keys.json"

    @property
    def backups(self) -> Path:
        return self.home / "backups"

    @property
    def on_loopback(self) -> bool:
        from ember.ops.guards import is_loopback

        return is_loopback(self.host)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("EMBER_HOME") or Path.home() / ".ember").expanduser()
        models = Path(os.environ.get("EMBER_MODELS") or home / "models").expanduser()
        host, port = parse_host(os.environ.get("EMBER_HOST"))
        return cls(
            home=home,
            models=models,
            host=host,
            port=port,
            context_length=_int_env("EMBER_CONTEXT_LENGTH", 4096),
            max_queue=_int_env("EMBER_MAX_QUEUE", 512),
            max_loaded_models=_int_env("EMBER_MAX_LOADED_MODELS", 3),
            num_parallel=_int_env("EMBER_NUM_PARALLEL", 0),
            keep_alive=os.environ.get("EMBER_KEEP_ALIVE", "5m"),
            max_body_bytes=_int_env("EMBER_MAX_BODY_BYTES", 32 * 1024 * 1024),
            max_memory=_bytes_env("EMBER_MAX_MEMORY"),
            origins=_list_env("EMBER_ORIGINS"),
            allowed_hosts=_list_env("EMBER_ALLOWED_HOSTS"),
            api_keys=_list_env("EMBER_API_KEYS"),
            max_prompt_tokens=_int_env("EMBER_MAX_PROMPT_TOKENS", 0),
            max_predict=_int_env("EMBER_MAX_PREDICT", 0),
            max_upload_bytes=_bytes_env("EMBER_MAX_UPLOAD_BYTES"),
            request_timeout=_duration_env("EMBER_REQUEST_TIMEOUT", "0"),
            shutdown_grace=_duration_env("EMBER_SHUTDOWN_GRACE", "30s"),
            backup_every=_duration_env("EMBER_BACKUP_EVERY", "0"),
            backup_keep=_int_env("EMBER_BACKUP_KEEP", 7),
        )
