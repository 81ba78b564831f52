"""The engine's result cache: ``map(..., cache=True)`` and ``submit(..., cache=True)``.

Each item's key is ``key_of(fingerprint(fn), mode, item, context digest)``:
the function's code, its input, and the content of the context it may read.
Before dispatch the supervisor-side Guild looks every key up at once
(``get_many``: one LMDB read transaction); only misses become tasks. Each
finished chunk stores its results in one write transaction from the owner
thread the moment it completes, so a batch interrupted by Ctrl-C or by a
SIGKILL of the supervisor resumes where it stopped: the rerun finds what
finished and computes only the rest. Failures are never cached.

A cache problem never fails the batch: an item whose key cannot be built is
simply not cached, and a store error is logged.
"""

from __future__ import annotations

import logging
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


class ResultCache:
    """Opened lazily by the Guild the first time ``cache=True`` is used."""

    def __init__(self, cache: TieredCache) -> None:
        self.cache = cache
        self._lock = threading.Lock()
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
        """Store the chunk's results as soon as its future succeeds (owner thread)."""

        def store(fut: Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            values = [fut.result()] if single else fut.result()
            pairs = [(k, v) for k, v in zip(item_keys, values, strict=False) if k is not None]
            if not pairs:
                return
            try:
                self.cache.set_many(NAMESPACE, pairs)
            except Exception as exc:
                log.warning("could not store %d results in the cache: %s", len(pairs), exc)

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
        try:
            self.cache.close()
        except Exception as exc:
            log.warning("closing the result cache failed: %s", exc)
