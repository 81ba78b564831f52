"""Routing: how a ``map`` runs (inline, in the pool, in chunks of how many), remembered.

This module covers the routing decision and its cache:

- ``Pattern``: what a decision is about: the function's fingerprint (it
  changes when the code does), the type signature of the first item, and a
  size bucket (the bit length of the item count);
- ``decide``: a pure decision from measurements (compute time per item,
  codec cost per item, result bytes per item, items, agents);
- ``Router``: the Guild's lookups, counts and records. Decisions live in a
  process-wide table per store and agent set, read once from the ``routing``
  namespace of the L3 store at the first lookup (only if a store exists: the
  read costs its imports, ~10 ms, once per process), written back when the
  Guild shuts down; so a second ``Guild``, or a second run of a script,
  routes right from its first item. A pattern whose size bucket was never seen borrows the decision of
  the nearest bucket of the same function and argument types.

It does not cover running anything (``executor``) or the chunk sizes
themselves (``chunking``).

Cost model: sending an item to an agent costs the supervisor an encode and
a decode (``ipc_s`` per item, measured on the items themselves), work no
agent can share, and more that the measure does not see (frames, futures,
the agents' own decode and encode on the same cores): ``SHIP_FACTOR`` times
``ipc_s`` in all, as measured. With ``a`` agents a pool run costs about
``n * (c / a + SHIP_FACTOR * ipc_s)`` where ``c`` is the compute time per
item; inline costs ``n * c``. So inline wins when ``c < SHIP_FACTOR * ipc_s
* a / (a - 1)``: for ``x + 1`` (40-150 ns against 45-150 ns of codec work
per small int) no pool can beat the loop.
Inline runs keep no crash isolation, memory limit or timeout, so only items
under ``MAX_INLINE_ITEM_S`` and batches predicted under ``MAX_INLINE_BATCH_S``
are routed inline. Results bigger than ``STREAM_ITEM_BYTES`` route as a
``stream``: chunks small enough that each brings back a bounded amount.

Invalidation: a decision is keyed by the agent set (``max_agents``, start
method, ``per_agent``): another agent set finds nothing. The namespace's TTL
(30 min by default) and entry cap bound it; ``guild cache clear routing``
empties it for later runs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("guildcore.routing")

NAMESPACE = "routing"
# Items slower than this always go to the pool: beyond it, parallel compute
# dominates any codec cost, and a task this slow deserves isolation.
MAX_INLINE_ITEM_S = 20e-6
# A batch predicted to run longer than this inline goes to the pool, where
# timeouts and memory limits apply.
MAX_INLINE_BATCH_S = 1.0
# What shipping an item costs the supervisor, in codec round trips: a warm
# 2-agent pool moved x + 1 at 649 ns per item where the codec round trip of
# an int took 147 ns (loaded 2-core VM), 4.4x.
SHIP_FACTOR = 4.0
# Results bigger than this per item route as a stream (see chunking).
STREAM_ITEM_BYTES = 64 * 1024
# Store format of a decision: [route, chunksize, item_s, result_bytes, recorded_at].
_KEY_PREFIX = "r1|"

INLINE, POOL, STREAM = "inline", "pool", "stream"


# Tuples written out, not dataclasses nor typing.NamedTuple: a Guild imports
# this module on its way to the first result, and building a NamedTuple (or
# importing typing for one) cost ~3 ms at import. They are tuples all the
# same: compared, hashed and unpacked as (fn, args, bucket) and (route,
# item_s, result_bytes, chunksize, reason).
class Pattern(tuple):  # type: ignore[type-arg]
    """What a decision is about."""

    __slots__ = ()
    _fields = ("fn", "args", "bucket")

    def __new__(cls, fn: str, args: str, bucket: int) -> Pattern:
        return tuple.__new__(cls, (fn, args, bucket))

    @property
    def fn(self) -> str:
        """The function's fingerprint: "module:qualname@hash of its code"."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def args(self) -> str:
        """Type signature of the first item: "int", "tuple[str,int]"."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def bucket(self) -> int:
        """Size bucket: the item count's bit length."""
        return self[2]  # type: ignore[no-any-return]

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return f"Pattern(fn={self[0]!r}, args={self[1]!r}, bucket={self[2]!r})"


class Decision(tuple):  # type: ignore[type-arg]
    """How a pattern runs, and the measures that chose it."""

    __slots__ = ()
    _fields = ("route", "item_s", "result_bytes", "chunksize", "reason")

    def __new__(
        cls, route: str, item_s: float, result_bytes: int = 0, chunksize: int | None = None, reason: str = ""
    ) -> Decision:
        return tuple.__new__(cls, (route, item_s, result_bytes, chunksize, reason))

    @property
    def route(self) -> str:
        """INLINE, POOL or STREAM."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def item_s(self) -> float:
        """Compute time per item, as measured."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def result_bytes(self) -> int:
        """Encoded result bytes per item, as measured (0: not measured)."""
        return self[2]  # type: ignore[no-any-return]

    @property
    def chunksize(self) -> int | None:
        """Items per chunk in the pool (None: the automatic size)."""
        return self[3]  # type: ignore[no-any-return]

    @property
    def reason(self) -> str:
        return self[4]  # type: ignore[no-any-return]

    @property
    def inline(self) -> bool:
        return self.route == INLINE

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return (
            f"Decision(route={self[0]!r}, item_s={self[1]!r}, result_bytes={self[2]!r}, "
            f"chunksize={self[3]!r}, reason={self[4]!r})"
        )


def decide(
    *, item_s: float, ipc_s: float, n_items: int, agents: int, result_bytes: int = 0, chunksize: int | None = None
) -> Decision:
    """Inline, pool or stream for ``n_items`` of a function measured at ``item_s`` per item."""

    def pool(reason: str) -> Decision:
        route = STREAM if result_bytes > STREAM_ITEM_BYTES else POOL
        if route == STREAM:
            reason = f"{reason}; results of {result_bytes} bytes per item come back chunk by chunk"
        return Decision(route, item_s, result_bytes, chunksize, reason)

    if item_s > MAX_INLINE_ITEM_S:
        return pool("items take long enough to gain from agents")
    if item_s * n_items > MAX_INLINE_BATCH_S:
        return pool("batch too long to run without isolation")
    gain = agents / (agents - 1) if agents > 1 else math.inf
    if item_s < SHIP_FACTOR * ipc_s * gain:
        return Decision(INLINE, item_s, result_bytes, None, "sending each item costs more than computing it")
    return pool("agents compute faster than the codec costs")


def type_signature(item: Any, starmap: bool) -> str:
    """The argument types of one item: ``int``; for starmap ``tuple[str,int]``."""
    if starmap and isinstance(item, tuple):
        return "(" + ",".join(type(a).__qualname__ for a in item) + ")"
    return type(item).__qualname__


def size_bucket(n_items: int) -> int:
    return max(1, n_items).bit_length()


class _Table:
    """Decisions of one store and agent set, shared by every Guild of this process.

    ``entries[(fn, args)][bucket] = (decision, recorded_at)``; ``dirty`` holds
    the (fn, args) pairs recorded since the last write to the store.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple[str, str], dict[int, tuple[Decision, float]]] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.loaded = False  # the store was read (or there is none)
        # Held while the store is read: one reader, and lookups wait for it.
        self.load_lock = threading.Lock()


# (store path, agent set) -> its table. Fork-safety: a forked child starts
# with what the parent knew, without the parent's pending writes.
_TABLES: dict[tuple[str, str], _Table] = {}
_TABLES_LOCK = threading.Lock()


def forget(store_path: str | None = None) -> None:
    """Drop what this process remembers of the decisions of ``store_path`` (all stores if None).

    The store keeps its copy: the next Guild reads it again. Benchmarks use
    this to time a script's first run inside one process; the path of a
    Guild without caching is ``""``.
    """
    with _TABLES_LOCK:
        for key in [k for k in _TABLES if store_path is None or k[0] == store_path]:
            del _TABLES[key]


def _forget_dirty_in_child() -> None:
    for table in _TABLES.values():
        table.dirty.clear()


os.register_at_fork(after_in_child=_forget_dirty_in_child)


class RoutingStore:
    """Where decisions persist: the ``routing`` namespace of one L3 store.

    ``open_cache()`` returns the Guild's ``TieredCache`` (opened on first
    use); ``exists()`` says whether there is a store to read at all, without
    importing or opening anything.
    """

    def __init__(self, path: str, ttl_s: float | None, open_cache: Callable[[], Any], exists: Callable[[], bool]) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.open_cache = open_cache
        self.exists = exists


class Router:
    """A Guild's routing: lookups, records and counters; thread-safe."""

    def __init__(self, *, agents: int, agent_set: str, store: RoutingStore | None = None, clock: Callable[[], float] = time.time) -> None:
        self.agents = agents
        self.agent_set = agent_set
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._fingerprints: dict[int, tuple[Any, str]] = {}  # id(fn) -> (fn, fingerprint)
        self._ipc: dict[tuple[str, str], float] = {}  # (fn, args) -> codec cost per item, sampled once
        self.hits = 0
        self.similar = 0
        self.misses = 0
        self.inline_batches = 0
        self.inline_items = 0
        self.boot_items = 0  # run here while agents started
        self.pool_batches = 0
        self.handed_off = 0  # items an inline run handed to agents
        path = store.path if store is not None else ""
        with _TABLES_LOCK:
            self._table = _TABLES.setdefault((path, agent_set), _Table())

    # ------------------------------------------------------------ the store

    def _ensure_loaded(self) -> None:
        """Read the store's decisions of this agent set, once per process.

        In the caller's thread, at the first lookup: a background reader
        would take the GIL from an inline run, and a thread alive at the
        pool's start would keep it from forking its template.
        """
        table, store = self._table, self._store
        if table.loaded:
            return
        with table.load_lock:
            if table.loaded:
                return
            if store is not None and store.exists():
                self._load(store)
            table.loaded = True

    def _load(self, store: RoutingStore) -> None:
        table = self._table
        try:
            l3 = store.open_cache().l3
            prefix = (_KEY_PREFIX + self.agent_set + "|").encode()
            wanted = [key for key, *_times in l3.entries(NAMESPACE) if key.startswith(prefix)]
            found = l3.get_many(NAMESPACE, wanted) if wanted else {}  # live entries only
            loaded = {}
            for key, (value, _expires, _n) in found.items():
                fn, _, args = key[len(prefix) :].decode().partition("|")
                rows = {int(b): (_from_row(row), float(row[4])) for b, row in value.items()}
                loaded[(fn, args)] = {b: (d, at) for b, (d, at) in rows.items() if d is not None}
        except Exception as exc:  # a cache problem costs only the decisions
            log.warning("routing decisions could not be read from the cache (%s); measuring again", exc)
            loaded = {}
        with table.lock:
            for pair, buckets in loaded.items():
                table.entries.setdefault(pair, {}).update(
                    {b: entry for b, entry in buckets.items() if b not in table.entries.get(pair, {})}
                )

    def flush(self) -> None:
        """Write decisions recorded since the last flush to the store (Guild shutdown)."""
        table, store = self._table, self._store
        if store is None:
            return
        with table.lock:
            pairs = {pair: dict(table.entries.get(pair, {})) for pair in table.dirty}
            table.dirty.clear()
        if not pairs:
            return
        now = self._clock()
        rows = []
        for (fn, args), buckets in pairs.items():
            value = {b: _to_row(d, at) for b, (d, at) in buckets.items() if not self._expired(at, now)}
            if value:
                rows.append(((_KEY_PREFIX + self.agent_set + "|" + fn + "|" + args).encode(), value))
        try:
            store.open_cache().set_many(NAMESPACE, rows)
        except Exception as exc:
            log.warning("routing decisions could not be stored (%s); the next run measures again", exc)

    def _expired(self, recorded_at: float, now: float) -> bool:
        ttl = self._store.ttl_s if self._store is not None else None
        return ttl is not None and now - recorded_at > ttl

    # ------------------------------------------------------------ decisions

    def fingerprint(self, fn: Callable[..., Any]) -> str | None:
        """The function's code fingerprint (cached per function object); None if it has none."""
        key = id(fn)
        entry = self._fingerprints.get(key)
        if entry is not None and entry[0] is fn:
            return entry[1]
        try:
            from guildcore import keys

            fp = keys.fingerprint(fn)
        except Exception:
            return None
        self._fingerprints[key] = (fn, fp)
        return fp

    def pattern(self, fn: Callable[..., Any], items: Sequence[Any], *, starmap: bool) -> Pattern | None:
        fp = self.fingerprint(fn)
        if fp is None or not items:
            return None
        return Pattern(fp, type_signature(items[0], starmap), size_bucket(len(items)))

    def lookup(self, pattern: Pattern | None) -> Decision | None:
        """The decision for ``pattern``: its own bucket's, else the nearest bucket's; counted."""
        if pattern is None:
            return None
        table = self._table
        self._ensure_loaded()
        now = self._clock()
        with table.lock:
            buckets = table.entries.get((pattern.fn, pattern.args), {})
            live = {b: d for b, (d, at) in buckets.items() if not self._expired(at, now)}
        found = live.get(pattern.bucket)
        with self._lock:
            if found is not None:
                self.hits += 1
                return found
            if live:
                self.hits += 1
                self.similar += 1
                nearest = min(live, key=lambda b: (abs(b - pattern.bucket), -b))
                return live[nearest]
            self.misses += 1
        return None

    def record(self, pattern: Pattern | None, decision: Decision) -> None:
        """Remember ``decision`` for ``pattern`` (the store gets it at ``flush``)."""
        if pattern is None:
            return
        table = self._table
        pair = (pattern.fn, pattern.args)
        with table.lock:
            table.entries.setdefault(pair, {})[pattern.bucket] = (decision, self._clock())
            table.dirty.add(pair)

    def ipc_s(self, pattern: Pattern | None, items: Sequence[Any]) -> float:
        """The codec cost per item of this function's items, sampled once per argument types."""
        if pattern is None:
            return codec_cost_per_item(items)
        key = (pattern.fn, pattern.args)
        cost = self._ipc.get(key)
        if cost is None:
            if len(self._ipc) > 256:
                self._ipc.clear()  # bound it: patterns made in a loop must not grow it forever
            cost = self._ipc[key] = codec_cost_per_item(items)
        return cost

    def measured_s(self, pattern: Pattern | None) -> float | None:
        """The last measured compute time per item of ``pattern``'s function and types."""
        if pattern is None:
            return None
        with self._table.lock:
            buckets = self._table.entries.get((pattern.fn, pattern.args), {})
            if not buckets:
                return None
            nearest = min(buckets, key=lambda b: abs(b - pattern.bucket))
            return buckets[nearest][0].item_s

    # ------------------------------------------------------------ counters

    def count_inline(self, n_items: int, *, booting: bool = False) -> None:
        with self._lock:
            self.inline_batches += 1
            self.inline_items += n_items
            if booting:
                self.boot_items += n_items

    def count_pool(self) -> None:
        with self._lock:
            self.pool_batches += 1

    def count_handoff(self, n_items: int) -> None:
        """An inline run handed its last ``n_items`` to the pool."""
        with self._lock:
            self.handed_off += n_items
            self.pool_batches += 1

    def stats(self) -> dict[str, object]:
        with self._table.lock:
            known = len(self._table.entries)
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else None,
                "similar": self.similar,
                "inline_batches": self.inline_batches,
                "inline_items": self.inline_items,
                "boot_items": self.boot_items,
                "pool_batches": self.pool_batches,
                "handed_off": self.handed_off,
                "known_patterns": known,
            }


def _to_row(d: Decision, recorded_at: float) -> list[Any]:
    return [d.route, d.chunksize, d.item_s, d.result_bytes, recorded_at]


def _from_row(row: Sequence[Any]) -> Decision | None:
    """A stored decision; None for one this version cannot read (it is measured again)."""
    route, chunksize, item_s, result_bytes = str(row[0]), row[1], float(row[2]), int(row[3])
    if route not in (INLINE, POOL, STREAM):
        return None
    return Decision(route, item_s, result_bytes, None if chunksize is None else int(chunksize), "remembered")


def codec_cost_per_item(items: Sequence[Any], sample: int = 256) -> float:
    """The supervisor's codec work per item (encode + decode) on a sample of ``items``."""
    from guildcore import codec

    part = list(items[:sample])
    t0 = time.perf_counter()
    codec.decode(codec.encode(part))
    return (time.perf_counter() - t0) / max(1, len(part))
