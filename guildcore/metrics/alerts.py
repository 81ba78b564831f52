"""Alerts: what deserves a person's attention during a run, raised once per episode.

This module covers the ``Alert`` record and ``AlertRules``, which look at a
``Fold`` and the pool's snapshot at each tick and open, extend and close
episodes:

- ``slow_task``: a task whose time per item is over ``SLOW_FACTOR`` times the
  p95 of its function (finished, or still running) and that took at least
  ``SLOW_MIN_S``; one episode per function, ended by ``SLOW_QUIET_TASKS``
  tasks of normal speed in a row;
- ``high_memory``: an agent's private memory over ``monitoring.warning_threshold``
  of ``limits.per_agent``; one episode per agent, ended when it falls
  ``MEMORY_CLEAR_MARGIN`` below that or the agent exits;
- ``low_hit_rate``: a cache namespace under ``LOW_HIT_RATE`` after
  ``LOW_HIT_MIN_LOOKUPS`` lookups; ended when the rate recovers. A
  function's first batch of lookups that finds nothing is the cache being
  filled and is left out: a cold batch followed by a warm rerun is a cache
  working perfectly, not a 50 % hit rate (``guild doctor`` still compares
  keys across runs to find those that never repeat);
- ``agent_failed``: an agent that died (not stopped on request); deaths less
  than ``FAILURE_QUIET_S`` apart extend one episode.

An alert is raised when its episode opens; later occurrences only count.
Delivery (log, ``on_alert``) is the recorder's. It does not cover the
monitor's own alerts (modes), which reach the recorder through ``alert``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from guildcore._records import Declared, fields
from guildcore.metrics.recorder import DONE, FAILED
from guildcore.metrics.series import Reservoir

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.metrics.fold import Fold
    from guildcore.metrics.recorder import RecorderSettings

SLOW_FACTOR = 3.0  # k in "slower than k x the p95 of its function"
SLOW_MIN_SAMPLES = 20  # a p95 of fewer tasks says little
# A task shorter than this is never "slow": the alert tells a person to look
# for a stuck call or an outsized input, and a task done within a second is
# neither, whatever its ratio (the refactor's biggest files run 3x the p95 of
# the rest in 0.16 s; scheduling noise makes a 100 us chunk take 3x its p95).
SLOW_MIN_S = 1.0
SLOW_QUIET_TASKS = 10
LOW_HIT_RATE = 0.70
LOW_HIT_MIN_LOOKUPS = 100
MEMORY_CLEAR_MARGIN = 0.10  # of the limit, below the threshold
FAILURE_QUIET_S = 10.0
RECENT_ALERTS = 10  # shown live


class Alert(Declared):
    """One alert: ``kind``, a message in the project's error style, and its facts.

    ``t`` is wall-clock time (``time.time()``). ``value`` and ``threshold``
    are in the unit the message uses (seconds, bytes, a fraction). A frozen
    record (``_records.Declared``, not a dataclass: every Guild that records
    metrics imports this module); ``to_dict`` gives its fields.
    """

    kind: str
    message: str
    t: float
    agent_id: int | None = None
    task_id: int | None = None
    fn: str | None = None
    namespace: str | None = None
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class AlertRules:
    """Episode state of one Guild's alerts, and the log of those raised."""

    def __init__(self, settings: RecorderSettings) -> None:
        self.settings = settings
        self.raised: list[dict[str, Any]] = []  # Alert.to_dict() + count, ended
        self._open: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._normal_runs: dict[str, int] = {}  # fn -> normal tasks since its last slow one
        self._seen_rows = 0
        self._deaths_seen: set[int] = set()
        self._last_death = 0.0
        self._running_alerted: set[int] = set()  # tasks already alerted on while running
        # Time per item of the tasks checked so far, per function: a task is
        # compared with those before it, never with itself.
        self._item_s: dict[str, Reservoir] = {}

    # ------------------------------------------------------------ episodes

    def record(self, alert: Alert) -> Alert:
        """Open ``alert``'s episode; later occurrences extend it."""
        entry = {**alert.to_dict(), "count": 1, "ended": None}
        self.raised.append(entry)
        self._open[_episode(alert)] = entry
        return alert

    def _extend(self, key: tuple[Any, ...]) -> bool:
        """Count one more occurrence of an open episode; False if none is open."""
        entry = self._open.get(key)
        if entry is None:
            return False
        entry["count"] += 1
        return True

    def _close(self, key: tuple[Any, ...], wall: float) -> None:
        entry = self._open.pop(key, None)
        if entry is not None:
            entry["ended"] = wall

    def recent(self) -> list[dict[str, Any]]:
        return [dict(a) for a in self.raised[-RECENT_ALERTS:]]

    # ------------------------------------------------------------ rules

    def check(self, fold: Fold, pool: Mapping[str, Any], now: float) -> list[Alert]:
        """New alerts at ``now`` (monotonic), their episodes opened; extends and closes episodes as it goes."""
        wall = time.time() - (time.monotonic() - now)
        out: list[Alert] = []
        out += self._slow_finished(fold, wall)
        p95 = {fn: r.percentile(95) for fn, r in self._item_s.items() if r.count >= SLOW_MIN_SAMPLES}
        out += self._slow_running(fold, pool, p95, now, wall)
        out += self._memory(pool, wall)
        out += self._hit_rate(fold, wall)
        out += self._failures(fold, now, wall)
        return out

    def _slow_finished(self, fold: Fold, wall: float) -> list[Alert]:
        out = []
        rows = fold.rows[self._seen_rows :]
        self._seen_rows = len(fold.rows)
        for row in rows:
            task_id, fn, agent, n_items, _q, _s, run_s, _f, outcome, _e, _c, _sends, _r, _peak, measured = row
            if not measured or run_s is None or outcome not in (DONE, FAILED) or task_id < 0:
                continue
            per_item = run_s / max(1, n_items)
            seen = self._item_s.get(fn) or self._item_s.setdefault(fn, Reservoir())
            limit = seen.percentile(95) if seen.count >= SLOW_MIN_SAMPLES else None
            seen.add(per_item)
            if limit is None:
                continue
            if task_id in self._running_alerted:
                self._running_alerted.discard(task_id)
                continue
            if per_item > SLOW_FACTOR * limit and run_s >= SLOW_MIN_S:
                self._normal_runs[fn] = 0
                if not self._extend(("slow_task", fn)):
                    out.append(self.record(_slow(fn, task_id, agent, per_item, limit, n_items, wall, running=False)))
            else:
                self._normal_runs[fn] = self._normal_runs.get(fn, 0) + 1
                if self._normal_runs[fn] >= SLOW_QUIET_TASKS:
                    self._close(("slow_task", fn), wall)
        return out

    def _slow_running(
        self, fold: Fold, pool: Mapping[str, Any], p95: Mapping[str, float | None], now: float, wall: float
    ) -> list[Alert]:
        out = []
        for agent in pool.get("agents", []):
            held = agent.get("held") or []
            task = fold.tasks.get(held[0]) if held else None
            limit = p95.get(task.fn) if task is not None else None
            if task is None or limit is None or ("slow_task", task.fn) in self._open:
                continue
            since = fold.running_since(agent["id"], task.id)
            if since is None:
                continue
            per_item = (now - since) / max(1, task.n_items)
            if per_item > SLOW_FACTOR * limit and now - since >= SLOW_MIN_S:
                self._normal_runs[task.fn] = 0
                self._running_alerted.add(task.id)
                out.append(self.record(_slow(task.fn, task.id, agent["id"], per_item, limit, task.n_items, wall, running=True)))
        return out

    def _memory(self, pool: Mapping[str, Any], wall: float) -> list[Alert]:
        limit = self.settings.limit_bytes
        if not limit:
            return []
        high = self.settings.warning_threshold * limit
        low = max(0.0, self.settings.warning_threshold - MEMORY_CLEAR_MARGIN) * limit
        out = []
        alive = set()
        for agent in pool.get("agents", []):
            alive.add(agent["id"])
            private = agent.get("private_bytes")
            if private is None:
                continue
            key = ("high_memory", agent["id"])
            if private > high and key not in self._open:
                from guildcore.errors import format_bytes

                out.append(self.record(Alert(
                    "high_memory",
                    f"agent {agent['id']} (pid {agent.get('pid')}) uses {format_bytes(private)} of private memory, "
                    f"over {self.settings.warning_threshold:.0%} of its {format_bytes(limit)} limit (limits.per_agent); "
                    "past the limit its task fails with MemoryLimitExceeded: raise limits.per_agent or lower the task's memory",
                    wall, agent_id=agent["id"], value=float(private), threshold=high,
                )))  # fmt: skip
            elif private < low:
                self._close(key, wall)
        for key in [k for k in self._open if k[0] == "high_memory" and k[1] not in alive]:
            self._close(key, wall)
        return out

    def _hit_rate(self, fold: Fold, wall: float) -> list[Alert]:
        per_ns: dict[str, list[int]] = {}
        for (_fn, _fp, ns), use in fold.cache.items():
            totals = per_ns.setdefault(ns, [0, 0])
            totals[0] += use.lookups - use.cold
            totals[1] += use.hits
        out = []
        for ns, (lookups, hits) in per_ns.items():
            key = ("low_hit_rate", ns)
            rate = hits / lookups if lookups else 1.0
            if lookups >= LOW_HIT_MIN_LOOKUPS and rate < LOW_HIT_RATE:
                if key not in self._open:
                    out.append(self.record(Alert(
                        "low_hit_rate",
                        f"cache namespace {ns!r} answered {hits} of {lookups} lookups ({rate:.0%}), under "
                        f"{LOW_HIT_RATE:.0%}; run `guild doctor` to see whether keys never repeat, entries "
                        "expire (caching.ttl) or code changes invalidate them",
                        wall, namespace=ns, value=rate, threshold=LOW_HIT_RATE,
                    )))  # fmt: skip
            elif rate >= LOW_HIT_RATE:
                self._close(key, wall)
        return out

    def _failures(self, fold: Fold, now: float, wall: float) -> list[Alert]:
        out = []
        key = ("agent_failed",)
        for agent in fold.agents.values():
            if agent.exited is None or agent.reason in (None, "stopped") or agent.id in self._deaths_seen:
                continue
            self._deaths_seen.add(agent.id)
            self._last_death = max(self._last_death, agent.exited)
            if not self._extend(key):
                out.append(self.record(Alert(
                    "agent_failed",
                    f"agent {agent.id} (pid {agent.pid}) died: {agent.reason}; its task was retried or failed "
                    "(see g.stats()['counters']); if agents keep dying, look at memory (limits.per_agent) "
                    "and at what the task does",
                    wall, agent_id=agent.id, fn=None,
                )))  # fmt: skip
        if key in self._open and now - self._last_death > FAILURE_QUIET_S:
            self._close(key, wall)
        return out


def _episode(alert: Alert) -> tuple[Any, ...]:
    if alert.kind == "slow_task":
        return ("slow_task", alert.fn)
    if alert.kind == "high_memory":
        return ("high_memory", alert.agent_id)
    if alert.kind == "low_hit_rate":
        return ("low_hit_rate", alert.namespace)
    if alert.kind == "agent_failed":
        return ("agent_failed",)
    return (alert.kind, alert.agent_id, alert.fn, alert.namespace)


def _slow(fn: str, task_id: int, agent: Any, per_item: float, p95: float, n_items: int, wall: float, *, running: bool) -> Alert:
    what = "has been running" if running else "ran"
    unit = f"{per_item:.3g} s per item over {n_items} items" if n_items > 1 else f"{per_item:.3g} s"
    return Alert(
        "slow_task",
        f"task {task_id} ({fn}) {what} {unit} on agent {agent}, {per_item / p95:.1f}x the p95 of {fn} "
        f"({p95:.3g} s per item); an input much bigger than the rest, or a stuck call: set a timeout "
        "(limits.timeout) or split the input",
        wall, task_id=task_id, fn=fn, agent_id=agent if isinstance(agent, int) else None,
        value=per_item, threshold=SLOW_FACTOR * p95,
    )  # fmt: skip


__all__ = ["LOW_HIT_MIN_LOOKUPS", "LOW_HIT_RATE", "SLOW_FACTOR", "Alert", "AlertRules"]
