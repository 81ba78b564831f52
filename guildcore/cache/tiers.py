"""The tiered cache: L1 → L2 → L3, promotion on hit, write-through on set.

Covers the one object the rest of guildcore talks to: lookups that try the
in-process tiers before the disk, writes that go through all three, batch
calls for the supervisor (``get_many``/``set_many``: one LMDB transaction
per batch), namespaces and their policies, invalidation, statistics. Does
not cover the tiers' internals (``l1``, ``l2``, ``l3``) or memoizing
functions (``cached``).

Data flow::

    get(ns, key) ──► L1 dict ──miss──► L2 LRU ──miss──► L3 LMDB ──miss──► default
                      ▲  hit             │ hit            │ hit (decoded once)
                      └──── promote ─────┴──── promote ───┘
    set(ns, key, v) ──► encode + L3 write ──► L2 ──► L1   (session namespaces skip L3)

A value over ``PROMOTE_ON_SECOND_READ_BYTES`` (4 kB) stored in L3 is promoted
on its second read from L3, not its first (see the constant for why).

L1 and L2 are per process: an entry deleted or invalidated by another agent
stays visible here until it expires or is evicted from memory. L3 is opened
lazily, in the process that first needs it (never inherited across fork;
see ``l3``). Values are returned as stored: treat them as read-only.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import xxhash

from guildcore._records import made_once
from guildcore.cache.l1 import MISS, L1Cache
from guildcore.cache.l2 import SESSION_VALUE_BYTES, L2Cache
from guildcore.cache.l3 import L3Store
from guildcore.cache.policy import (
    DEFAULT_POLICIES,
    CachePolicy,
    check_namespace,
    policies_from_config,
)
from guildcore.errors import ConfigError, ConfigTypeError

__all__ = ["Key", "TieredCache"]

log = logging.getLogger("guildcore.cache")

Key = bytes | str
MAX_KEY_BYTES = 400  # LMDB keys stop at 511 bytes; longer keys are hashed
# L1 holds only small values: it has no byte budget of its own.
L1_MAX_VALUE_BYTES = 64 * 1024
L1_SHARE = 8  # L1 keeps memory_entries / L1_SHARE entries; L2 keeps them all
# A value read from L3 that is bigger than this enters L2 (and L1) on its
# second read only. Holding a value read once costs fresh memory, and on this
# VM page faults dominate: a first read from disk through the tiers took
# 0.7 ms promoted against 0.13 ms not at 1 MB, 17 us against 7 us at 10 kB.
# Big values read once also push many small entries out of L2.
PROMOTE_ON_SECOND_READ_BYTES = 4096
SEEN_ONCE_MAX = 1024  # big values remembered as read once, oldest forgotten first


def _norm(key: Key) -> bytes:
    if type(key) is bytes and len(key) <= MAX_KEY_BYTES:
        return key
    if isinstance(key, str):
        key = key.encode()
    elif not isinstance(key, bytes | bytearray | memoryview):
        raise ConfigTypeError(f"cache keys are bytes or str, not {type(key).__name__}", key="key", value=key)
    key = bytes(key)
    return key if len(key) <= MAX_KEY_BYTES else b"#" + xxhash.xxh3_128_digest(key)


class TieredCache:
    """Three tiers behind one API; safe to share between the threads of one process.

    ``ttl`` arguments: ``None`` means the namespace's TTL, ``math.inf`` never.
    ``memory_bytes`` bounds L2 (L1 holds only values under 64 kB),
    ``memory_entries`` the count of L2 (L1 keeps an eighth of it).
    """

    def __init__(
        self,
        path: str,
        *,
        map_size: int = 2**30,
        memory_bytes: int = 64 * 2**20,
        memory_entries: int = 10_000,
        policies: Mapping[str, CachePolicy] | None = None,
        compress: bool = True,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.map_size = map_size
        self.compress = compress
        self.enabled = enabled
        # Off under memory pressure (the monitor): nothing new is cached; reads still hit.
        self.writes = True
        self._memory_budget = (max(1, memory_entries), memory_bytes)  # as configured
        self.clock = clock
        self.policies: dict[str, CachePolicy] = dict(
            DEFAULT_POLICIES if policies is None else policies
        )
        for name in self.policies:
            check_namespace(name)
        caps = {n: p.max_entries for n, p in self.policies.items() if p.max_entries is not None}
        self._l1 = L1Cache(max(1, memory_entries // L1_SHARE), caps)
        self._l2 = L2Cache(max(1, memory_entries), memory_bytes, caps)
        self._l3: L3Store | None = None
        self._persistent = {n for n, p in self.policies.items() if p.persistent}
        # keys of big values read once from L3 (see PROMOTE_ON_SECOND_READ_BYTES)
        self._seen_once: dict[tuple[str, bytes], None] = {}
        self._mem_lock = threading.Lock()  # guards L2 (several steps per call)
        self._open_lock = threading.Lock()
        # namespace -> [l1 hits, l2 hits, l3 hits, misses]; flushed deltas kept apart
        self._counts: dict[str, list[int]] = {}
        self._flushed: dict[str, tuple[int, int]] = {}

    @classmethod
    def from_config(cls, cfg: Any, *, clock: Callable[[], float] = time.time) -> TieredCache:
        """Build from a ``guildcore.config.Config`` (``caching`` and ``optimization``)."""
        caching = cfg.caching
        return cls(
            cfg.cache_path(),
            map_size=caching.disk_cache,
            memory_bytes=caching.memory_cache,
            memory_entries=caching.memory_entries,
            policies=policies_from_config(caching),
            compress=bool(getattr(cfg.optimization, "compression", True)),
            enabled=caching.enabled,
            clock=clock,
        )

    def __repr__(self) -> str:
        state = "open" if self._l3 is not None else "L3 not opened"
        return f"<TieredCache {self.path} {state} l1={len(self._l1)} l2={len(self._l2)}>"

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def declare(self, namespace: str, policy: CachePolicy) -> None:
        """Add (or change) a namespace and its policy."""
        self.policies[check_namespace(namespace)] = policy
        if policy.persistent:
            self._persistent.add(namespace)
        else:
            self._persistent.discard(namespace)
        self._l1.set_cap(namespace, policy.max_entries)
        with self._mem_lock:
            self._l2.set_cap(namespace, policy.max_entries)
        if self._l3 is not None:
            self._l3.policies[namespace] = policy

    def _policy(self, namespace: str) -> CachePolicy:
        policy = self.policies.get(namespace)
        if policy is None:
            raise ConfigError(
                f"unknown cache namespace {namespace!r}; declare it with "
                f"declare({namespace!r}, CachePolicy(...)) or under caching.namespaces",
                key="namespace",
                value=namespace,
            )
        return policy

    @property
    def l3(self) -> L3Store:
        """The disk tier, opened on first use in this process."""

        def make() -> L3Store:
            return L3Store(self.path, map_size=self.map_size, policies=self.policies, compress=self.compress, clock=self.clock)

        return made_once(self, "_l3", self._open_lock, make)

    def _count(self, namespace: str) -> list[int]:
        counts = self._counts.get(namespace)
        if counts is None:
            counts = self._counts.setdefault(namespace, [0, 0, 0, 0])
        return counts

    def _expires(self, policy: CachePolicy, ttl: float | None, now: float) -> float:
        ttl = policy.ttl_s if ttl is None else ttl
        return 0.0 if ttl is None or ttl == math.inf else now + ttl

    # ------------------------------------------------------------ reads

    def get(self, namespace: str, key: Key, default: Any = None) -> Any:
        """The value cached under ``key``, or ``default``. Never raises for a bad entry."""
        if not self.enabled:
            return default
        nk = (namespace, key if type(key) is bytes and len(key) <= MAX_KEY_BYTES else _norm(key))
        now = self.clock()
        value = self._l1.get(nk, now)
        counts = self._counts.get(namespace) or self._count(namespace)
        if value is not MISS:
            counts[0] += 1
            return value
        with self._mem_lock:
            entry = self._l2.entry(nk, now)
        if entry is not None:
            counts[1] += 1
            if entry[2] <= L1_MAX_VALUE_BYTES:
                self._l1.set(nk, entry[0], entry[1])
            return entry[0]
        if namespace not in self._persistent:
            self._policy(namespace)  # raises for an unknown namespace
            counts[3] += 1
            return default
        hit = (self._l3 or self.l3).lookup(namespace, nk[1])
        if hit is None:
            counts[3] += 1
            return default
        counts[2] += 1
        value, expires, nbytes = hit
        if nbytes > PROMOTE_ON_SECOND_READ_BYTES:
            self._promote(nk, value, expires, nbytes)
        else:  # _promote, inlined: this is the path of every first read from disk
            with self._mem_lock:
                self._l2.set(nk, value, expires, nbytes)
            self._l1.set(nk, value, expires)
        return value

    def _promote(self, nk: tuple[str, bytes], value: Any, expires: float, nbytes: int) -> None:
        """Put a value read from L3 into L2 and L1; big ones on their second read."""
        if nbytes > PROMOTE_ON_SECOND_READ_BYTES:
            seen = self._seen_once
            with self._mem_lock:
                if seen.pop(nk, MISS) is MISS:
                    if len(seen) >= SEEN_ONCE_MAX:  # forget the oldest eighth (see l1)
                        for old in list(islice(seen, SEEN_ONCE_MAX // 8 or 1)):
                            del seen[old]
                    seen[nk] = None
                    return
                self._l2.set(nk, value, expires, nbytes)
            if nbytes <= L1_MAX_VALUE_BYTES:
                self._l1.set(nk, value, expires)
            return
        with self._mem_lock:
            self._l2.set(nk, value, expires, nbytes)
        self._l1.set(nk, value, expires)

    def get_many(self, namespace: str, keys: Iterable[Key]) -> dict[Key, Any]:
        """``{key: value}`` for the keys that hit; the L3 part is one transaction."""
        if not self.enabled:
            return {}
        now = self.clock()
        counts = self._count(namespace)
        out: dict[Key, Any] = {}
        missing: dict[bytes, Key] = {}
        for key in keys:
            nk = (namespace, _norm(key))
            value = self._l1.get(nk, now)
            if value is not MISS:
                counts[0] += 1
                out[key] = value
                continue
            with self._mem_lock:
                entry = self._l2.entry(nk, now)
            if entry is not None:
                counts[1] += 1
                out[key] = entry[0]
            else:
                missing[nk[1]] = key
        if missing and namespace in self._persistent:
            for k, hit in self.l3.get_many(namespace, missing).items():
                self._promote((namespace, k), *hit)
                out[missing.pop(k)] = hit[0]
                counts[2] += 1
        else:
            self._policy(namespace)  # raises for an unknown namespace
        counts[3] += len(missing)
        return out

    def __contains__(self, ns_key: tuple[str, Key]) -> bool:
        sentinel = object()
        return self.get(ns_key[0], ns_key[1], sentinel) is not sentinel

    # ------------------------------------------------------------ writes

    def set(
        self,
        namespace: str,
        key: Key,
        value: Any,
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Write through all tiers. Raises ``SerializationError`` if L3 cannot encode it."""
        if not (self.enabled and self.writes):
            return
        policy = self._policy(namespace)
        nk = (namespace, key if type(key) is bytes and len(key) <= MAX_KEY_BYTES else _norm(key))
        expires = self._expires(policy, ttl, self.clock())
        if policy.persistent:
            store = self._l3 or self.l3
            nbytes = store.set_many(namespace, ((nk[1], value),), ttl_s=ttl, tags=tags)[0]
        else:
            nbytes = SESSION_VALUE_BYTES
        with self._mem_lock:
            self._l2.set(nk, value, expires, nbytes)
            self._seen_once.pop(nk, None)
        if nbytes <= L1_MAX_VALUE_BYTES:
            self._l1.set(nk, value, expires)
        else:
            self._l1.delete(nk)

    def set_many(
        self,
        namespace: str,
        items: Mapping[Key, Any] | Iterable[tuple[Key, Any]],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Write many values: one L3 transaction for the whole batch."""
        if not (self.enabled and self.writes):
            return
        policy = self._policy(namespace)
        pairs = items.items() if isinstance(items, Mapping) else items
        rows = [
            (k if type(k) is bytes and len(k) <= MAX_KEY_BYTES else _norm(k), v) for k, v in pairs
        ]
        now = self.clock()
        expires = self._expires(policy, ttl, now)
        if policy.persistent:
            sizes = (self._l3 or self.l3).set_many(namespace, rows, ttl_s=ttl, tags=tuple(tags))
        else:
            sizes = [SESSION_VALUE_BYTES] * len(rows)
        l1_set, l1_delete, l2_set = self._l1.set, self._l1.delete, self._l2.set
        seen = self._seen_once
        with self._mem_lock:
            for (k, value), nbytes in zip(rows, sizes, strict=True):
                l2_set((namespace, k), value, expires, nbytes)
                if seen:
                    seen.pop((namespace, k), None)
        for (k, value), nbytes in zip(rows, sizes, strict=True):
            if nbytes <= L1_MAX_VALUE_BYTES:
                l1_set((namespace, k), value, expires)
            else:
                l1_delete((namespace, k))

    def delete(self, namespace: str, key: Key) -> bool:
        """Remove one entry from every tier; return whether L3 had it."""
        nk = (namespace, _norm(key))
        self._l1.delete(nk)
        with self._mem_lock:
            self._l2.delete(nk)
            self._seen_once.pop(nk, None)
        if self._policy(namespace).persistent:
            return self.l3.delete(namespace, nk[1])
        return False

    def clear(self, namespace: str | None = None) -> None:
        """Remove every entry of one namespace (or all) from every tier."""
        self._l1.clear(namespace)
        with self._mem_lock:
            self._l2.clear(namespace)
            self._seen_once.clear()
        if namespace is None or self._policy(namespace).persistent:
            self.l3.clear(namespace)

    def invalidate_tag(self, tag: str) -> int:
        """Remove every entry set with ``tags=(tag, ...)``; return how many."""
        removed = self.l3.invalidate_tag(tag)
        for nk in removed:
            self._l1.delete(nk)
            with self._mem_lock:
                self._l2.delete(nk)
                self._seen_once.pop(nk, None)
        return len(removed)

    def evict_memory(self) -> None:
        """Drop L1 and L2 (the monitor's cleanup under memory pressure)."""
        self._l1.clear()
        with self._mem_lock:
            self._l2.clear()
            self._seen_once.clear()

    def shrink_memory(self, fraction: float = 0.5) -> int:
        """Keep ``fraction`` of what L1 and L2 hold, least recent out first; return entries dropped.

        The monitor's cleanup under memory pressure: L3 keeps every entry,
        so what goes is only a slower read away.
        """
        with self._mem_lock:
            dropped = self._l2.shrink(int(self._l2.nbytes * fraction), int(len(self._l2) * fraction))
            self._seen_once.clear()
        return dropped + self._l1.shrink(int(len(self._l1) * fraction))

    def set_caching(self, *, writes: bool, budget: float = 1.0) -> None:
        """Cache writes on or off, and the in-process tiers held to ``budget`` of their configured size.

        The monitor's levers: under memory pressure nothing new is cached
        (reads still hit, L3 keeps what it has), and a conservative budget
        keeps L1 and L2 at half. Lowering the budget drops the least recent
        entries at once.
        """
        self.writes = writes
        entries, nbytes = self._memory_budget
        l2_entries = max(1, int(entries * budget))
        with self._mem_lock:
            self._l2.set_budget(l2_entries, int(nbytes * budget))
        self._l1.max_entries = max(1, l2_entries // L1_SHARE)
        self._l1.shrink(self._l1.max_entries)

    def memory_bytes(self) -> int:
        """Bytes held in memory, as L2 counts them (encoded sizes); L1's small values are mostly L2's too."""
        return self._l2.nbytes

    def sweep(self, limit: int | None = None) -> int:
        """Remove expired L3 entries; the owner calls this on a timer."""
        swept = self.l3.sweep(limit)
        self.flush_stats()
        return swept

    def compact(self) -> tuple[int, int]:
        """Reclaim L3 file space; ``(bytes_before, bytes_after)``."""
        return self.l3.compact()

    # ------------------------------------------------------------ stats

    def flush_stats(self) -> None:
        """Add this process's hits and misses since the last flush to the store's totals."""
        if self._l3 is None:
            return
        deltas = {}
        for name, c in list(self._counts.items()):
            hits, misses = c[0] + c[1] + c[2], c[3]
            old = self._flushed.get(name, (0, 0))
            if (hits, misses) != old:
                deltas[name] = (hits - old[0], misses - old[1])
                self._flushed[name] = (hits, misses)
        self._l3.add_counters(deltas)

    def stats(self) -> dict[str, Any]:
        """Hits, misses, hit rate, entries and bytes, per tier and per namespace.

        Hits and misses are this process's; ``stored`` has the totals that
        every agent flushed into the store when it closed.
        """
        l3 = self.l3.stats()
        names = sorted(set(self.policies) | set(self._counts) | set(l3["namespaces"]))
        per_ns: dict[str, Any] = {}
        totals = [0, 0, 0, 0]
        for name in names:
            c = self._counts.get(name, [0, 0, 0, 0])
            totals = [a + b for a, b in zip(totals, c, strict=True)]
            l2_entries, l2_bytes = self._l2.usage(name)
            disk = l3["namespaces"].get(name, {"entries": 0, "bytes": 0})
            per_ns[name] = {
                **_rates(c[0] + c[1] + c[2], c[3]),
                "l1": {"hits": c[0], "entries": self._l1.count(name)},
                "l2": {"hits": c[1], "entries": l2_entries, "bytes": l2_bytes},
                "l3": {"hits": c[2], **disk},
            }
        lookups = sum(totals)
        tiers = {
            "l1": {
                **_rates(totals[0], lookups - totals[0]),
                "entries": len(self._l1),
                "max_entries": self._l1.max_entries,
            },
            "l2": {
                **_rates(totals[1], lookups - totals[0] - totals[1]),
                "entries": len(self._l2),
                "bytes": self._l2.nbytes,
                "max_bytes": self._l2.max_bytes,
            },
            "l3": {
                **_rates(totals[2], totals[3]),
                "entries": sum(n["entries"] for n in l3["namespaces"].values()),
                "bytes": l3["used_bytes"],
                "file_bytes": l3["file_bytes"],
                "map_size": l3["map_size"],
            },
        }
        stored = {n: dict(_rates(h, m)) for n, (h, m) in self.l3.counters().items()}
        return {
            **_rates(totals[0] + totals[1] + totals[2], totals[3]),
            "path": l3["path"],
            "tiers": tiers,
            "namespaces": per_ns,
            "stored": stored,
        }

    def close(self) -> None:
        """Flush statistics and close L3 (memory tiers are dropped). Idempotent."""
        if self._l3 is not None:
            try:
                self.flush_stats()
            except Exception as exc:  # closing must not fail on a stats write
                log.warning("cache %s: could not save statistics: %s", self.path, exc)
            self._l3.close()
            self._l3 = None
        self.evict_memory()


def _rates(hits: int, misses: int) -> dict[str, Any]:
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": hits / total if total else 0.0}
