"""Fixtures: a model store with the bundled model pulled, and real `ember serve` processes on loopback.

Tests that use them (or a trained model) are integration tests: marked here, so that `make test-fast` leaves them out.
"""

from pathlib import Path

import httpx
import pytest

from ember.runtime.service import Runtime
from ember.store.modelfile import CreateSpec
from ember.store.store import ModelStore
from tests.fakes import FakeClock, FakeEngines
from tests.helpers import Server, settings, write_gguf

# What needs the real bundled model, a real server or a training run: these folders, and tests using these fixtures.
INTEGRATION_FOLDERS = ("api", "cli", "train", "quantize", "tune")
INTEGRATION_FIXTURES = {"ember_home", "server", "make_server", "api", "pulled", "embedder", "collections"}


def pytest_collection_modifyitems(items):
    root = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(root).parts[0] if item.path.is_relative_to(root) else ""
        if folder in INTEGRATION_FOLDERS or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def ember_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ember-home")
    store = ModelStore(home / "models")
    store.pull("smollm2")
    store.pull("minilm")
    store.pull("multilingual-e5")
    return home


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


# -- fakes at the engine seam, for the fast tests -------------------------------------------------------------------


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def models(tmp_path) -> ModelStore:
    """A real store with three small models, a, b and c (different files, so different engines)."""
    store = ModelStore(tmp_path / "models")
    for i, name in enumerate("abc"):
        store.create(name, CreateSpec(from_=str(write_gguf(tmp_path / f"{name}.gguf", rows=16 + i, context=8192))))
    return store


@pytest.fixture
def engines() -> FakeEngines:
    return FakeEngines()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_runtime(tmp_path, models, engines, clock):
    """A runtime over the fake engines; settings as keyword arguments (max_loaded_models=1, …)."""
    made = []

    def make(budget: int | None = None, **overrides) -> Runtime:
        runtime = Runtime(settings(tmp_path, **overrides), models, engines, clock=clock,
                          memory_budget=(lambda held: budget) if budget else (lambda held: 1 << 40))
        made.append(runtime)
        return runtime

    return make
