"""L2: a least-recently-used map in this process, bounded by entries and bytes.

Covers the middle tier, backed by ``lru.LRU`` from the lru-dict package (a C
hash map with an intrusive LRU list). Does not cover persistence (L3). Bytes
are the size of a value's encoded form, known when it is written or read
from L3; values only ever seen in this process (session namespaces) count a
flat ``SESSION_VALUE_BYTES``.

A namespace with an entry cap (``caps``, from its policy's ``max_entries``)
loses its oldest written entry when a new one would pass the cap: within a
namespace the order is of writes, not reads (reads stay one C call).
``shrink`` drops the least recent entries down to a byte and entry budget
(the monitor's cleanup); ``set_budget`` changes the budgets themselves (the
monitor's conservative caching).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lru

from guildcore.cache.l1 import MISS, NamespaceCaps, NsKey
from guildcore.errors import ConfigError

__all__ = ["SESSION_VALUE_BYTES", "L2Cache"]

# Size charged for a value that was never encoded (its real size is unknown).
SESSION_VALUE_BYTES = 1024


class L2Cache:
    """``{(namespace, key): (value, expires, nbytes)}``, LRU-evicted."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 2**20,
        caps: Mapping[str, int] | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 0:
            raise ConfigError(
                f"L2 needs max_entries >= 1 and max_bytes >= 0, not {max_entries}, {max_bytes}"
            )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._lru = lru.LRU(max_entries, callback=self._evicted)
        self._caps = NamespaceCaps()
        for namespace, cap in (caps or {}).items():
            self.set_cap(namespace, cap)

    def _evicted(self, key: NsKey, entry: tuple[Any, float, int]) -> None:
        # Invariant: self.nbytes is the sum of nbytes over the entries held.
        self.nbytes -= entry[2]
        self._caps.forget(key)

    def __len__(self) -> int:
        return len(self._lru)

    def set_cap(self, namespace: str, cap: int | None) -> None:
        """Cap ``namespace`` at ``cap`` entries (None: no cap of its own)."""
        for old in self._caps.set_cap(namespace, cap, self._lru.keys()):
            self.delete(old)

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
            self.delete(ns_key)
        if nbytes > self.max_bytes:
            return
        caps = self._caps
        cap = caps.caps.get(ns_key[0]) if caps.caps else None
        if cap is not None:
            for old in caps.admit(ns_key, cap):
                self.delete(old)
        lru_[ns_key] = (value, expires, nbytes)  # may evict the least recent (callback)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes and len(lru_):
            self._pop_least_recent()

    def _pop_least_recent(self) -> None:
        # Not ``popitem(least_recent=True)``: lru-dict 1.4.1 keeps a reference
        # to the entry it returns, so every value evicted that way stayed in
        # memory for good (the monitor's cleanup freed nothing).
        last = self._lru.peek_last_item()
        if last is not None:
            self.delete(last[0])

    def delete(self, ns_key: NsKey) -> None:
        entry = self._lru.pop(ns_key, None)
        if entry is not None:
            self.nbytes -= entry[2]
            self._caps.forget(ns_key)

    def clear(self, namespace: str | None = None) -> None:
        if namespace is None:
            self._lru.clear()
            self.nbytes = 0
            self._caps.clear()
            return
        for k in [k for k in self._lru.keys() if k[0] == namespace]:  # noqa: SIM118 - LRU is not iterable
            self.delete(k)

    def shrink(self, max_bytes: int, max_entries: int) -> int:
        """Drop the least recent entries until both budgets hold; return how many went."""
        lru_ = self._lru
        dropped = 0
        while len(lru_) and (self.nbytes > max_bytes or len(lru_) > max_entries):
            self._pop_least_recent()
            dropped += 1
        return dropped

    def set_budget(self, max_entries: int, max_bytes: int) -> None:
        """New entry and byte budgets; entries over them go now, least recent first."""
        self.shrink(max_bytes, max_entries)
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lru.set_size(max_entries)

    def usage(self, namespace: str) -> tuple[int, int]:
        """``(entries, bytes)`` held for one namespace."""
        n = size = 0
        for k, entry in self._lru.items():
            if k[0] == namespace:
                n += 1
                size += entry[2]
        return n, size
