"""Shared fixtures: a model store with the bundled model pulled, and a real `ember serve` process on loopback."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ember.store.store import ModelStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ember_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ember-home")
    ModelStore(home / "models").pull("smollm2")
    return home


def server_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_HOST=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1", **extra)
    return env


class Server:
    """`python -m ember serve` in a subprocess, as a user would start it."""

    def __init__(self, home: Path, log_path: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = server_env(home, self.port, **env)
        self.proc = None

    def start(self) -> "Server":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ember", "serve"], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ember serve exited: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/api/version", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"ember serve did not start: {self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(ember_home, tmp_path_factory):
    srv = Server(ember_home, tmp_path_factory.mktemp("logs") / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path, ember_home):
    """Start extra servers with their own settings (queue limits, loaded-model limits) for one test."""
    started = []

    def make(home: Path | None = None, **env: str) -> Server:
        srv = Server(home or ember_home, tmp_path / f"server-{len(started)}.log", **env).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client
