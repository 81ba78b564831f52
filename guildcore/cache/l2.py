"""L2: a least-recently-used map in this process, bounded by entries and bytes.

Covers the middle tier, backed by ``lru.LRU`` from the lru-dict package (a C
hash map with an intrusive LRU list). Does not cover persistence (L3). Bytes
are the size of a value's encoded form, known when it is written or read
from L3; values only ever seen in this process (session namespaces) count a
flat ``SESSION_VALUE_BYTES``.
"""

from __future__ import annotations

from typing import Any

import lru

from guildcore.cache.l1 import MISS, NsKey

__all__ = ["SESSION_VALUE_BYTES", "L2Cache"]

# Size charged for a value that was never encoded (its real size is unknown).
SESSION_VALUE_BYTES = 1024


class L2Cache:
    """``{(namespace, key): (value, expires, nbytes)}``, LRU-evicted."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 * 2**20) -> None:
        if max_entries < 1 or max_bytes < 0:
            raise ValueError(
                f"L2 needs max_entries >= 1 and max_bytes >= 0, not {max_entries}, {max_bytes}"
            )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._lru = lru.LRU(max_entries, callback=self._evicted)

    def _evicted(self, _key: NsKey, entry: tuple[Any, float, int]) -> None:
        # Invariant: self.nbytes is the sum of nbytes over the entries held.
        self.nbytes -= entry[2]

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, ns_key: NsKey, now: float) -> Any:
        entry = self.entry(ns_key, now)
        return MISS if entry is None else entry[0]

    def entry(self, ns_key: NsKey, now: float) -> tuple[Any, float, int] | None:
        """``(value, expires, nbytes)`` of a live entry (marked most recent), else ``None``."""
        # ``in`` and ``[]`` are slot calls; ``LRU.get`` parses keyword arguments.
        lru_ = self._lru
        if ns_key not in lru_:
            return None
        entry: tuple[Any, float, int] = lru_[ns_key]
        if entry[1] and entry[1] <= now:
            self.delete(ns_key)
            return None
        return entry

    def set(self, ns_key: NsKey, value: Any, expires: float, nbytes: int) -> None:
        lru_ = self._lru
        if ns_key in lru_:
            self.nbytes -= lru_[ns_key][2]
            del lru_[ns_key]
        if nbytes > self.max_bytes:
            return
        lru_[ns_key] = (value, expires, nbytes)  # may evict the least recent (callback)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes and len(lru_):
            _, entry = lru_.popitem(least_recent=True)
            self.nbytes -= entry[2]

    def delete(self, ns_key: NsKey) -> None:
        entry = self._lru.pop(ns_key, None)
        if entry is not None:
            self.nbytes -= entry[2]

    def clear(self, namespace: str | None = None) -> None:
        if namespace is None:
            self._lru.clear()
            self.nbytes = 0
            return
        keys = self._lru.keys()
        for k in [k for k in keys if k[0] == namespace]:
            self.delete(k)

    def usage(self, namespace: str) -> tuple[int, int]:
        """``(entries, bytes)`` held for one namespace."""
        n = size = 0
        for k, entry in self._lru.items():
            if k[0] == namespace:
                n += 1
                size += entry[2]
        return n, size
