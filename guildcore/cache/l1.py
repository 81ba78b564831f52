"""L1: a plain dict in this process, bounded by entry count.

Covers the fastest tier: lookups of recently used values without copying or
decoding. Does not cover byte budgets (L2 does) or anything shared between
agents (L3 does). Values are returned as stored, not copied: like
``functools.lru_cache``, callers must treat cached values as read-only.

When full, the oldest inserted entries go first (dict insertion order), an
eighth of them at once; a promotion re-inserts, so a hot entry moves to the
back. A namespace with an entry cap (``caps``, from its policy's
``max_entries``) also loses its own oldest entry when it reaches the cap.
``shrink`` drops the oldest entries down to a count (the monitor's cleanup).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

from guildcore.errors import ConfigError

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
    """``{(namespace, key): (value, expires)}``; ``expires`` 0.0 means never.

    ``caps`` maps a namespace to its entry cap; namespaces not in it are
    bounded only by ``max_entries``.
    """

    def __init__(self, max_entries: int = 1024, caps: Mapping[str, int] | None = None) -> None:
        if max_entries < 0:
            raise ConfigError(f"max_entries must be >= 0, not {max_entries}", key="max_entries")
        self.max_entries = max_entries
        self._data: dict[NsKey, tuple[Any, float]] = {}
        # Invariant: for each capped namespace, _ns_keys holds exactly its keys
        # in _data, oldest first.
        self._caps: dict[str, int] = {}
        self._ns_keys: dict[str, dict[NsKey, None]] = {}
        for namespace, cap in (caps or {}).items():
            self.set_cap(namespace, cap)

    def __len__(self) -> int:
        return len(self._data)

    def set_cap(self, namespace: str, cap: int | None) -> None:
        """Cap ``namespace`` at ``cap`` entries (None: no cap of its own)."""
        if cap is None:
            self._caps.pop(namespace, None)
            self._ns_keys.pop(namespace, None)
            return
        if cap < 1:
            raise ConfigError(f"the entry cap of namespace {namespace!r} must be >= 1, not {cap}", key="max_entries")
        self._caps[namespace] = cap
        keys = self._ns_keys.setdefault(namespace, {})
        if not keys:
            keys.update((k, None) for k in self._data if k[0] == namespace)
        while len(keys) > cap:
            self._drop(next(iter(keys)))

    def _drop(self, ns_key: NsKey) -> None:
        self._data.pop(ns_key, None)
        keys = self._ns_keys.get(ns_key[0])
        if keys is not None:
            keys.pop(ns_key, None)

    def get(self, ns_key: NsKey, now: float) -> Any:
        entry = self._data.get(ns_key)
        if entry is None:
            return MISS
        if entry[1] and entry[1] <= now:
            self._drop(ns_key)
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
                self._drop(old)
        cap = self._caps.get(ns_key[0]) if self._caps else None
        if cap is not None:
            keys = self._ns_keys[ns_key[0]]
            keys.pop(ns_key, None)
            while len(keys) >= cap:
                self._drop(next(iter(keys)))
            keys[ns_key] = None
        data[ns_key] = (value, expires)

    def delete(self, ns_key: NsKey) -> None:
        self._drop(ns_key)

    def clear(self, namespace: str | None = None) -> None:
        if namespace is None:
            self._data.clear()
            for keys in self._ns_keys.values():
                keys.clear()
            return
        for k in [k for k in self._data if k[0] == namespace]:
            self._drop(k)

    def shrink(self, keep: int) -> int:
        """Drop the oldest entries until at most ``keep`` remain; return how many went."""
        excess = len(self._data) - max(0, keep)
        if excess <= 0:
            return 0
        for old in list(islice(self._data, excess)):
            self._drop(old)
        return excess

    def count(self, namespace: str) -> int:
        keys = self._ns_keys.get(namespace)
        if keys is not None:
            return len(keys)
        return sum(1 for k in self._data if k[0] == namespace)
