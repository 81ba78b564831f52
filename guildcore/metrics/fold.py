"""Folding recorded events into per-task, per-agent and per-function aggregates.

This module covers ``Fold``: the owner of everything a ``RunRecorder`` has
learnt, updated in batches at each tick (never per event), and the plain
data it gives out: the live view of a running Guild and its part of a run's
record. It does not cover alert rules (``alerts``) nor joining the parts of
several Guilds into one run record (``summary``).

Definitions, as the record states them (seconds; times relative to the
run's start):

- queue wait: from ``task_queued`` to the run starting in the agent;
- run time and CPU time: measured by the agent around the call (a task
  whose agent died has only the supervisor's view: ``measured`` false);
- IPC time: from the end of the run in the agent to the result reaching
  the supervisor (result encoding, the pipe, decoding);
- peak private memory of a task: the highest sample of its agent since the
  agent's previous task finished (samples come every
  ``limits.sample_interval`` while the agent is busy, so tasks shorter than
  that may have none);
- queue depth: tasks waiting in the supervisor, from the task events.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Mapping

from guildcore.metrics.recorder import (
    AGENT_EXITED,
    AGENT_READY,
    AGENT_STARTED,
    CACHE,
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    INLINE,
    MEMORY,
    MODE,
    QUEUED,
    RAN,
    RETRIED,
    SENT,
    RecorderSettings,
)
from guildcore.metrics.series import Reservoir, Series

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

# Finished tasks kept one by one (for the task stream); past this only
# aggregates grow, and the record says how many rows were dropped.
TASK_DETAIL_CAP = 20_000
# Keys remembered per (function, fingerprint, namespace): the smallest ones.
CACHE_KEYS_KEPT = 256
# The live view's throughput: items finished over this many seconds.
THROUGHPUT_WINDOW_S = 10.0
INLINE_AGENT = 0  # the caller's own process, for items routed inline

TASK_FIELDS = (
    "id", "fn", "agent", "n_items", "queued", "started", "run_s", "finished",
    "outcome", "error", "cpu_s", "sends", "retries", "peak_private", "measured",
)  # fmt: skip


class _Task:
    __slots__ = (
        "agent", "cpu_s", "error", "finished", "fn", "id", "in_queue", "measured", "n_items",
        "outcome", "queued", "retries", "run_s", "sends", "sent", "started",
    )  # fmt: skip

    def __init__(self, task_id: int, fn: str, n_items: int, queued: float | None) -> None:
        self.id = task_id
        self.fn = fn
        self.n_items = n_items
        self.queued = queued
        self.sent: float | None = None
        self.agent: int | None = None
        self.started: float | None = None
        self.run_s: float | None = None
        self.cpu_s: float | None = None
        self.finished: float | None = None
        self.outcome: str | None = None
        self.error: str | None = None
        self.sends = 0
        self.retries = 0
        self.in_queue = False
        self.measured = False


class _Agent:
    __slots__ = (
        "busy_s", "cpu_s", "exited", "id", "items", "last", "last_finish", "memory", "peak",
        "pid", "ready", "reason", "started", "tasks", "window_peak",
    )  # fmt: skip

    def __init__(self, agent_id: int, pid: int | None, started: float) -> None:
        self.id = agent_id
        self.pid = pid
        self.started = started
        self.ready: float | None = None
        self.exited: float | None = None
        self.reason: str | None = None
        self.tasks = 0
        self.items = 0
        self.busy_s = 0.0
        self.cpu_s = 0.0
        self.last: int | None = None
        self.peak: int | None = None
        self.window_peak: int | None = None
        self.last_finish: float | None = None
        self.memory = Series()  # (t, private bytes, tasks finished so far)


class _Fn:
    __slots__ = ("cpu_s", "errors", "item_s", "items", "run_s", "tasks")

    def __init__(self) -> None:
        self.tasks = 0
        self.items = 0
        self.errors = 0
        self.run_s = 0.0
        self.cpu_s = 0.0
        self.item_s = Reservoir()  # run time per item of measured, successful tasks


class _CacheUse:
    __slots__ = ("cold", "first", "hits", "keys", "last", "lookups")

    def __init__(self, t: float) -> None:
        self.first = t
        self.last = t
        self.lookups = 0
        self.hits = 0
        # Lookups of a first batch that found nothing: the cache being filled
        # (compulsory misses), which says nothing about how well it works.
        self.cold = 0
        self.keys: list[bytes] = []


class Fold:
    """Aggregates of one Guild's events; fed by ``absorb`` on one thread at a time."""

    def __init__(self, settings: RecorderSettings, *, t0: float, opened: float | None = None, guild_no: int = 1) -> None:
        self.settings = settings
        self.t0 = t0  # the run's start: every time in the record is relative to it
        self.guild_no = guild_no
        self.opened = t0 if opened is None else opened
        self.closed: float | None = None
        self.tasks: dict[int, _Task] = {}  # queued or in flight
        self.rows: list[tuple[Any, ...]] = []  # finished tasks, TASK_FIELDS order
        self.dropped = 0
        self.agents: dict[int, _Agent] = {}
        self.functions: dict[str, _Fn] = {}
        self.counts = {"queued": 0, DONE: 0, FAILED: 0, CANCELLED: 0, "retried": 0, "inline_batches": 0}
        self.errors: dict[str, int] = {}
        self.depth = 0
        self.queue = Series()
        self.items_submitted = 0
        self.items_done = 0
        self.done = Series()  # (t, items finished so far)
        self.queue_wait = Reservoir()
        self.ipc = Reservoir()
        self.modes: list[tuple[float, str, str]] = []
        self.cache: dict[tuple[str, str | None, str], _CacheUse] = {}
        self.supervisor_memory = Series()
        self.total_memory = Series()
        self._inline_ids = 0
        self._recent: deque[tuple[float, int]] = deque()  # (t, items done) in the window
        self._done_before = 0  # items done before the window

    # ------------------------------------------------------------ events

    def absorb(self, events: Iterable[tuple[Any, ...]]) -> None:
        for ev in events:
            tag = ev[0]
            if tag == QUEUED:
                self._queued(ev[1], ev[2], ev[3], ev[4])
            elif tag == SENT:
                self._sent(ev[1], ev[2], ev[3])
            elif tag == RAN:
                self._ran(ev[2], ev[3], ev[4], ev[5], ev[6])
            elif tag == FINISHED:
                self._finished(ev[1], ev[2], ev[3], ev[4])
            elif tag == RETRIED:
                self._retried(ev[1], ev[2], ev[3])
            elif tag == MEMORY:
                self._memory(ev[1], ev[2], ev[3])
            elif tag == AGENT_STARTED:
                self.agents[ev[2]] = _Agent(ev[2], ev[3], ev[1])
            elif tag == AGENT_READY:
                self._agent(ev[2], ev[1]).ready = ev[1]
            elif tag == AGENT_EXITED:
                agent = self._agent(ev[2], ev[1])
                agent.exited, agent.reason = ev[1], ev[3]
            elif tag == MODE:
                self.modes.append((ev[1], ev[2], ev[3]))
            elif tag == INLINE:
                self._inline(ev[1], ev[2], ev[3], ev[4])
            elif tag == CACHE:
                self._cache(ev[1], ev[2], ev[3], ev[4], ev[5], ev[6], ev[7])

    def _agent(self, agent_id: int, t: float) -> _Agent:
        agent = self.agents.get(agent_id)
        if agent is None:  # reported before its start (or the start was not): keep it anyway
            agent = self.agents[agent_id] = _Agent(agent_id, None, t)
        return agent

    def _task(self, task_id: int) -> _Task:
        rec = self.tasks.get(task_id)
        if rec is None:
            rec = self.tasks[task_id] = _Task(task_id, "?", 1, None)
        return rec

    def _depth(self, t: float, delta: int) -> None:
        self.depth += delta
        self.queue.add(t - self.t0, self.depth)

    def _queued(self, t: float, task_id: int, fn: str, n_items: int) -> None:
        rec = self.tasks[task_id] = _Task(task_id, fn, n_items, t)
        rec.in_queue = True
        self.counts["queued"] += 1
        self.items_submitted += n_items
        self._depth(t, 1)

    def _sent(self, t: float, task_id: int, agent_id: int) -> None:
        rec = self._task(task_id)
        rec.sends += 1
        rec.sent = t
        rec.agent = agent_id
        if rec.in_queue:
            rec.in_queue = False
            self._depth(t, -1)

    def _ran(self, task_id: int, agent_id: int, started: float, run_s: float, cpu_s: float | None) -> None:
        rec = self._task(task_id)
        rec.agent, rec.started, rec.run_s, rec.cpu_s, rec.measured = agent_id, started, run_s, cpu_s, True

    def _retried(self, t: float, task_id: int, reason: str) -> None:
        rec = self._task(task_id)
        rec.retries += 1
        rec.error = reason
        rec.started = rec.run_s = rec.cpu_s = None
        rec.measured = False
        rec.in_queue = True
        self.counts["retried"] += 1
        self._depth(t, 1)

    def _finished(self, t: float, task_id: int, outcome: str, error: str | None) -> None:
        rec = self.tasks.pop(task_id, None) or _Task(task_id, "?", 1, None)
        if rec.in_queue:
            rec.in_queue = False
            self._depth(t, -1)
        rec.finished, rec.outcome, rec.error = t, outcome, error
        agent = self.agents.get(rec.agent) if rec.agent is not None else None
        if rec.run_s is None and rec.sent is not None and outcome != CANCELLED:
            # No STATS from the agent (it failed or died): the supervisor's view.
            begun = rec.sent if agent is None or agent.last_finish is None else max(rec.sent, agent.last_finish)
            rec.started, rec.run_s = begun, max(0.0, t - begun)
        peak = None
        if agent is not None and rec.sends:
            peak, agent.window_peak = agent.window_peak, None
            agent.last_finish = t
            agent.busy_s += rec.run_s or 0.0
            agent.cpu_s += rec.cpu_s or 0.0
            if outcome == DONE:
                agent.tasks += 1
                agent.items += rec.n_items
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if error is not None and outcome == FAILED:
            self.errors[error] = self.errors.get(error, 0) + 1
        fn = self.functions.get(rec.fn) or self.functions.setdefault(rec.fn, _Fn())
        fn.tasks += 1
        if outcome == FAILED:
            fn.errors += 1
        if rec.started is not None and rec.queued is not None:
            self.queue_wait.add(max(0.0, rec.started - rec.queued))
        if rec.measured and rec.run_s is not None and rec.started is not None:
            fn.run_s += rec.run_s
            fn.cpu_s += rec.cpu_s or 0.0
            self.ipc.add(max(0.0, t - rec.started - rec.run_s))
            if outcome == DONE:
                fn.item_s.add(rec.run_s / max(1, rec.n_items))
        if outcome == DONE:
            fn.items += rec.n_items
            self._items_done(t, rec.n_items)
        self._row(rec, peak)

    def _items_done(self, t: float, n: int) -> None:
        self.items_done += n
        self.done.add(t - self.t0, self.items_done)
        self._recent.append((t, self.items_done))

    def _row(self, rec: _Task, peak: int | None) -> None:
        if len(self.rows) >= TASK_DETAIL_CAP:
            self.dropped += 1
            return
        self.rows.append((
            rec.id, rec.fn, rec.agent, rec.n_items, self._rel(rec.queued), self._rel(rec.started),
            _round(rec.run_s), self._rel(rec.finished), rec.outcome, rec.error, _round(rec.cpu_s),
            rec.sends, rec.retries, peak, rec.measured,
        ))  # fmt: skip

    def _memory(self, t: float, agent_id: int, private: int) -> None:
        agent = self._agent(agent_id, t)
        agent.last = private
        if agent.peak is None or private > agent.peak:
            agent.peak = private
        if agent.window_peak is None or private > agent.window_peak:
            agent.window_peak = private
        agent.memory.add(t - self.t0, private, agent.tasks)

    def _inline(self, t: float, fn_name: str, n_items: int, started: float) -> None:
        agent = self.agents.get(INLINE_AGENT)
        if agent is None:
            agent = self.agents[INLINE_AGENT] = _Agent(INLINE_AGENT, os.getpid(), started)
            agent.ready = started
        run_s = max(0.0, t - started)
        agent.busy_s += run_s
        agent.tasks += 1
        agent.items += n_items
        agent.last_finish = t
        self.counts["inline_batches"] += 1
        self.items_submitted += n_items
        fn = self.functions.get(fn_name) or self.functions.setdefault(fn_name, _Fn())
        fn.tasks += 1
        fn.items += n_items
        fn.run_s += run_s
        fn.item_s.add(run_s / max(1, n_items))
        self._items_done(t, n_items)
        self._inline_ids -= 1
        rec = _Task(self._inline_ids, fn_name, n_items, started)
        rec.agent, rec.started, rec.run_s, rec.finished, rec.outcome, rec.measured = INLINE_AGENT, started, run_s, t, DONE, True
        self._row(rec, None)

    def _cache(
        self, t: float, fn: str, fingerprint: str | None, namespace: str, lookups: int, hits: int, keys: list[bytes]
    ) -> None:
        use = self.cache.get((fn, fingerprint, namespace))
        if use is None:
            use = self.cache[(fn, fingerprint, namespace)] = _CacheUse(t)
            if hits == 0:
                use.cold = lookups
        use.last = t
        use.lookups += lookups
        use.hits += hits
        if keys:  # the bottom-k sketch of every key looked up (see RunRecorder.cache_lookup)
            use.keys = sorted(set(use.keys).union(keys))[:CACHE_KEYS_KEPT]

    # ------------------------------------------------------------ derived

    def _rel(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.t0, 6)

    def cache_totals(self) -> tuple[int, int]:
        """(lookups, hits) over every cache lookup of the run so far."""
        lookups = sum(u.lookups for u in self.cache.values())
        return lookups, sum(u.hits for u in self.cache.values())

    def busy_fraction(self, agent: _Agent, now: float, running_s: float = 0.0) -> float | None:
        since = agent.ready if agent.ready is not None else agent.started
        until = agent.exited if agent.exited is not None else now
        alive = until - since
        if alive <= 0:
            return None
        return min(1.0, (agent.busy_s + running_s) / alive)

    def running_since(self, agent_id: int, task_id: int) -> float | None:
        """When ``task_id``, at the head of ``agent_id``, began (the supervisor's view)."""
        rec = self.tasks.get(task_id)
        if rec is None or rec.sent is None:
            return None
        agent = self.agents.get(agent_id)
        if agent is None or agent.last_finish is None:
            return rec.sent
        return max(rec.sent, agent.last_finish)

    def throughput(self, now: float) -> float:
        """Items finished per second over the last ``THROUGHPUT_WINDOW_S``."""
        start = max(now - THROUGHPUT_WINDOW_S, self.opened)
        recent = self._recent
        while recent and recent[0][0] < start:
            self._done_before = recent.popleft()[1]
        span = now - start
        return (self.items_done - self._done_before) / span if span > 0 else 0.0

    def sample_supervisor(self, now: float, agents_private: int) -> None:
        """Memory of the supervisor's own process, and of everything, at a tick."""
        probe = self.settings.memory_probe
        own = probe(os.getpid()) if probe is not None else None
        if own is not None:
            self.supervisor_memory.add(now - self.t0, own)
        self.total_memory.add(now - self.t0, (own or 0) + agents_private)

    def live_view(self, pool: Mapping[str, Any], now: float) -> dict[str, Any]:
        """What ``guild top`` shows of this Guild: plain data, JSON-ready."""
        agents = []
        private_total = 0
        for a in pool.get("agents", []):
            agent = self.agents.get(a["id"])
            held = a.get("held") or []
            task = self.tasks.get(held[0]) if held else None
            since = self.running_since(a["id"], held[0]) if held else None
            running_s = now - since if since is not None else 0.0
            private = a.get("private_bytes")
            private_total += private or 0
            agents.append({
                "id": a["id"],
                "pid": a.get("pid"),
                "state": a.get("state"),
                "task": None if task is None else {"id": task.id, "fn": task.fn, "running_s": round(running_s, 3)},
                "held": len(held),
                "tasks_done": a.get("tasks_done", 0),
                "private_bytes": private,
                "peak_private_bytes": a.get("peak_private_bytes"),
                "busy_fraction": None if agent is None else self.busy_fraction(agent, now, running_s),
            })  # fmt: skip
        self.sample_supervisor(now, private_total)
        lookups, hits = self.cache_totals()
        mode = self.modes[-1][1] if self.modes else "normal"
        return {
            "uptime_s": round(now - self.opened, 3),
            "mode": mode,
            "inline": bool(pool.get("inline")),
            "queued": pool.get("queued", self.depth),
            "limit_bytes": self.settings.limit_bytes,
            "max_agents": self.settings.max_agents,
            "agents": agents,
            "counts": dict(self.counts),
            "items": {"submitted": self.items_submitted, "done": self.items_done},
            "items_per_s": round(self.throughput(now), 3),
            "cache": {"lookups": lookups, "hits": hits, "hit_rate": hits / lookups if lookups else None},
        }

    # ------------------------------------------------------------ record

    def agent_key(self, agent_id: int | None) -> str | None:
        if agent_id is None:
            return None
        name = "inline" if agent_id == INLINE_AGENT else str(agent_id)
        return name if self.guild_no == 1 else f"{self.guild_no}.{name}"

    def part(self, now: float) -> dict[str, Any]:
        """This Guild's part of the run record (see ``summary.build_record``)."""
        end = self.closed if self.closed is not None else now
        agents = []
        for agent in self.agents.values():
            agents.append({
                "key": self.agent_key(agent.id),
                "id": agent.id,
                "guild": self.guild_no,
                "pid": agent.pid,
                "inline": agent.id == INLINE_AGENT,
                "started": self._rel(agent.started),
                "ready": self._rel(agent.ready),
                "exited": self._rel(agent.exited),
                "reason": agent.reason,
                "tasks": agent.tasks,
                "items": agent.items,
                "busy_s": round(agent.busy_s, 6),
                "cpu_s": round(agent.cpu_s, 6),
                "busy_fraction": self.busy_fraction(agent, end),
                "peak_private_bytes": agent.peak,
                "memory": [list(p) for p in agent.memory.points],
            })  # fmt: skip
        functions = {}
        for name, fn in self.functions.items():
            functions[name] = {
                "tasks": fn.tasks,
                "items": fn.items,
                "errors": fn.errors,
                "run_s": round(fn.run_s, 6),
                "cpu_s": round(fn.cpu_s, 6),
                "item_s": fn.item_s.summary(),
            }
        rows = [list(r) for r in self.rows]
        key = self.agent_key
        for row in rows:
            row[2] = key(row[2])
        return {
            "guild": self.guild_no,
            "opened": self._rel(self.opened),
            "closed": self._rel(end),
            "settings": dict(self.settings.config),
            "max_agents": self.settings.max_agents,
            "limit_bytes": self.settings.limit_bytes,
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "items": {"submitted": self.items_submitted, "done": self.items_done},
            "agents": agents,
            "functions": functions,
            "tasks": rows,
            "tasks_dropped": self.dropped,
            "queue_wait_s": self.queue_wait.summary(),
            "ipc_s": self.ipc.summary(),
            "series": {
                "queue": [list(p) for p in self.queue.points],
                "done": [list(p) for p in self.done.points],
                "supervisor_memory": [list(p) for p in self.supervisor_memory.points],
                "total_memory": [list(p) for p in self.total_memory.points],
            },
            "modes": [[round(t - self.t0, 6), mode, why] for t, mode, why in self.modes],
            "cache_lookups": [
                {
                    "fn": fn, "fingerprint": fp, "namespace": ns, "first": self._rel(u.first),
                    "last": self._rel(u.last), "lookups": u.lookups, "hits": u.hits,
                    "keys": [k.hex() for k in u.keys],
                }
                for (fn, fp, ns), u in self.cache.items()
            ],
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


__all__ = ["TASK_FIELDS", "Fold", "RecorderSettings"]
