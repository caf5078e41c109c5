"""The window merge's threads: the capture parsed one chunk ahead (``Prefetched``) and the ground truth read
meanwhile (``Background``), each stopped when the merge ends or fails."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

PREFETCH_CHUNKS = 1  # parsed chunks the reader thread may hold ahead (each about its size in columns;
#                     2 measured no faster on 2 cores, and 0.1 GiB more at peak)
CAPTURE_READER, TRUTH_READER = "lucent-capture-reader", "lucent-ground-truth-reader"  # the threads' names


_T = TypeVar("_T")


class Prefetched:
    """The items of an iterator, produced on a background thread one item ahead of the consumer.

    ``close`` (also at the end of iteration, or when the consumer stops early) lets the thread end; an
    exception raised by the iterator is raised in the consumer. The iterator's own code therefore runs
    on that thread: the capture files a caller passes must not depend on thread-local state."""

    def __init__(self, items: Iterator[_T]):
        self._items = items
        self._handoff: queue.Queue = queue.Queue(maxsize=PREFETCH_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=CAPTURE_READER, daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(("error", error))

    def __iter__(self) -> Iterator[_T]:
        try:
            while True:
                kind, item = self._handoff.get()
                if kind == "item":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    return
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()


class ReaderStopped(Exception):
    """Raised in a background job asked to stop (its result is no longer wanted)."""


class Background:
    """``work(stop)`` run on a thread while the caller goes on. ``result`` waits for it and raises what it
    raised; ``close`` sets ``stop``, which ``work`` checks between chunks, so that a failed merge does not
    leave a thread reading files behind it."""

    def __init__(self, work: Callable[[threading.Event], Any], name: str):
        self._stop = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[threading.Event], Any]) -> None:
        try:
            self._result = work(self._stop)
        except ReaderStopped:
            pass
        except BaseException as error:  # handed to the caller of ``result``
            self._error = error

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def close(self) -> None:
        self._stop.set()
