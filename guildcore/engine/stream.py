"""The consumer side of a streaming task: chunks in, credits out.

Flow control: the agent may send ``window`` chunks ahead of the consumer.
Each chunk the consumer is done with grants one more credit, so at most
``window`` chunks are ever buffered, whatever the producer's speed: a slow
consumer pauses the agent instead of growing memory.

Two channels, one per kind of stream:

- with a ring (``ring.py``, the usual case) chunks and credits pass
  directly between the agent and the consumer's thread: slots in shared
  memory, records and credits over two FIFOs. The owner thread only ends the
  stream (``finish``: a byte on the wake-up pipe) and reads the agent's
  pause times from the ring to keep them off the task's timeout;
- without one (``/dev/shm`` refused the ring) every chunk is a CHUNK frame
  through the owner thread (``put_chunk``) and every credit a CREDIT frame
  back (``grant``), as are chunks too big for a slot in either case.

Copies or views: ``__next__`` returns values the consumer owns (a slot is
copied out, then handed back). After ``views()`` chunks that came through a
slot are returned in place: a read-only ``memoryview`` (a numpy array for an
ndarray chunk) over the slot. A slot goes back to the agent once nothing
made from its chunk is alive, checked at each ``__next__``.

Invariant: credits go back in chunk order (the agent writes chunk ``k``
into slot ``k % window`` with any credit in hand, so a later chunk's credit
must never free an earlier chunk's slot): a chunk still in use holds back
the credits of the chunks after it. A consumer that keeps one chunk while it
reads the next (``for a in it.views(): x = np.asarray(a)``: ``x`` lives until
the next one is bound) holds one slot; one that keeps ``window`` chunks gets
an error instead of a stream that would stop forever.

The owner thread calls ``put_chunk``, ``resume`` and ``finish``; the
consumer's thread iterates. Closing the iterator (or dropping it) cancels the
task and frees the agent.
"""

from __future__ import annotations

import mmap
import os
import queue
from collections import deque
from collections.abc import Callable, Iterator

from guildcore.engine import ring as ring_mod
from guildcore.engine.ring import Ring
from guildcore.errors import GuildError

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

_END = object()
_INLINE = object()  # an inline stream was handed over: the consumer drives it


class StreamState:
    def __init__(
        self, window: int, grant: Callable[[int], None], cancel: Callable[[], None], ring: Ring | None = None
    ) -> None:
        self.window = max(1, window)
        self.ring = ring
        self.granted = 0  # credits forwarded to the agent beyond the first window (owner thread)
        self._paused_since: float | None = None  # frame channel: the agent is out of credits since
        self._grant = grant
        self._cancel = cancel
        self._chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.received = 0  # written by the owner thread
        self.consumed = 0  # written by the consumer thread
        self._done = False
        self._inline: Iterator[Any] | None = None
        self._on_end: Callable[[BaseException | None, bool], None] | None = None
        self._views = False
        # Chunks not credited back yet, oldest first, with the view that pins
        # each slot (None: nothing pins it, it waits behind an older one).
        self._uncredited: deque[tuple[int, mmap.mmap | None]] = deque()
        self._ending = False  # the wake-up pipe fired: drain what is left, then end
        self._wake_r, self._wake_w = os.pipe() if ring is not None else (-1, -1)

    # owner thread
    def put_chunk(self, index: int, value: Any, ref: list[Any] | None = None, *, now: float = 0.0) -> None:
        """One CHUNK frame (``ref`` is a leftover of the older protocol, unused)."""
        self.received += 1
        self._chunks.put((index, value))
        if self.ring is None and self._paused_since is None and self.waiting_for_consumer():
            self._paused_since = now

    def resume(self, n: int, now: float) -> float:
        """``n`` credits go to the agent; returns how long it had been paused (seconds)."""
        self.granted += n
        paused_s = 0.0
        if self._paused_since is not None and not self.waiting_for_consumer():
            paused_s = max(0.0, now - self._paused_since)
            self._paused_since = None
        return paused_s

    @property
    def paused_since(self) -> float | None:
        """Since when the agent waits for the consumer (monotonic clock), or None if it runs."""
        if self.ring is not None:
            since = self.ring.paused()[0]
            return since or None
        return self._paused_since

    @property
    def paused_total_s(self) -> float:
        """Seconds the agent waited for the consumer, not yet added to the task's start time.

        Owner thread: the supervisor adds it to a stream task's deadline.
        The frame channel moves the start time on in ``resume`` instead.
        """
        return self.ring.paused()[1] if self.ring is not None else 0.0

    def finish(self, error: BaseException | None) -> None:
        """The task ended (owner thread, once per task)."""
        if self.ring is not None:
            self.ring.unlink()  # Ownership: the one unlink; the mappings live until read out
        inline_done = self._inline is not None and error is None  # its consumer drove it to its end
        if not inline_done:
            self._chunks.put((_END, error))
        # Ownership: the write end belongs to this side and is closed here,
        # once: the consumer may have closed its end already (EPIPE is fine).
        wake, self._wake_w = self._wake_w, -1
        if wake >= 0:
            try:
                if not inline_done:
                    os.write(wake, b"x")
            except OSError:
                pass
            os.close(wake)

    def waiting_for_consumer(self) -> bool:
        """True when the agent has used every credit: paused, not running (owner thread)."""
        return self.received >= self.window + self.granted

    def run_inline(self, gen: Iterator[Any], on_end: Callable[[BaseException | None, bool], None]) -> None:
        """Run in the supervisor's process: the consumer drives ``gen`` itself.

        ``on_end(error, cancelled)`` is called once, from the consumer's
        thread, when the generator ends, raises, or the consumer closes it.
        """
        self._on_end = on_end
        self._inline = iter(gen)
        self._chunks.put((_INLINE, None))  # wakes a consumer already waiting for frame chunks
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"i")  # ... or for its ring, which no agent will write
            except OSError:
                pass

    # consumer thread
    def __iter__(self) -> Iterator[Any]:
        return self

    def views(self) -> StreamState:
        """From now on, chunks that come through a slot are returned in place (see the module doc)."""
        self._views = True
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self._inline is not None and self._chunks.empty():
            return self._next_inline()
        ring = self.ring
        if ring is None or self._inline is not None:
            return self._next_from_queue()
        self._credit_in_order()
        record = ring.next_record(self._wake_r, block=not self._ending)
        if record is None and self._inline is not None:
            return self._next_inline()  # handed over to run inline while we waited
        if record is None and not self._ending:
            self._ending = True  # ended by the supervisor: take what the agent wrote before
            record = ring.next_record(self._wake_r, block=False)
        if record is None:
            return self._end()
        index, kind, nbytes, meta, inline = record
        if kind == ring_mod.QUEUE:
            value = self._from_queue(index)
        elif kind == ring_mod.INLINE:
            value = _decode(inline)
        elif self._views:
            value, pinned = ring.view(index, kind, nbytes, meta)
            if pinned is not None or self._uncredited:
                self._uncredited.append((index, pinned))
                self.consumed += 1
                return value
        else:
            value = ring.take(index, kind, nbytes, meta)  # copied out before the credit frees the slot
        if self._uncredited:
            self._uncredited.append((index, None))  # Invariant: credits go back in order
        else:
            ring.release()
        self.consumed += 1
        return value

    def _credit_in_order(self) -> None:
        """Credit back the oldest chunks that nothing uses any more; refuse to wait forever."""
        assert self.ring is not None
        freed = 0
        while self._uncredited:
            _index, pinned = self._uncredited[0]
            if pinned is not None:
                try:
                    pinned.close()
                except BufferError:
                    break  # a view or array made from it is alive: its slot stays
            self._uncredited.popleft()
            freed += 1
        if freed:
            self.ring.release(freed)
        if len(self._uncredited) >= self.window and not self._ending:
            oldest = self._uncredited[0][0]
            self.close()
            raise GuildError(
                f"chunk {oldest} of this stream is still in use, and the agent needs its slot for chunk "
                f"{oldest + self.window} (the ring has {self.window} slots, streaming.window): views() hands "
                "out chunks in place, and a slot goes back only once nothing made from its chunk is alive; "
                "copy what you keep (bytes(view), array.copy()), or iterate without views()"
            )

    def _from_queue(self, index: int) -> Any:
        while True:
            got, value = self._chunks.get()
            if got is _END:  # the chunk's frame never came (it could not be read): end as told
                return self._finish_consumer(value)
            if got == index:
                return value

    def _next_from_queue(self) -> Any:
        index, value = self._chunks.get()
        if index is _INLINE:
            return self._next_inline()
        if index is _END:
            return self._finish_consumer(value)
        self.consumed += 1
        self._grant(1)
        return value

    def _end(self) -> Any:
        while True:
            index, value = self._chunks.get()
            if index is _END:
                return self._finish_consumer(value)

    def _finish_consumer(self, error: BaseException | None) -> Any:
        self._done = True
        self._close_channel()
        if error is not None:
            raise error
        raise StopIteration

    def _next_inline(self) -> Any:
        assert self._inline is not None
        try:
            return next(self._inline)
        except StopIteration:
            self._done = True
            self._close_channel()
            self._ended(None, False)
            raise
        except BaseException as exc:
            self._done = True
            self._close_channel()
            self._ended(exc, False)
            raise

    def _ended(self, error: BaseException | None, cancelled: bool) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(error, cancelled)

    def close(self) -> None:
        """Stop the stream: the agent closes the generator and takes new work."""
        if self._done:
            return
        self._done = True
        if self._inline is not None:
            self._close_channel()
            close = getattr(self._inline, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self._ended(None, True)
            return
        self._cancel()
        self._close_channel()

    def _close_channel(self) -> None:
        """Let go of the ring (its mapping stays while a view handed out is alive)."""
        self._uncredited.clear()
        if self.ring is not None:
            self.ring.close()
        if self._wake_r >= 0:
            os.close(self._wake_r)
            self._wake_r = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _decode(data: bytes) -> Any:
    from guildcore import codec

    return codec.decode(data)
