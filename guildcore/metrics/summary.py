"""A run's record, and the summary of it that stats, history and doctor read.

This module covers ``build_record`` (one JSON-ready dict per run: its
identity, each Guild's part from ``Fold.part`` with its alerts and cache
statistics, process steps) and ``summarize`` (the run-level figures). It
does not cover recording (``fold``) nor storing (``history``).

Record layout (format 1; times in seconds relative to ``started``, a
wall-clock time; memory in bytes)::

    id kind label host pid started ended wall_s finished format
    guilds[]   guild opened closed settings max_agents limit_bytes counts errors
               items agents[] functions{} tasks[] (rows: fold.TASK_FIELDS)
               tasks_dropped queue_wait_s ipc_s series{queue done
               supervisor_memory total_memory} modes[] cache_lookups[]
               alerts[] cache
    steps[]    a process's step timeline (run.add_steps)
    summary    see summarize()

Parallel efficiency is busy agent-seconds over the agent-seconds the pool
could give: the sum over Guilds of ``max_agents`` times the Guild's lifetime.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from guildcore.metrics.fold import TASK_FIELDS
from guildcore.metrics.series import percentile

FORMAT = 1

_F = {name: i for i, name in enumerate(TASK_FIELDS)}


def build_record(
    *,
    run_id: str,
    kind: str,
    label: str,
    started: float,
    wall_s: float,
    host: str,
    pid: int,
    parts: Iterable[tuple[dict[str, Any], Sequence[Mapping[str, Any]], Any]],
    steps: Sequence[Mapping[str, Any]] = (),
    finished: bool = False,
) -> dict[str, Any]:
    guilds = []
    for part, alerts, cache in parts:
        guild = dict(part)
        guild["alerts"] = [dict(a) for a in alerts]
        guild["cache"] = cache
        guilds.append(guild)
    record: dict[str, Any] = {
        "format": FORMAT,
        "id": run_id,
        "kind": kind,
        "label": label,
        "host": host,
        "pid": pid,
        "started": started,
        "ended": started + wall_s,
        "wall_s": wall_s,
        "finished": finished,
        "guilds": guilds,
        "steps": [dict(s) for s in steps],
    }
    record["summary"] = summarize(record)
    return record


def rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every recorded task of a run as a dict of ``TASK_FIELDS``."""
    out = []
    for guild in record.get("guilds", []):
        for row in guild.get("tasks", []):
            out.append(dict(zip(TASK_FIELDS, row, strict=False)))
    return out


def pool_agents(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Agents of the pool (not the caller's own process running inline items)."""
    return [a for g in record.get("guilds", []) for a in g.get("agents", []) if not a.get("inline")]


def cache_totals(record: Mapping[str, Any]) -> dict[str, Any]:
    """Lookups and hits of the run's cached calls, per namespace and per tier."""
    lookups = hits = 0
    namespaces: dict[str, dict[str, Any]] = {}
    for guild in record.get("guilds", []):
        for use in guild.get("cache_lookups", []):
            lookups += use["lookups"]
            hits += use["hits"]
            ns = namespaces.setdefault(use["namespace"], {"lookups": 0, "hits": 0})
            ns["lookups"] += use["lookups"]
            ns["hits"] += use["hits"]
    for ns in namespaces.values():
        ns["hit_rate"] = ns["hits"] / ns["lookups"] if ns["lookups"] else None
    tiers: dict[str, int] = Counter()
    memory_bytes = 0
    for guild in record.get("guilds", []):
        stats = (guild.get("cache") or {}).get("tiers") or {}
        for tier, values in (stats.get("tiers") or {}).items():
            tiers[tier] += int(values.get("hits", 0))
        memory_bytes = max(memory_bytes, int(((stats.get("tiers") or {}).get("l2") or {}).get("bytes", 0)))
    return {
        "lookups": lookups,
        "hits": hits,
        "misses": lookups - hits,
        "hit_rate": hits / lookups if lookups else None,
        "namespaces": namespaces,
        "tier_hits": dict(tiers),
        "memory_bytes": memory_bytes,
    }


def summarize(record: Mapping[str, Any]) -> dict[str, Any]:
    """The run-level figures of a record."""
    guilds = record.get("guilds", [])
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    items = Counter[str]()
    for guild in guilds:
        counts.update(guild.get("counts", {}))
        errors.update(guild.get("errors", {}))
        items.update(guild.get("items", {}))
    agents = pool_agents(record)
    inline = [a for g in guilds for a in g.get("agents", []) if a.get("inline")]
    busy = sum(a.get("busy_s", 0.0) for a in agents)
    capacity = sum(g.get("max_agents", 0) * max(0.0, (g.get("closed") or 0) - (g.get("opened") or 0)) for g in guilds)
    restarts = Counter(a["reason"] for a in agents if a.get("reason") not in (None, "stopped"))
    task_rows = rows(record)
    run_s = [r["run_s"] for r in task_rows if r["measured"] and r["run_s"] is not None and r["agent"] is not None]
    waits = [r["started"] - r["queued"] for r in task_rows if r["started"] is not None and r["queued"] is not None]
    peaks = [a["peak_private_bytes"] for a in agents if a.get("peak_private_bytes") is not None]
    totals = [p[1] for g in guilds for p in g.get("series", {}).get("total_memory", [])]
    wall = max(float(record.get("wall_s") or 0.0), 1e-9)
    done, failed = counts.get("done", 0), counts.get("failed", 0)
    finished_tasks = done + counts.get("inline_batches", 0)
    alerts = Counter(a["kind"] for g in guilds for a in g.get("alerts", []))
    cache = cache_totals(record)
    return {
        "wall_s": round(wall, 6),
        "tasks": {
            "submitted": counts.get("queued", 0),
            "done": done,
            "failed": failed,
            "cancelled": counts.get("cancelled", 0),
            "retried": counts.get("retried", 0),
            "inline_batches": counts.get("inline_batches", 0),
        },
        "items": {"submitted": items.get("submitted", 0), "done": items.get("done", 0)},
        "tasks_per_min": finished_tasks / wall * 60,
        "items_per_s": items.get("done", 0) / wall,
        "agents_started": len(agents),
        "agents_used": sum(1 for a in agents if a.get("tasks")),
        "max_agents": max((g.get("max_agents", 0) for g in guilds), default=0),
        "busy_agent_s": round(busy, 6),
        "inline_s": round(sum(a.get("busy_s", 0.0) for a in inline), 6),
        "parallel_efficiency": busy / capacity if capacity > 0 and agents else None,
        "restarts": dict(restarts),
        "error_rate": failed / (done + failed) if done + failed else 0.0,
        "errors": dict(errors),
        "run_s": {"p50": percentile(run_s, 50), "p95": percentile(run_s, 95), "max": max(run_s, default=None)},
        "queue_wait_s": {"p50": percentile(waits, 50), "p95": percentile(waits, 95)},
        "peak_private_bytes": max(peaks, default=None),
        "peak_total_bytes": max(totals, default=None),
        "cache": cache,
        "alerts": dict(alerts),
        "modes": [m[1] for g in guilds for m in g.get("modes", [])],
        "steps": len(record.get("steps", [])),
    }


__all__ = ["FORMAT", "build_record", "cache_totals", "pool_agents", "rows", "summarize"]
