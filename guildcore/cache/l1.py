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

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from guildcore.errors import ConfigError

__all__ = ["MISS", "L1Cache", "NamespaceCaps", "NsKey"]

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


class NamespaceCaps:
    """The entry caps of namespaces in one in-process tier, and each capped namespace's keys.

    Both tiers (L1, L2) keep the invariant: for each capped namespace,
    ``keys[namespace]`` holds exactly its keys in the tier, oldest written
    first. The tier asks which keys to drop (``set_cap``, ``admit``) and
    drops them itself, telling this table through ``forget``.
    """

    __slots__ = ("caps", "keys")

    def __init__(self) -> None:
        self.caps: dict[str, int] = {}
        self.keys: dict[str, dict[NsKey, None]] = {}

    def set_cap(self, namespace: str, cap: int | None, held: Iterable[NsKey]) -> list[NsKey]:
        """Cap ``namespace`` (None: no cap of its own); the keys of ``held`` the new cap pushes out."""
        if cap is None:
            self.caps.pop(namespace, None)
            self.keys.pop(namespace, None)
            return []
        if cap < 1:
            raise ConfigError(f"the entry cap of namespace {namespace!r} must be >= 1, not {cap}", key="max_entries")
        self.caps[namespace] = cap
        keys = self.keys.setdefault(namespace, {})
        if not keys:
            keys.update((k, None) for k in held if k[0] == namespace)
        return list(islice(keys, max(0, len(keys) - cap)))

    def admit(self, ns_key: NsKey, cap: int) -> list[NsKey]:
        """Record ``ns_key`` as its namespace's newest; the oldest keys it pushes out of the cap."""
        keys = self.keys[ns_key[0]]
        keys.pop(ns_key, None)
        out = list(islice(keys, max(0, len(keys) - cap + 1)))
        keys[ns_key] = None
        return out

    def forget(self, ns_key: NsKey) -> None:
        keys = self.keys.get(ns_key[0]) if self.keys else None
        if keys is not None:
            keys.pop(ns_key, None)

    def clear(self) -> None:
        for keys in self.keys.values():
            keys.clear()

    def count(self, namespace: str) -> int | None:
        """Entries of ``namespace`` when it is capped (None: not counted here)."""
        keys = self.keys.get(namespace)
        return None if keys is None else len(keys)


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
        self._caps = NamespaceCaps()
        for namespace, cap in (caps or {}).items():
            self.set_cap(namespace, cap)

    def __len__(self) -> int:
        return len(self._data)

    def set_cap(self, namespace: str, cap: int | None) -> None:
        """Cap ``namespace`` at ``cap`` entries (None: no cap of its own)."""
        for old in self._caps.set_cap(namespace, cap, self._data):
            self._drop(old)

    def _drop(self, ns_key: NsKey) -> None:
        self._data.pop(ns_key, None)
        self._caps.forget(ns_key)

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
        caps = self._caps
        cap = caps.caps.get(ns_key[0]) if caps.caps else None
        if cap is not None:
            for old in caps.admit(ns_key, cap):
                self._drop(old)
        data[ns_key] = (value, expires)

    def delete(self, ns_key: NsKey) -> None:
        self._drop(ns_key)

    def clear(self, namespace: str | None = None) -> None:
        if namespace is None:
            self._data.clear()
            self._caps.clear()
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
        counted = self._caps.count(namespace)
        if counted is not None:
            return counted
        return sum(1 for k in self._data if k[0] == namespace)
