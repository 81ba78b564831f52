"""A one-line progress bar for long batches: items, rate, ETA.

Drawn on stderr only when stderr is a terminal; silent otherwise (logs and
CI output stay clean). Redraws at most every 100 ms, from whichever thread
completes work, under one lock.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

_REDRAW_S = 0.1
_WIDTH = 30


class Progress:
    def __init__(self, total: int, *, enabled: bool, label: str = "", stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())
        self.total = total
        self.done = 0
        self.label = label
        self._t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last >= _REDRAW_S or self.done >= self.total:
                self._last = now
                self.stream.write("\r" + self.render(now))
                self.stream.flush()

    def render(self, now: float) -> str:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * _WIDTH)
        bar = "#" * filled + "-" * (_WIDTH - filled)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
        return f"{self.label} [{bar}] {self.done}/{self.total} {_human_rate(rate)}/s ETA {eta_s}"

    def close(self) -> None:
        if self.enabled:
            with self._lock:
                self.stream.write("\r" + self.render(time.monotonic()) + "\n")
                self.stream.flush()
            self.enabled = False


def _human_rate(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.1f}M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f}k"
    return f"{rate:.1f}"
