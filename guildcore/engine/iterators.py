"""The caller's iterators over running work: ``Guild.stream`` and ``Guild.imap``.

This module covers the two iterators a caller holds while tasks run:
``StreamIterator`` over one streaming task's chunks, and ``ImapRun``, which
reads an imap's input lazily, keeps at most ``limit`` chunk tasks in flight
and yields their results in input or completion order. Both run in the
caller's thread and reach the supervisor only through futures, the stream's
``StreamState`` and the callables they are given.

It does not cover building or submitting tasks (``executor``), the credit
protocol of a stream (``stream``), nor anything the owner loop does
(``supervisor``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from guildcore.engine import chunking
from guildcore.engine.stream import StreamState
from guildcore.engine.task import Task

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, TypeVar

    R = TypeVar("R")


class StreamIterator(Iterator["R"]):  # a string: R exists for the type checker only
    """The consumer's iterator over a streaming task."""

    def __init__(self, state: StreamState, future: Future[Any]) -> None:
        self._state = state
        self.future = future

    def __next__(self) -> R:
        value: R = next(self._state)
        return value

    def views(self) -> StreamIterator[Any]:
        """Chunks in place from now on: read-only views of the stream's shared memory.

        A ``bytes``/``bytearray`` chunk comes as a read-only ``memoryview``, a
        numpy chunk as a read-only array over the same memory: no copy at
        all. A chunk stays valid while anything made from it is alive, and
        its memory goes back to the agent at the first ``next()`` after that;
        a consumer that keeps ``streaming.window`` chunks alive at once gets
        an error. Copy what you keep (``bytes(view)``, ``array.copy()``).
        """
        self._state.views()
        return self  # type: ignore[return-value]

    def close(self) -> None:
        self._state.close()

    def __enter__(self) -> StreamIterator[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._state.close()


class ImapRun(Iterator["Any"]):
    """One imap: reads input lazily, keeps at most ``limit`` chunks in flight.

    ``make_task(chunk)`` builds the task of one chunk of items and ``submit``
    hands tasks to the supervisor; ``chunksize`` None adapts the chunk size
    to the measured rate over ``max_agents`` agents.
    """

    def __init__(
        self,
        source: Iterator[Any],
        *,
        make_task: Callable[[list[Any]], Task],
        submit: Callable[[list[Task]], None],
        chunksize: int | None,
        limit: int,
        max_agents: int,
        ordered: bool,
    ) -> None:
        self._source, self._make_task, self._submit = source, make_task, submit
        self._fixed = chunksize
        self._limit, self._max_agents, self._ordered = limit, max_agents, ordered
        self._inflight: deque[Task] = deque()
        self._completed: deque[Task] = deque()
        self._done_event = threading.Condition()
        self._exhausted = False
        self._buffer: deque[Any] = deque()
        self._items_done = 0
        self._t0 = time.monotonic()

    def _next_chunksize(self) -> int:
        if self._fixed is not None:
            return self._fixed
        return chunking.rate_size(self._items_done, time.monotonic() - self._t0, self._max_agents)

    def _fill(self) -> None:
        while not self._exhausted and len(self._inflight) < self._limit:
            chunk = list(itertools.islice(self._source, self._next_chunksize()))
            if not chunk:
                self._exhausted = True
                return
            task = self._make_task(chunk)
            if not self._ordered:
                task.future.add_done_callback(self._done_callback(task))
            self._inflight.append(task)
            self._submit([task])

    def _done_callback(self, task: Task) -> Callable[[Future[Any]], None]:
        def on_done(_future: Future[Any]) -> None:
            with self._done_event:
                self._completed.append(task)
                self._done_event.notify()

        return on_done

    def __next__(self) -> Any:
        while not self._buffer:
            self._fill()
            if not self._inflight:
                raise StopIteration
            try:
                task = self._take()
                results = task.future.result()
            except BaseException:
                self.close()
                raise
            self._items_done += len(results)
            self._buffer.extend(results)
        return self._buffer.popleft()

    def _take(self) -> Task:
        if self._ordered:
            return self._inflight.popleft()
        with self._done_event:
            while not self._completed:
                self._done_event.wait()
            task = self._completed.popleft()
        self._inflight.remove(task)
        return task

    def close(self) -> None:
        for task in self._inflight:
            task.future.cancel()
        self._inflight.clear()
        self._exhausted = True
