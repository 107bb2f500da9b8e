"""Calls from many threads combined into one: the shape of batching for engines that take a whole batch at once."""

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Call(Generic[T, R]):
    def __init__(self, items: list[T]):
        self.items = items
        self.results: list[R] | None = None
        self.error: BaseException | None = None


class Coalesced(Generic[T, R]):
    """`run(items) -> one result per item`, called from several threads: whichever caller gets to run next runs every
    call waiting then as one batch, so eight callers with one text each cost about one batch, not eight."""

    def __init__(self, run: Callable[[list[T]], list[R]]):
        self._run = run
        self._running = threading.Lock()  # held while a batch runs
        self._waiting: list[_Call[T, R]] = []
        self._waiting_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._running.locked()

    @property
    def waiting(self) -> int:
        """Calls queued behind the batch that is running."""
        return len(self._waiting)

    def __call__(self, items: list[T]) -> list[R]:
        call: _Call[T, R] = _Call(items)
        with self._waiting_lock:
            self._waiting.append(call)
        with self._running:
            if call.results is None and call.error is None:  # nobody took it along while it waited
                with self._waiting_lock:
                    calls, self._waiting = self._waiting, []
                try:
                    results = self._run([item for c in calls for item in c.items])
                except BaseException as e:
                    for c in calls:
                        c.error = e
                else:
                    for c in calls:
                        c.results, results = results[: len(c.items)], results[len(c.items):]
        if call.error is not None:
            raise call.error
        assert call.results is not None
        return call.results
