"""The engine's result cache: ``map(..., cache=True)`` and ``submit(..., cache=True)``.

Each item's key is ``key_of(fingerprint(fn), mode, item, context digest)``:
the function's code, its input, and the content of the context it may read.
Before dispatch the supervisor-side Guild looks every key up at once
(``get_many``: one LMDB read transaction); only misses become tasks. Each
finished chunk's results are handed, the moment it completes, to one writer
thread that stores them in one write transaction (several chunks finished
meanwhile share one), so a batch interrupted by Ctrl-C or by a SIGKILL of
the supervisor resumes where it stopped: the rerun finds what was stored and
computes only the rest. Failures are never cached.

Why a writer thread: a chunk completes on the supervisor's owner thread
(its future's callbacks run there), and an LMDB write (a map-full eviction
above all) can take long; meanwhile no frame would be read, no memory
sampled and no task killed. A lookup first waits for the writes handed over
before it, so a Guild always finds what it stored itself.

A cache problem never fails the batch: an item whose key cannot be built is
simply not cached, and a store error is logged.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from guildcore import keys
from guildcore.cache import TieredCache

log = logging.getLogger("guildcore.cache")

NAMESPACE = "result"


class _Miss:
    __slots__ = ()


MISS: Any = _Miss()


class _Writer:
    """The thread that stores finished chunks' results, in the order they finished.

    Ownership: this thread alone writes the ``result`` namespace for the Guild
    (a write transaction belongs to one thread).
    """

    def __init__(self, cache: TieredCache) -> None:
        self._cache = cache
        self._pairs: queue.SimpleQueue[list[tuple[bytes, Any]] | None] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0  # batches handed over and not yet stored
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, pairs: list[tuple[bytes, Any]]) -> None:
        with self._idle:
            if self._closed:  # a late chunk after close: store it here and now
                self._store(pairs)
                return
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="guild-cache-writer", daemon=True)
                self._thread.start()
        self._pairs.put(pairs)

    def _run(self) -> None:
        while True:
            first = self._pairs.get()
            if first is None:
                return
            batch, taken = list(first), 1
            while True:  # whatever else finished meanwhile goes in the same transaction
                try:
                    more = self._pairs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._pairs.put(None)  # stop after this batch
                    break
                batch += more
                taken += 1
            try:
                self._store(batch)
            finally:
                # Invariant: an idle writer holds no result: the last batch's
                # values would stay alive until the next batch came, out of
                # reach of a memory monitor emptying the cache.
                del first, batch
                more = None
                with self._idle:
                    self._pending -= taken
                    self._idle.notify_all()

    def _store(self, pairs: list[tuple[bytes, Any]]) -> None:
        try:
            self._cache.set_many(NAMESPACE, pairs)
        except Exception as exc:
            log.warning("could not store %d results in the cache: %s", len(pairs), exc)

    def flush(self) -> None:
        """Wait until everything handed over so far is stored (or failed to be)."""
        with self._idle:
            while self._pending:
                self._idle.wait()

    def close(self) -> None:
        with self._idle:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._pairs.put(None)
        thread.join()


class ResultCache:
    """Opened lazily by the Guild the first time ``cache=True`` is used."""

    def __init__(self, cache: TieredCache) -> None:
        self.cache = cache
        self._lock = threading.Lock()
        self._writer = _Writer(cache)
        self.items_hit = 0
        self.items_missed = 0

    def keys_for(
        self, fn: Callable[..., Any], mode: int, items: Sequence[Any], context_digest: bytes | None
    ) -> list[bytes | None]:
        """One key per item; None for an item whose key cannot be built (not cached)."""
        try:
            fp = keys.fingerprint(fn)
        except Exception as exc:
            log.warning("results of %r are not cached: no fingerprint (%s)", fn, exc)
            return [None] * len(items)
        out: list[bytes | None] = []
        for item in items:
            try:
                out.append(keys.key_of(fp, mode, item, context_digest))
            except Exception:
                out.append(None)
        return out

    def lookup(self, item_keys: Sequence[bytes | None]) -> list[Any]:
        """The cached value per key, or ``MISS``."""
        wanted = [k for k in item_keys if k is not None]
        self._writer.flush()  # what this Guild stored before must be found
        try:
            found = self.cache.get_many(NAMESPACE, wanted) if wanted else {}
        except Exception as exc:
            log.warning("result cache lookup failed (%s); computing everything", exc)
            found = {}
        out = [found.get(k, MISS) if k is not None else MISS for k in item_keys]
        with self._lock:
            hits = sum(1 for v in out if v is not MISS)
            self.items_hit += hits
            self.items_missed += len(out) - hits
        return out

    def store_when_done(self, future: Future[Any], item_keys: Sequence[bytes | None], *, single: bool) -> None:
        """Store the chunk's results as soon as its future succeeds (handed to the writer)."""
        writer = self._writer

        def store(fut: Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            values = [fut.result()] if single else fut.result()
            pairs = [(k, v) for k, v in zip(item_keys, values, strict=False) if k is not None]
            if pairs:
                writer.put(pairs)

        future.add_done_callback(store)

    def stats(self) -> dict[str, Any]:
        total = self.items_hit + self.items_missed
        out: dict[str, Any] = {
            "items_hit": self.items_hit,
            "items_missed": self.items_missed,
            "hit_rate": (self.items_hit / total) if total else None,
        }
        try:
            out["tiers"] = self.cache.stats()
        except Exception as exc:
            out["tiers"] = {"error": str(exc)}
        return out

    def close(self) -> None:
        """Store what is still being written, then close the stores."""
        self._writer.close()
        try:
            self.cache.close()
        except Exception as exc:
            log.warning("closing the result cache failed: %s", exc)
