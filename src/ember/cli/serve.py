"""`ember serve`: check the port, then run the app under uvicorn."""

import contextlib
import errno
import logging
import socket
import sys
from collections.abc import Iterator

import uvicorn

from ember.config import Settings
from ember.ops.keys import Keyring
from ember.ops.requests import configure_logging
from ember.runtime.service import Runtime


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class _Server(uvicorn.Server):
    """uvicorn's server, telling the runtime when a shutdown begins: /health turns 503 at once, while requests in
    flight get EMBER_SHUTDOWN_GRACE to finish before they are cancelled."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self.runtime = runtime

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn raises the signal again once it has stopped, so that the process ends by it; a shutdown
                # that went as planned exits 0 instead, as a supervisor expects of a clean stop.
                self._captured_signals.clear()

    def handle_exit(self, sig: int, frame) -> None:
        if not self.runtime.draining:
            logging.getLogger("ember.serve").info(
                "stopping: no new connections; requests in flight have %gs to finish (EMBER_SHUTDOWN_GRACE)",
                self.config.timeout_graceful_shutdown)
        self.runtime.drain()
        super().handle_exit(sig, frame)


def refuse_open_bind(settings: Settings, insecure: bool) -> str | None:
    """Why ember must not listen on this address as configured, or None."""
    if settings.on_loopback or insecure or Keyring(settings.api_keys, settings.keys_file).enabled:
        return None
    return (f"ember serve: {settings.host} is reachable from other machines, and no API key is set, so anyone who "
            "can reach it could run, create and delete models. Add a key (`ember keys add NAME`, or "
            "EMBER_API_KEYS), listen on 127.0.0.1 only, or pass --insecure to serve it open anyway.")


def serve(settings: Settings, *, insecure: bool = False, log_format: str = "text") -> None:
    why = refuse_open_bind(settings, insecure)
    if why:
        print(why, file=sys.stderr)
        sys.exit(1)
    if not port_free(settings.host, settings.port):
        print(f"ember serve: {settings.host}:{settings.port} is already in use (another ember or Ollama?). "
              f"Pick another address with EMBER_HOST, e.g. EMBER_HOST=127.0.0.1:{settings.port + 1} ember serve",
              file=sys.stderr)
        sys.exit(1)
    configure_logging(log_format)
    from ember.api.app import create_app

    app = create_app(settings)
    logging.getLogger("ember.serve").info("ember serving at %s (models in %s)", settings.base_url, settings.models)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=max(int(settings.shutdown_grace), 1))
    _Server(config, app.state.runtime).run()
