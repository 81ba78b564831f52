"""Task functions for the metrics tests: they run in agents, so they live at module level."""

from __future__ import annotations

import time

_kept: list[bytes] = []


def leak(nbytes: int, pause_s: float) -> int:
    """Keep ``nbytes`` more for the agent's life (filled, so the pages are resident), then pause."""
    _kept.append(b"\x01" * nbytes)
    time.sleep(pause_s)
    return len(_kept)


def stamped(item: tuple[int, int]) -> int:
    """A cached call whose second argument (a timestamp) differs on every run."""
    time.sleep(0.002)
    return item[0]


def spin(seconds: float) -> float:
    """Burn CPU for ``seconds`` (CPU time close to run time)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return seconds
