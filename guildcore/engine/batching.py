"""Batching of identical work: items with the same key run once and share the result.

This module covers the pure grouping (``group_by_key``: which positions of a
batch to run, and which positions reuse which result) and the Guild's count
of duplicates saved (``DuplicateCounter``, shown by ``stats()["batching"]``).
It does not decide which batches may be grouped: only the callers that hold
a purity promise do (``Guild.map(..., cache=True)`` and cached process steps).

Why only those: equal arguments give equal results only for a pure
function. ``map(roll_die, [6] * 100)`` asks for a hundred rolls, and
``map(append_line, [line] * 3)`` for three lines; running each once would
silently change what the program does. ``cache=True`` (and a process step's
cache, on by default) is the caller's statement that a result may be reused
for equal arguments: a second item with the same key is then a cache hit that
has not been stored yet, and computing it twice is waste.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DuplicateCounter", "group_by_key", "spread"]


def group_by_key(keys: Sequence[Hashable | None]) -> tuple[list[int], list[int]]:
    """Which positions run, and where each position's result comes from.

    Returns ``(run, source)``: ``run`` lists the positions to compute (the
    first of each key, and every position whose key is None: no key, no
    sharing); ``source[i]`` is the index into ``run`` whose result position
    ``i`` takes. ``len(keys) - len(run)`` duplicates are saved.
    """
    first: dict[Hashable, int] = {}
    run: list[int] = []
    source: list[int] = []
    for position, key in enumerate(keys):
        if key is None:
            source.append(len(run))
            run.append(position)
            continue
        slot = first.get(key)
        if slot is None:
            slot = first[key] = len(run)
            run.append(position)
        source.append(slot)
    return run, source


def spread(results: Sequence[Any], source: Sequence[int]) -> list[Any]:
    """The results of the positions that ran, put back at every position that shares them."""
    return [results[slot] for slot in source]


class DuplicateCounter:
    """Items not computed because an equal item in the same batch was (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.saved = 0

    def add(self, n: int) -> None:
        if n:
            with self._lock:
                self.saved += n

    def stats(self) -> dict[str, int]:
        return {"duplicates_saved": self.saved}
