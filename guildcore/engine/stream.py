"""The consumer side of a streaming task: chunks in, credits out.

Flow control: the agent may send ``window`` chunks ahead of the consumer.
Each chunk the consumer takes grants one more credit, so at most ``window``
chunks are ever buffered in this process, whatever the producer's speed: a
slow consumer pauses the agent instead of growing memory.

The owner thread calls ``put_chunk``, ``resume`` and ``finish``; the
consumer's thread iterates. Closing the iterator (or dropping it) cancels the
task and frees the agent.

Big chunks (``bytes``/``bytearray``/``memoryview`` of 64 KiB up to
``streaming.chunk_size``) arrive through the stream's shared-memory ring
(``shmbuf.Ring``): the CHUNK frame names a slot, and ``__next__`` copies the
slot out into a new ``bytes`` (``bytearray`` for a bytearray) before it
returns the credit that lets the agent reuse the slot.

Timeouts: the agent runs only while it holds credits. The owner thread
knows how many chunks arrived and how many credits it forwarded, so it
knows exactly when the agent is out of credits (``paused``); that time does
not count against the task's timeout (``resume`` returns it).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

from guildcore.engine.shmbuf import Ring
from guildcore.errors import SerializationError

_END = object()


class StreamState:
    def __init__(
        self, window: int, grant: Callable[[int], None], cancel: Callable[[], None], ring: Ring | None = None
    ) -> None:
        self.window = max(1, window)
        self.ring = ring
        self.granted = 0  # credits forwarded to the agent beyond the first window (owner thread)
        self.paused_since: float | None = None  # the agent is out of credits since (owner thread)
        self._grant = grant
        self._cancel = cancel
        self._chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.received = 0  # written by the owner thread
        self.consumed = 0  # written by the consumer thread
        self._done = False
        self._inline: Iterator[Any] | None = None

    # owner thread
    def put_chunk(self, index: int, value: Any, ref: list[Any] | None = None, *, now: float = 0.0) -> None:
        """One CHUNK frame; ``ref`` is ``[slot, nbytes, kind]`` for a chunk in the ring."""
        self.received += 1
        self._chunks.put((index, value, ref or None))
        if self.paused_since is None and self.waiting_for_consumer():
            self.paused_since = now

    def resume(self, n: int, now: float) -> float:
        """``n`` credits go to the agent; returns how long it had been paused (seconds)."""
        self.granted += n
        paused_s = 0.0
        if self.paused_since is not None and not self.waiting_for_consumer():
            paused_s = max(0.0, now - self.paused_since)
            self.paused_since = None
        return paused_s

    def finish(self, error: BaseException | None) -> None:
        if self.ring is not None:
            self.ring.unlink()  # Ownership: the one unlink; the mapping lives until read out
        if self._inline is not None and error is None:
            return  # the consumer drives an inline stream to its end itself
        self._chunks.put((_END, error, None))

    def waiting_for_consumer(self) -> bool:
        """True when the agent has used every credit: paused, not running (owner thread)."""
        return self.received >= self.window + self.granted

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
        index, value, ref = self._chunks.get()
        if index is _END:
            self._done = True
            self._unmap()
            if value is not None:
                raise value
            raise StopIteration
        if ref is not None:
            if self.ring is None:
                raise SerializationError("a ring chunk arrived for a stream without a ring; this is a bug in guildcore")
            value = self.ring.take(*ref)  # copied out before the credit frees the slot
        self.consumed += 1
        self._grant(1)
        return value

    def close(self) -> None:
        """Stop the stream: the agent closes the generator and takes new work."""
        if self._done:
            return
        self._done = True
        self._unmap()
        if self._inline is not None:
            close = getattr(self._inline, "close", None)
            if close is not None:
                close()
            return
        self._cancel()

    def _unmap(self) -> None:
        if self.ring is not None:
            self.ring.unmap()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
