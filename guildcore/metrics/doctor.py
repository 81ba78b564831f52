"""``guild doctor``: the troubleshooting table as checks over recorded runs.

This module covers ``diagnose(record, earlier)``: checks on one run's record
(and, for the cache, the runs before it) that each return ``Finding``s
naming the evidence, with the run's numbers, and the setting or code
change to make. It does not cover reading the history (``history``) nor
printing (``cli``).

Checks, by symptom:

- slow execution: ``tiny_tasks`` (tasks shorter than their own shipping),
  ``few_agents`` (agents left unused while work waited, or a pool smaller
  than the host), ``low_efficiency`` (agents idle: stragglers or work in
  the caller between batches), ``slow_tasks`` (alerts of tasks far slower
  than their function's p95);
- high memory: ``memory_growth`` (an agent whose memory grows task after
  task), ``memory_limit`` (agents killed at ``limits.per_agent``, or close
  to it), ``pool_memory`` (agents together past ``limits.total_system``),
  ``cache_memory`` (the in-process cache near ``caching.memory_cache``);
- poor cache performance: ``keys_never_repeat``, ``ttl_expired``,
  ``code_changed``, and ``cold_cache`` when a run is simply the first.

Findings are ordered by ``score``: roughly the share of the run's time or
memory the problem explains, so the first one is the one to fix first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from guildcore.errors import format_bytes
from guildcore.metrics.series import percentile
from guildcore.metrics.summary import cache_totals, pool_agents, rows

__all__ = ["Finding", "diagnose"]

TINY_TASK_S = 0.001  # a task shorter than this costs more to ship than to run
MIN_TASKS = 20  # fewer tasks say little about a pattern
LOW_EFFICIENCY = 0.5
MIN_WALL_S = 0.5  # below this a run is mostly start-up
GROWTH_MIN_BYTES = 20 * 10**6  # an agent growing less than this is not leaking anything that matters
GROWTH_MIN_POINTS = 5
NEAR_LIMIT = 0.8
LOW_HIT_RATE = 0.7
MIN_LOOKUPS = 20
KEYS_OVERLAP = 0.5  # this share of a run's keys recurring means keys do repeat


@dataclass(frozen=True)
class Finding:
    """One diagnosis: ``check`` (its id), ``symptom`` (slow / memory / cache),
    what was found, the evidence in numbers, and the change to make."""

    check: str
    symptom: str
    title: str
    evidence: str
    fix: str
    score: float
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(record: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]] = ()) -> list[Finding]:
    """Findings for ``record``, worst first; ``earlier`` are previous runs, newest first."""
    run = _Run(record)
    findings: list[Finding] = []
    for check in (_tiny_tasks, _few_agents, _low_efficiency, _slow_tasks, _memory_growth,
                  _memory_limit, _pool_memory, _cache_memory):  # fmt: skip
        findings += check(run)
    findings += _cache_checks(run, [_Run(r) for r in earlier])
    return sorted(findings, key=lambda f: -f.score)


class _Run:
    """A record with the figures the checks share, computed once."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record
        self.id = str(record.get("id"))
        self.summary: Mapping[str, Any] = record.get("summary") or {}
        self.wall = float(record.get("wall_s") or 0.0)
        self.started = float(record.get("started") or 0.0)
        self.rows = rows(record)
        self.agents = pool_agents(record)
        guilds = record.get("guilds") or [{}]
        self.settings: Mapping[str, Any] = guilds[0].get("settings") or {}
        self.pool_rows = [r for r in self.rows if r["agent"] is not None and not str(r["agent"]).endswith("inline")]

    def setting(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def finding(self, check: str, symptom: str, title: str, evidence: str, fix: str, score: float) -> Finding:
        return Finding(check, symptom, title, evidence, fix, round(score, 4), self.id)


# ---------------------------------------------------------------- slow


def _tiny_tasks(run: _Run) -> list[Finding]:
    tasks = [r for r in run.pool_rows if r["outcome"] == "done" and r["run_s"] is not None]
    if len(tasks) < MIN_TASKS:
        return []
    per_task = percentile([r["run_s"] for r in tasks], 50) or 0.0
    if per_task >= TINY_TASK_S:
        return []
    singles = sum(1 for r in tasks if r["n_items"] == 1)
    spent = sum(r["run_s"] for r in tasks)
    items = sum(r["n_items"] for r in tasks)
    chunk = max(2, math.ceil(0.01 / max(per_task / max(1.0, items / len(tasks)), 1e-7)))
    how = (
        f"send them with g.map(fn, items) (batched automatically) instead of one submit per item, or pass chunksize={chunk}"
        if singles > len(tasks) // 2
        else f"pass a bigger chunksize (about {chunk} items make 10 ms per task), or leave chunksize='auto'"
    )
    return [run.finding(
        "tiny_tasks", "slow", "tasks too tiny for the pool",
        f"{len(tasks):,} tasks ran in agents with a median of {per_task * 1e6:,.0f} µs each "
        f"({singles:,} of one item); agents were busy {spent:.2f} s of the run's {run.wall:.2f} s, "
        "the rest went to sending tasks and results between processes",
        how, 0.9 + min(0.09, len(tasks) / 1e5),
    )]  # fmt: skip


def _few_agents(run: _Run) -> list[Finding]:
    s = run.summary
    used, most = int(s.get("agents_used") or 0), int(s.get("max_agents") or 0)
    cpus = int(run.setting("host.cpus", 0) or 0)
    if not run.pool_rows or run.wall < MIN_WALL_S:
        return []
    waits = [r["started"] - r["queued"] for r in run.pool_rows if r["started"] is not None and r["queued"] is not None]
    wait_p50 = percentile(waits, 50) or 0.0
    if used < most and wait_p50 > 0.1 * run.wall:
        return [run.finding(
            "few_agents", "slow", "agents left unused while work waited",
            f"{used} of pool.max_agents={most} agents ran tasks, while tasks waited a median of "
            f"{wait_p50:.2f} s in the queue (the run took {run.wall:.2f} s)",
            f"raise pool.min_agents to {most} so agents are up from the start, or lower "
            f"pool.scale_up_queue_length ({run.setting('pool.scale_up_queue_length', 3)}) so they start sooner",
            0.6,
        )]  # fmt: skip
    if len(run.pool_rows) < most:
        return [run.finding(
            "few_agents", "slow", "fewer tasks than agents",
            f"the run had {len(run.pool_rows)} tasks for pool.max_agents={most} agents: {most - len(run.pool_rows)} stayed idle",
            "split the work into more tasks: a smaller chunksize, or more, smaller items",
            0.4,
        )]  # fmt: skip
    efficiency = s.get("parallel_efficiency") or 0.0
    if cpus > most and efficiency > 0.8:
        return [run.finding(
            "few_agents", "slow", "a pool smaller than the host",
            f"pool.max_agents={most} on a host with {cpus} usable CPUs, and the agents were busy "
            f"{efficiency:.0%} of the time",
            f"raise pool.max_agents (up to {cpus}), or leave it at auto",
            0.5,
        )]  # fmt: skip
    return []


def _low_efficiency(run: _Run) -> list[Finding]:
    efficiency = run.summary.get("parallel_efficiency")
    if efficiency is None or efficiency >= LOW_EFFICIENCY or run.wall < MIN_WALL_S or len(run.pool_rows) < 2:
        return []
    busy = float(run.summary.get("busy_agent_s") or 0.0)
    spans = sorted((r["started"], r["started"] + r["run_s"]) for r in run.pool_rows if r["started"] is not None and r["run_s"] is not None)
    covered = _covered(spans)
    idle_all = max(0.0, run.wall - covered)
    longest = max(run.pool_rows, key=lambda r: r["run_s"] or 0.0)
    head = (
        f"agents were busy {busy:.2f} agent-seconds of the {busy / max(efficiency, 1e-9):.2f} the pool "
        f"could give ({efficiency:.0%} parallel efficiency)"
    )
    if (longest["run_s"] or 0.0) > 0.25 * run.wall and idle_all < 0.5 * run.wall:
        return [run.finding(
            "low_efficiency", "slow", "a straggler: one task ran while other agents idled",
            f"{head}; task {longest['id']} ({longest['fn']}) alone ran {longest['run_s']:.2f} s of the "
            f"run's {run.wall:.2f} s",
            "split that item, or send the biggest items first so the long ones overlap (sort items by size)",
            0.7 * (1 - efficiency),
        )]  # fmt: skip
    return [run.finding(
        "low_efficiency", "slow", "agents idle between batches",
        f"{head}; for {idle_all:.2f} s of the run's {run.wall:.2f} s no task ran at all: the caller "
        "was doing other work (reading input, preparing the next batch) or waiting",
        "overlap the caller's work with the pool: submit the next batch before consuming the last one "
        "(g.imap / g.submit), or move the caller's work into tasks",
        0.7 * (1 - efficiency) * (idle_all / run.wall),
    )]  # fmt: skip


def _covered(spans: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in spans:
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _slow_tasks(run: _Run) -> list[Finding]:
    alerts = [a for g in run.record.get("guilds", []) for a in g.get("alerts", []) if a.get("kind") == "slow_task"]
    if not alerts:
        return []
    worst = max(alerts, key=lambda a: (a.get("value") or 0) / max(a.get("threshold") or 1e-9, 1e-9))
    return [run.finding(
        "slow_tasks", "slow", "tasks far slower than their function's usual",
        f"{sum(a.get('count', 1) for a in alerts)} slow tasks in {len(alerts)} episodes; worst: {worst['message'].split(';')[0]}",
        "look at those inputs (much bigger than the rest?); set a per-task timeout (limits.timeout) "
        "so a stuck call fails instead of holding an agent",
        0.3,
    )]  # fmt: skip


# ---------------------------------------------------------------- memory


def _slope(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of y over x, and the correlation."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    syy = sum((p[1] - my) ** 2 for p in points)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    if sxx <= 0 or syy <= 0:
        return 0.0, 0.0
    return sxy / sxx, sxy / math.sqrt(sxx * syy)


def _memory_growth(run: _Run) -> list[Finding]:
    out = []
    limit = run.setting("limits.per_agent")
    for agent in run.agents:
        # (tasks finished so far, private bytes) at each sample; the last sample per task count
        by_tasks: dict[int, float] = {}
        for point in agent.get("memory", []):
            if len(point) > 2:
                by_tasks[int(point[2])] = float(point[1])
        points = sorted(by_tasks.items())
        if len(points) < GROWTH_MIN_POINTS:
            continue
        slope, corr = _slope([(float(k), v) for k, v in points])
        first, last = points[0][1], points[-1][1]
        growth = last - first
        if slope <= 0 or corr < 0.8 or growth < max(GROWTH_MIN_BYTES, 0.5 * first):
            continue
        span = points[-1][0] - points[0][0]
        recycle = ""
        if limit:
            room = max(1, int((0.5 * limit) / slope))
            recycle = f"pool.max_tasks_per_agent: {room} recycles an agent before it reaches half its limit; "
        out.append(run.finding(
            "memory_growth", "memory", f"agent {agent['key']}'s memory grows task after task",
            f"agent {agent['key']} (pid {agent.get('pid')}) grew from {format_bytes(first)} to "
            f"{format_bytes(last)} of private memory over {span} tasks (+{format_bytes(slope)} per task, "
            f"correlation {corr:.2f})",
            f"{recycle}better, find what each task keeps (a module-level list or dict, functools.lru_cache, "
            "a global cache) and bound or clear it",
            0.95 if limit and last > 0.5 * limit else 0.8,
        ))  # fmt: skip
    return out[:1] if out else []


def _memory_limit(run: _Run) -> list[Finding]:
    limit = run.setting("limits.per_agent")
    killed = [a for a in run.agents if "memory limit" in str(a.get("reason") or "")]
    peaks = [a["peak_private_bytes"] for a in run.agents if a.get("peak_private_bytes")]
    if not limit:
        return []
    if killed:
        return [run.finding(
            "memory_limit", "memory", "agents killed at their memory limit",
            f"{len(killed)} agents ended at limits.per_agent={format_bytes(limit)} "
            f"(highest sample {format_bytes(max(peaks, default=0))})",
            f"raise limits.per_agent above what one task needs (at least {format_bytes(max(peaks, default=limit) * 1.5)}), "
            "or lower the task's memory (stream its input, process it in pieces)",
            0.85,
        )]  # fmt: skip
    if peaks and max(peaks) > NEAR_LIMIT * limit:
        return [run.finding(
            "memory_limit", "memory", "agents close to their memory limit",
            f"an agent reached {format_bytes(max(peaks))}, {max(peaks) / limit:.0%} of limits.per_agent={format_bytes(limit)}",
            f"raise limits.per_agent (to {format_bytes(max(peaks) * 1.5)}), or lower the task's memory",
            0.5,
        )]  # fmt: skip
    return []


def _pool_memory(run: _Run) -> list[Finding]:
    total = run.setting("limits.total_system")
    peak_total = run.summary.get("peak_total_bytes")
    agents = len(run.agents)
    if not total or not peak_total or peak_total < NEAR_LIMIT * total or not agents:
        return []
    peaks = [a["peak_private_bytes"] for a in run.agents if a.get("peak_private_bytes")]
    each = max(peaks, default=0)
    fit = max(1, int(NEAR_LIMIT * total // max(each, 1)))
    return [run.finding(
        "pool_memory", "memory", "the pool together uses most of limits.total_system",
        f"supervisor and {agents} agents peaked at {format_bytes(peak_total)} together, "
        f"{peak_total / total:.0%} of limits.total_system={format_bytes(total)}; one agent peaked at {format_bytes(each)}",
        f"lower pool.max_agents to {fit} (they fit in {NEAR_LIMIT:.0%} of the budget), or raise limits.total_system "
        "if the host has the memory",
        0.75,
    )]  # fmt: skip


def _cache_memory(run: _Run) -> list[Finding]:
    budget = run.setting("caching.memory_cache")
    cache = cache_totals(run.record)
    used = cache.get("memory_bytes") or 0
    if not budget or used < NEAR_LIMIT * budget:
        return []
    return [run.finding(
        "cache_memory", "memory", "the in-process cache is near its budget",
        f"L2 held {format_bytes(used)}, {used / budget:.0%} of caching.memory_cache={format_bytes(budget)}",
        f"lower caching.memory_cache (entries still live in L3 on disk), or raise it if the memory is there and "
        f"hits from L2 matter ({cache.get('tier_hits', {}).get('l2', 0):,} L2 hits this run)",
        0.45,
    )]  # fmt: skip


# ---------------------------------------------------------------- cache


def _uses(run: _Run) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for guild in run.record.get("guilds", []):
        for use in guild.get("cache_lookups", []):
            out.setdefault(use["fn"], []).append(use)
    return out


def _ttl(run: _Run, namespace: str) -> float | None:
    ttl = run.setting(f"caching.namespaces.{namespace}.ttl")
    return float(ttl) if isinstance(ttl, int | float) else None


def _cache_checks(run: _Run, earlier: Sequence[_Run]) -> list[Finding]:
    out = []
    for fn, uses in _uses(run).items():
        lookups = sum(u["lookups"] for u in uses)
        hits = sum(u["hits"] for u in uses)
        if lookups < MIN_LOOKUPS or hits / lookups >= LOW_HIT_RATE:
            continue
        rate = hits / lookups
        keys = {k for u in uses for k in u.get("keys", [])}
        fps = {u.get("fingerprint") for u in uses}
        namespace = uses[0]["namespace"]
        head = f"{fn}: {hits:,} of {lookups:,} cache lookups hit ({rate:.0%})"
        score = 0.8 * (1 - rate)
        before = next((r for r in earlier if fn in _uses(r)), None)
        if before is None:
            out.append(run.finding(
                "cold_cache", "cache", f"first recorded run of {fn}: the cache is cold",
                f"{head}; no earlier run in the history looked up {fn}",
                "nothing to change if the next run hits; if it does not, run guild doctor on it",
                0.1,
            ))  # fmt: skip
            continue
        old_uses = _uses(before)[fn]
        old_keys = {k for u in old_uses for k in u.get("keys", [])}
        old_fps = {u.get("fingerprint") for u in old_uses}
        gap = run.started - before.started
        overlap = _overlap(keys, old_keys)
        ttl = _ttl(run, namespace)
        if fps.isdisjoint(old_fps):
            out.append(run.finding(
                "code_changed", "cache", f"the code of {fn} changed since the last run",
                f"{head}; its fingerprint was {_short(old_fps)} in run {before.id} and is {_short(fps)} now, "
                "so every result cached by the old code is unreachable",
                f"expected while {fn} is being edited; otherwise keep {fn}'s own code stable between runs: "
                "pass what you tune (thresholds, options) as arguments or context, and keep changing parts in "
                "helpers it calls (their code is not part of the fingerprint)",
                score + 0.05,
            ))  # fmt: skip
        elif overlap >= KEYS_OVERLAP and ttl is not None and gap > ttl:
            out.append(run.finding(
                "ttl_expired", "cache", f"cached results of {fn} expired before the rerun",
                f"{head}; {overlap:.0%} of its keys were also looked up {_duration(gap)} earlier (run {before.id}), "
                f"but entries of {namespace!r} live {_duration(ttl)} (caching.namespaces.{namespace}.ttl)",
                f"raise caching.namespaces.{namespace}.ttl above the rerun interval (to {_duration(gap * 2)}), "
                "or caching.ttl if the namespace follows it",
                score + 0.05,
            ))  # fmt: skip
        elif overlap < 0.05:
            out.append(run.finding(
                "keys_never_repeat", "cache", f"the cache keys of {fn} never repeat",
                f"{head}; none of the {len(keys):,} keys sampled this run was looked up in run {before.id} "
                f"({_duration(gap)} earlier), with the same code: an argument differs on every run",
                "make the arguments deterministic: no timestamps, random seeds, temporary paths or objects "
                "without a stable encoding in the call; pass changing data as context, or leave the call uncached",
                score + 0.05,
            ))  # fmt: skip
    return out


def _overlap(keys: set[str], old_keys: set[str]) -> float:
    """Share of this run's sampled keys that the earlier run also looked up.

    Both samples are bottom-k sketches (the smallest keys), so only this
    run's keys below the earlier sample's largest can be compared.
    """
    if not keys or not old_keys:
        return 0.0
    ceiling = max(old_keys)
    comparable = [k for k in keys if k <= ceiling]
    return sum(1 for k in comparable if k in old_keys) / len(comparable) if comparable else 0.0


def _short(fps: set[Any]) -> str:
    names = sorted(str(f).rpartition("@")[2][:8] for f in fps if f)
    return ", ".join(names) or "unknown"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
