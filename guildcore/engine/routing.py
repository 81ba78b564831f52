"""Routing: whether a batch of tiny items is worth sending to agents at all.

This module covers the one routing decision the engine makes today: run a
``map`` inline in the caller, or in the pool. It is a pure decision over
measurements; the Guild acts on it. It does not cover batch sizes (the
Guild's guided chunks) or streams.

Sending an item to an agent costs the supervisor an encode and a decode
(``ipc_s`` per item, measured on the items themselves), work no agent can
share. With ``a`` agents a pool run costs about ``n * (c / a + ipc_s)``
where ``c`` is the agents' measured compute time per item; inline costs
``n * c``. So inline wins when ``c < ipc_s * a / (a - 1)``: for ``x + 1``
(about 60 ns against about 250 ns of codec work per item) no pool can
beat the loop, whatever its size.

The first batch of a function always goes to the pool: agents report how
long its items took, and the function has shown it runs (no crash, no
hang) before it is ever run in the caller. Inline runs keep no crash
isolation, memory limit or timeout, so they are bounded: only items
measured under ``MAX_INLINE_ITEM_S`` and batches predicted under
``MAX_INLINE_BATCH_S`` go inline, and an inline batch that runs 10x over
its prediction hands its remaining items to the pool and records the new
timing (the Guild's ``_map_inline``). ``parallelization.strategy: pool``
turns routing off.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# Items slower than this always go to the pool: beyond it, parallel compute
# dominates any codec cost, and a task this slow deserves isolation.
MAX_INLINE_ITEM_S = 20e-6
# A batch predicted to run longer than this inline goes to the pool, where
# timeouts and memory limits apply.
MAX_INLINE_BATCH_S = 1.0
# Weight of a new observation in the per-function moving average.
_EWMA = 0.5


@dataclass(frozen=True)
class Route:
    inline: bool
    reason: str


def decide(*, item_s: float | None, ipc_s: float, n_items: int, agents: int) -> Route:
    """Inline or pool for ``n_items`` of a function measured at ``item_s`` per item."""
    if item_s is None:
        return Route(False, "not measured yet: the first batch goes to the pool")
    if item_s > MAX_INLINE_ITEM_S:
        return Route(False, "items take long enough to gain from agents")
    if item_s * n_items > MAX_INLINE_BATCH_S:
        return Route(False, "batch too long to run without isolation")
    gain = agents / (agents - 1) if agents > 1 else float("inf")
    if item_s < ipc_s * gain:
        return Route(True, "sending each item costs more than computing it")
    return Route(False, "agents compute faster than the codec costs")


class Router:
    """Per-function measurements and routing counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item_s: dict[str, float] = {}
        self.inline_batches = 0
        self.inline_items = 0
        self.pool_batches = 0

    def observe(self, key: str, n_items: int, compute_s: float) -> None:
        """Agents ran ``n_items`` of function ``key`` in ``compute_s`` seconds."""
        if n_items <= 0 or compute_s < 0:
            return
        per_item = compute_s / n_items
        with self._lock:
            old = self._item_s.get(key)
            self._item_s[key] = per_item if old is None else old + _EWMA * (per_item - old)

    def item_s(self, key: str) -> float | None:
        with self._lock:
            return self._item_s.get(key)

    def count(self, route: Route, n_items: int) -> None:
        with self._lock:
            if route.inline:
                self.inline_batches += 1
                self.inline_items += n_items
            else:
                self.pool_batches += 1

    def sent_back(self, n_items: int) -> None:
        """An inline batch gave its last ``n_items`` to the pool (they ran slower than measured)."""
        with self._lock:
            self.inline_items -= n_items
            self.pool_batches += 1

    def forget(self) -> None:
        """Drop every measurement (the agent set changed)."""
        with self._lock:
            self._item_s.clear()

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "inline_batches": self.inline_batches,
                "inline_items": self.inline_items,
                "pool_batches": self.pool_batches,
                "measured_functions": len(self._item_s),
            }
