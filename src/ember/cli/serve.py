"""`ember serve`: check the port, then run the app under uvicorn."""

import errno
import logging
import socket
import sys

import uvicorn

from ember.config import Settings


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


def serve(settings: Settings) -> None:
    if not port_free(settings.host, settings.port):
        print(f"ember serve: {settings.host}:{settings.port} is already in use (another ember or Ollama?). "
              f"Pick another address with EMBER_HOST, e.g. EMBER_HOST=127.0.0.1:{settings.port + 1} ember serve",
              file=sys.stderr)
        sys.exit(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ember.api.app import create_app

    app = create_app(settings)
    print(f"ember serving at {settings.base_url} (models in {settings.models})", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=3)
