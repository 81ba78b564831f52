"""Bounded time series and sample reservoirs for metrics.

This module covers ``Series`` (points over time that thin themselves out
past a cap, keeping the highest value of the points they merge, so peaks
survive) and ``Reservoir`` (a bounded sample of values for percentiles).
It does not decide what is recorded (``fold``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

# Points a series keeps before it halves itself: enough for a chart as wide
# as a screen at two points per pixel column.
SERIES_CAP = 2000
# Values a reservoir keeps; percentiles of 1024 values are within a percent.
RESERVOIR_CAP = 1024


class Series:
    """Points ``(t, value, *extra)``, at most ``cap``; thinned by keeping maxima.

    A point closer than ``spacing`` to the last one merges into it (the
    higher value wins, at the earlier time). Past ``cap`` points the series
    halves: pairs merge the same way and ``spacing`` doubles, so memory is
    bounded however long the run.
    """

    __slots__ = ("cap", "points", "spacing")

    def __init__(self, cap: int = SERIES_CAP) -> None:
        self.cap = cap
        self.points: list[tuple[Any, ...]] = []
        self.spacing = 0.0

    def add(self, t: float, value: float, *extra: Any) -> None:
        points = self.points
        if points and t - points[-1][0] < self.spacing:
            last = points[-1]
            if value >= last[1]:
                points[-1] = (last[0], value, *extra)
            return
        points.append((t, value, *extra))
        if len(points) > self.cap:
            self._halve()

    def _halve(self) -> None:
        points = self.points
        span = points[-1][0] - points[0][0]
        self.spacing = max(self.spacing * 2, span / (self.cap // 2) if span > 0 else 0.0)
        merged = []
        for i in range(0, len(points) - 1, 2):
            a, b = points[i], points[i + 1]
            merged.append(a if a[1] >= b[1] else (a[0], *b[1:]))
        if len(points) % 2:
            merged.append(points[-1])
        self.points = merged

    def last(self) -> tuple[Any, ...] | None:
        return self.points[-1] if self.points else None

    def __len__(self) -> int:
        return len(self.points)


class Reservoir:
    """At most ``cap`` values: past the cap every other value is dropped, and then
    every other new value is skipped, so the sample stays spread over the run."""

    __slots__ = ("_skip", "_stride", "cap", "count", "high", "total", "values")

    def __init__(self, cap: int = RESERVOIR_CAP) -> None:
        self.cap = cap
        self.values: list[float] = []
        self.count = 0
        self.total = 0.0
        self.high: float | None = None
        self._stride = 1
        self._skip = 0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if self.high is None or value > self.high:
            self.high = value
        self._skip += 1
        if self._skip < self._stride:
            return
        self._skip = 0
        self.values.append(value)
        if len(self.values) > self.cap:
            self.values = self.values[::2]
            self._stride *= 2

    def percentile(self, q: float) -> float | None:
        return percentile(self.values, q)

    def summary(self) -> dict[str, float | int | None]:
        values = sorted(self.values)
        return {
            "count": self.count,
            "mean": self.total / self.count if self.count else None,
            "p50": _sorted_percentile(values, 50),
            "p95": _sorted_percentile(values, 95),
            "max": self.high,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; None when empty."""
    return _sorted_percentile(sorted(values), q)


def _sorted_percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


__all__ = ["RESERVOIR_CAP", "SERIES_CAP", "Reservoir", "Series", "percentile"]
