"""The progress bar of a long batch: items, rate, ETA, agents busy, cache hits.

Drawn with ``rich`` on stderr, and only when stderr is a terminal: logs and
CI output stay clean, and a program that never shows a bar never imports
rich. ``advance`` runs in futures' done-callbacks on the supervisor's
thread, so it only adds to a counter under rich's lock; rich's own refresh
thread (10 times a second) draws, reading the agents from the Guild's last
live view (``status``), which is replaced whole and read without a lock.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

__all__ = ["Progress"]

_REFRESH_PER_S = 10

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, TextIO

    Status = Callable[[], Mapping[str, Any] | None]


class Progress:
    """One bar for ``total`` items. ``status()`` returns the Guild's live view (or
    None); ``cache_hits`` items were answered by the cache before the batch began."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool,
        label: str = "",
        stream: TextIO | None = None,
        status: Status | None = None,
        cache_hits: int = 0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())
        self.total = total
        self.done = 0
        self.label = label
        self._bar: Any = None
        self._task: Any = None
        if self.enabled:
            self._bar = _rich_bar(self.stream, status, cache_hits)
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done += n
        self._bar.advance(self._task, n)

    def close(self) -> None:
        if self.enabled:
            self.enabled = False
            self._bar.stop()  # draws the final state and leaves it on its own line


def _rich_bar(stream: TextIO, status: Status | None, cache_hits: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TextColumn
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?/s" if not speed else f"{_human(speed)}/s")

    class EtaColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            if task.finished:
                return Text(f"in {task.elapsed or 0:.1f}s")
            remaining = task.time_remaining
            return Text("ETA ?" if remaining is None else f"ETA {remaining:.0f}s")

    class AgentsColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            live = status() if status is not None else None
            if not live:
                return Text("")
            agents = live.get("agents") or []
            busy = sum(1 for a in agents if a.get("state") == "BUSY")
            return Text(f"agents {busy}/{len(agents)} busy")

    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        EtaColumn(),
        AgentsColumn(),
        TextColumn(f"cache hits {cache_hits:,}" if cache_hits else ""),
        console=Console(file=stream, force_terminal=True),
        refresh_per_second=_REFRESH_PER_S,
    )


def _human(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.1f}M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f}k"
    return f"{rate:.1f}"
