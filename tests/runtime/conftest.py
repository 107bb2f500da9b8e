import pytest

from ember.runtime.service import Runtime
from ember.store.modelfile import CreateSpec
from ember.store.store import ModelStore
from tests.fakes import FakeClock, FakeEngines
from tests.helpers import settings, write_gguf


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
