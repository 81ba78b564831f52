"""L1: a plain dict in this process, bounded by entry count.

Covers the fastest tier: lookups of recently used values without copying or
decoding. Does not cover byte budgets (L2 does) or anything shared between
agents (L3 does). Values are returned as stored, not copied: like
``functools.lru_cache``, callers must treat cached values as read-only.

When full, the oldest inserted entries go first (dict insertion order), an
eighth of them at once; a promotion re-inserts, so a hot entry moves to the
back.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

__all__ = ["MISS", "L1Cache", "NsKey"]

NsKey = tuple[str, bytes]  # (namespace, key)

# A full L1 evicts max_entries // EVICT_DIVISOR entries at once. Finding the
# oldest entry walks the slots of every entry deleted since the dict last
# resized; one walk per entry made a full L1 cost 3,000 instructions per set
# (callgrind, 2,000 entries), one walk per eighth costs a few per set.
EVICT_DIVISOR = 8


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS: Any = _Miss()


class L1Cache:
    """``{(namespace, key): (value, expires)}``; ``expires`` 0.0 means never."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, not {max_entries}")
        self.max_entries = max_entries
        self._data: dict[NsKey, tuple[Any, float]] = {}

    def __len__(self) -> int:
        return len(self._data)

    def get(self, ns_key: NsKey, now: float) -> Any:
        entry = self._data.get(ns_key)
        if entry is None:
            return MISS
        if entry[1] and entry[1] <= now:
            del self._data[ns_key]
            return MISS
        return entry[0]

    def set(self, ns_key: NsKey, value: Any, expires: float) -> None:
        if not self.max_entries:
            return
        data = self._data
        if ns_key in data:
            del data[ns_key]  # re-inserted at the back: most recent
        elif len(data) >= self.max_entries:
            excess = len(data) - self.max_entries + 1
            for old in list(islice(data, excess + self.max_entries // EVICT_DIVISOR)):
                del data[old]
        data[ns_key] = (value, expires)

    def delete(self, ns_key: NsKey) -> None:
        self._data.pop(ns_key, None)

    def clear(self, namespace: str | None = None) -> None:
        if namespace is None:
            self._data.clear()
            return
        for k in [k for k in self._data if k[0] == namespace]:
            del self._data[k]

    def count(self, namespace: str) -> int:
        return sum(1 for k in self._data if k[0] == namespace)
