"""``guild top``: the Guilds running on this host, and one of them live.

This module covers reading the status files running supervisors publish
(``metrics.live``) and drawing them with rich: a table of running Guilds,
then the selected one's agents (state, task, memory bar, busy fraction),
queue, mode, throughput, cache hit rate and alerts, redrawn every 0.5 s on
the terminal's alternate screen, which Ctrl-C leaves as it found it. It
does not cover producing the status (``metrics.fold.live_view``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from guildcore.errors import format_bytes
from guildcore.metrics import live as live_files

__all__ = ["NOTHING_RUNNING", "render", "run_top", "select"]

REFRESH_S = 0.5
NOTHING_RUNNING = "no guild is running on this host"


def select(running: Sequence[Mapping[str, Any]], which: str | None) -> Mapping[str, Any] | None:
    """The Guild to show: by pid or run id (prefix), else the newest."""
    if not running:
        return None
    if which:
        for snap in running:
            if str(snap.get("pid")) == which or str(snap.get("run_id", "")).startswith(which):
                return snap
        return None
    return running[0]


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _rate(cache: Mapping[str, Any] | None) -> str:
    if not cache or not cache.get("lookups"):
        return "-"
    return f"{cache['hit_rate']:.0%} of {cache['lookups']:,}"


def _busy(agents: Sequence[Mapping[str, Any]]) -> str:
    return f"{sum(1 for a in agents if a.get('state') == 'BUSY')}/{len(agents)}"


def _guilds_table(running: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any] | None) -> Any:
    from rich.table import Table

    table = Table(title="running guilds", title_justify="left", expand=True, box=None, header_style="bold")
    for name, justify in (("", "left"), ("pid", "right"), ("run", "left"), ("program", "left"), ("up", "right"),
                          ("busy", "right"), ("queued", "right"), ("items/s", "right"),
                          ("done", "right"), ("failed", "right"), ("mode", "left"), ("cache hits", "right")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",  # type: ignore[arg-type]
                         ratio=1 if name == "program" else None, min_width=6 if name == "program" else None)  # fmt: skip
    now = time.time()
    for snap in running:
        counts = snap.get("counts") or {}
        table.add_row(
            "▶" if snap is chosen else "",
            str(snap.get("pid")),
            str(snap.get("run_id")),
            str(snap.get("label")),
            _ago(now - float(snap.get("started") or now)),
            _busy(snap.get("agents") or []),
            str(snap.get("queued", 0)),
            f"{snap.get('items_per_s', 0):,.1f}",
            f"{counts.get('done', 0):,}",
            f"{counts.get('failed', 0):,}",
            str(snap.get("mode", "normal")),
            _rate(snap.get("cache")),
        )
    return table


def _memory_bar(private: int | None, limit: int | None) -> Any:
    from rich.progress_bar import ProgressBar

    if private is None or not limit:
        return ""
    share = private / limit
    style = "red" if share >= 0.9 else "yellow" if share >= 0.7 else "green"
    return ProgressBar(total=limit, completed=min(private, limit), width=12, complete_style=style, finished_style=style)


def _memory_text(private: int | None, limit: int | None) -> str:
    if private is None:
        return "-"
    return format_bytes(private) + (f" / {format_bytes(limit)}" if limit else "")


def _agents_table(snap: Mapping[str, Any]) -> Any:
    from rich.table import Table

    table = Table(expand=True, box=None, header_style="bold")
    for name in ("agent", "pid", "state", "task", "memory", "private", "busy", "done"):
        table.add_column(name, no_wrap=True, overflow="ellipsis", ratio=1 if name == "task" else None,
                         min_width=8 if name == "task" else None,
                         justify="right" if name in ("pid", "private", "busy", "done") else "left")  # fmt: skip
    limit = snap.get("limit_bytes")
    state_style = {"BUSY": "bold green", "IDLE": "dim", "STARTING": "cyan", "DRAINING": "yellow"}
    for agent in snap.get("agents") or []:
        task = agent.get("task")
        doing = "-" if not task else f"{task['id']} {task['fn']} ({task['running_s']:.1f}s)"
        if agent.get("held", 0) > 1:
            doing += f" +{agent['held'] - 1} queued"
        busy = agent.get("busy_fraction")
        state = str(agent.get("state"))
        table.add_row(
            f"agent {agent.get('id')}",
            str(agent.get("pid")),
            f"[{state_style.get(state, '')}]{state}[/]" if state in state_style else state,
            doing,
            _memory_bar(agent.get("private_bytes"), limit),
            _memory_text(agent.get("private_bytes"), limit),
            "-" if busy is None else f"{busy:.0%}",
            f"{agent.get('tasks_done', 0):,}",
        )
    if not snap.get("agents"):
        table.add_row("-", "-", "inline" if snap.get("inline") else "no agents", "-", "", "-", "-", "-")
    return table


def _alerts(snap: Mapping[str, Any]) -> Any:
    from rich.table import Table

    alerts = snap.get("alerts") or []
    table = Table(title="alerts", title_justify="left", expand=True, show_header=False, box=None)
    table.add_column("when", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("message", ratio=1)
    if not alerts:
        table.add_row("", "none", "")
    for alert in alerts[-5:]:
        when = time.strftime("%H:%M:%S", time.localtime(float(alert.get("t") or 0)))
        count = f" x{alert['count']}" if alert.get("count", 1) > 1 else ""
        table.add_row(when, f"[yellow]{alert.get('kind')}{count}[/]", str(alert.get("message")))
    return table


def _detail(snap: Mapping[str, Any]) -> Any:
    from rich.console import Group
    from rich.panel import Panel

    items = snap.get("items") or {}
    head = (
        f"mode [bold]{snap.get('mode', 'normal')}[/]   queued {snap.get('queued', 0)}   "
        f"items {items.get('done', 0):,}/{items.get('submitted', 0):,} done, {snap.get('items_per_s', 0):,.1f}/s   "
        f"cache hits {_rate(snap.get('cache'))}   agents {_busy(snap.get('agents') or [])} busy "
        f"(max {snap.get('max_agents')})"
    )
    title = f"pid {snap.get('pid')} · {snap.get('label')} · run {snap.get('run_id')}"
    return Panel(Group(head, _agents_table(snap), _alerts(snap)), title=title, title_align="left")


def render(running: Sequence[Mapping[str, Any]], which: str | None = None, *, waiting: bool = False) -> Any:
    """One frame of ``guild top``."""
    from rich.console import Group
    from rich.text import Text

    host = socket.gethostname()
    clock = time.strftime("%H:%M:%S")
    if not running:
        note = "; waiting for one (Ctrl-C to quit)" if waiting else ""
        return Text(f"guild top · {host} · {clock}\n{NOTHING_RUNNING}{note}")
    chosen = select(running, which)
    parts: list[Any] = [Text(f"guild top · {len(running)} running on {host} · {clock} · Ctrl-C to quit")]
    parts.append(_guilds_table(running, chosen))
    if chosen is None:
        parts.append(Text(f"no running guild matches {which!r}"))
    else:
        parts.append(_detail(chosen))
    return Group(*parts)


def run_top(which: str | None = None, *, once: bool = False, wait: bool = False, folder: str | None = None) -> int:
    """Draw until Ctrl-C (or once); say so plainly when nothing runs (unless ``wait``)."""
    from rich.console import Console

    console = Console()
    folder = folder or live_files.run_dir()
    running = live_files.list_running(folder)
    if not running and not wait:
        console.print(f"{NOTHING_RUNNING} (status files go to {folder})", highlight=False)
        return 0
    if once:
        console.print(render(running, which))
        return 0
    from rich.live import Live

    try:
        with Live(render(running, which, waiting=True), console=console, screen=True, auto_refresh=False) as view:
            while True:
                time.sleep(REFRESH_S)
                view.update(render(live_files.list_running(folder), which, waiting=True), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
