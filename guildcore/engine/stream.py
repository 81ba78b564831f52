"""The consumer side of a streaming task: chunks in, credits out.

Flow control: the agent may send ``window`` chunks ahead of the consumer.
Each chunk the consumer takes grants one more credit, so at most ``window``
chunks are ever buffered in this process, whatever the producer's speed: a
slow consumer pauses the agent instead of growing memory.

The owner thread calls ``put_chunk`` and ``finish``; the consumer's thread
iterates. Closing the iterator (or dropping it) cancels the task and frees
the agent.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

_END = object()


class StreamState:
    def __init__(self, window: int, grant: Callable[[int], None], cancel: Callable[[], None]) -> None:
        self.window = max(1, window)
        self._grant = grant
        self._cancel = cancel
        self._chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.received = 0  # written by the owner thread
        self.consumed = 0  # written by the consumer thread
        self._done = False
        self._inline: Iterator[Any] | None = None

    # owner thread
    def put_chunk(self, index: int, value: Any) -> None:
        self.received += 1
        self._chunks.put((index, value))

    def finish(self, error: BaseException | None) -> None:
        if self._inline is not None and error is None:
            return  # the consumer drives an inline stream to its end itself
        self._chunks.put((_END, error))

    def waiting_for_consumer(self) -> bool:
        """True when the agent has used every credit: paused, not running."""
        return self.received - self.consumed >= self.window

    def run_inline(self, gen: Iterator[Any]) -> None:
        self._inline = iter(gen)

    # consumer thread
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self._inline is not None and self._chunks.empty():
            try:
                return next(self._inline)
            except StopIteration:
                self._done = True
                raise
        index, value = self._chunks.get()
        if index is _END:
            self._done = True
            if value is not None:
                raise value
            raise StopIteration
        self.consumed += 1
        self._grant(1)
        return value

    def close(self) -> None:
        """Stop the stream: the agent closes the generator and takes new work."""
        if self._done:
            return
        self._done = True
        if self._inline is not None:
            close = getattr(self._inline, "close", None)
            if close is not None:
                close()
            return
        self._cancel()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
