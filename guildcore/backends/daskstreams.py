"""The caller's side of a streaming task on Dask: chunks in, credits out.

Data flow::

    worker (daskworker._run_stream)        scheduler                 caller
    ───────────────────────────────        ─────────                 ──────
    next(gen) -> [CHUNK, i, blob] ──put──> chunk queue ──get──> StreamLink._pull (a coroutine on
                                                                 the client's event loop)
                                                                   -> StreamState.put_chunk -> consumer
    before each chunk: credits? <──get──── credit queue <──put──── grant(1) per chunk taken,
                                                                   CANCEL when the consumer closes
    at the end: [END, n, cancelled] ──> chunk queue ──> _pull ends; the pool finishes the task

The credit window is the same as with local agents: the worker sends at
most ``streaming.window`` chunks ahead of the consumer, and holds a value it
has computed until a credit arrives. Both queues live on the scheduler, so
every chunk crosses it (Dask's queues are meant for small items: big chunks
cost a copy there). The order of the chunk queue is the order of the
stream: when a worker dies, the pool puts an END item after the chunks the
worker sent, so they all still reach the consumer before the error.

It does not cover running the generator (``daskworker``) nor retrying or
finishing the task (``dask.DaskPool``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from distributed import Queue

from guildcore import codec
from guildcore.backends.daskworker import CANCEL, CHUNK, END
from guildcore.engine.stream import StreamState
from guildcore.errors import SerializationError

log = logging.getLogger("guildcore.dask")


class StreamLink:
    """The two queues of one streaming task and the coroutine that pulls its chunks.

    Both callbacks run on the client's event loop: ``on_chunk(index, value)``
    for each chunk, in order, and ``on_end(item_or_error)`` once, when the
    END item arrives (or the chunk queue fails). The pool hands both to its
    owner thread, which alone touches the ``StreamState``'s flow control.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        state: StreamState,
        on_chunk: Callable[[int, object], None],
        on_end: Callable[[object], None],
    ) -> None:
        self._client = client
        self._state = state
        self._on_chunk = on_chunk
        self._on_end = on_end
        self.chunks = Queue(f"{name}-chunks", client=client)
        self.credits = Queue(f"{name}-credits", client=client)
        self._closed = False

    def describe(self) -> tuple[str, str, int]:
        """What the worker needs: both queue names and the credit window."""
        return (self.chunks.name, self.credits.name, self._state.window)

    def start(self) -> None:
        self._spawn(self._pull())

    def grant(self, n: int) -> None:
        """The consumer took ``n`` chunks: the worker may send ``n`` more."""
        if not self._closed:
            self._spawn(self.credits.put(n, asynchronous=True))

    def cancel(self) -> None:
        """Ask the worker to close the generator before its next chunk."""
        if not self._closed:
            self._spawn(self.credits.put(CANCEL, asynchronous=True))

    def end_now(self) -> None:
        """The worker is gone: end the stream after the chunks it sent."""
        if not self._closed:
            self._spawn(self.chunks.put([END, -1, False], asynchronous=True))

    def close(self) -> None:
        """Release both queues on the scheduler (once the END item was read)."""
        if self._closed:
            return
        self._closed = True
        for queue in (self.chunks, self.credits):
            try:
                queue.close()
            except Exception:
                pass  # the client is closing: the scheduler drops the queues with it

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._client.loop.asyncio_loop)
        except RuntimeError:  # the event loop is closed: the client is gone
            coro.close()
            return
        future.add_done_callback(_log_failure)

    async def _pull(self) -> None:
        while True:
            try:
                item = await self.chunks.get(asynchronous=True)
            except Exception as exc:
                self._on_end(exc)
                return
            if item[0] != CHUNK:
                self._on_end(item)
                return
            try:
                value = codec.decode(item[2])
            except SerializationError as exc:
                self._on_end(exc)
                return
            self._on_chunk(item[1], value)


def _log_failure(future: Future[Any]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        log.debug("a stream queue operation failed: %s", exc)


__all__ = ["CANCEL", "END", "StreamLink"]
