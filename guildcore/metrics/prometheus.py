"""The run history in the Prometheus text exposition format.

This module covers ``exposition(summaries)``: one gauge family per figure
of a run summary, one sample per run (labels ``run``, ``kind``,
``label``), written by ``prometheus_client``'s own formatter so names,
escaping and ``# HELP``/``# TYPE`` lines are exactly what Prometheus
parses. It does not read the history (``history``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["exposition"]

_LABELS = ["run", "kind", "label"]

# (metric name, help, value of a summary)
_GAUGES: tuple[tuple[str, str, Callable[[Mapping[str, Any]], Any]], ...] = (
    ("guild_run_started_timestamp_seconds", "When the run started (Unix time).", lambda s: s.get("started")),
    ("guild_run_wall_seconds", "Wall time of the run.", lambda s: s.get("wall_s")),
    ("guild_run_tasks_per_minute", "Tasks finished per minute of wall time.", lambda s: s.get("tasks_per_min")),
    ("guild_run_items_per_second", "Items finished per second of wall time.", lambda s: s.get("items_per_s")),
    ("guild_run_agents_used", "Agents that ran at least one task.", lambda s: s.get("agents_used")),
    ("guild_run_max_agents", "pool.max_agents of the run.", lambda s: s.get("max_agents")),
    ("guild_run_parallel_efficiency_ratio", "Busy agent-seconds over max_agents x wall time.",
     lambda s: s.get("parallel_efficiency")),
    ("guild_run_peak_private_bytes", "Highest private memory of one agent.", lambda s: s.get("peak_private_bytes")),
    ("guild_run_peak_total_bytes", "Highest private memory of supervisor and agents together.",
     lambda s: s.get("peak_total_bytes")),
    ("guild_run_error_ratio", "Failed tasks over finished tasks.", lambda s: s.get("error_rate")),
    ("guild_run_cache_lookups", "Result-cache lookups.", lambda s: (s.get("cache") or {}).get("lookups")),
    ("guild_run_cache_hit_ratio", "Result-cache hits over lookups.", lambda s: (s.get("cache") or {}).get("hit_rate")),
    ("guild_run_agent_restarts", "Agents that died during the run.", lambda s: sum((s.get("restarts") or {}).values())),
)  # fmt: skip


def exposition(summaries: Sequence[Mapping[str, Any]]) -> bytes:
    """The text exposition of ``summaries`` (newest first, as ``History.runs`` gives)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _History(Collector):
        def collect(self) -> Iterator[Any]:
            yield _count_family(GaugeMetricFamily, summaries)
            for name, text, value in _GAUGES:
                family = GaugeMetricFamily(name, text, labels=_LABELS)
                for s in summaries:
                    v = value(s)
                    if v is not None:
                        family.add_metric(_labels(s), float(v))
                yield family
            tasks = GaugeMetricFamily("guild_run_tasks", "Tasks of the run by outcome.", labels=[*_LABELS, "outcome"])
            alerts = GaugeMetricFamily("guild_run_alerts", "Alerts raised, by kind.", labels=[*_LABELS, "kind_of_alert"])
            for s in summaries:
                for outcome, n in (s.get("tasks") or {}).items():
                    tasks.add_metric([*_labels(s), outcome], float(n))
                for kind, n in (s.get("alerts") or {}).items():
                    alerts.add_metric([*_labels(s), kind], float(n))
            yield tasks
            yield alerts

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_History())
    return bytes(generate_latest(registry))


def _labels(summary: Mapping[str, Any]) -> list[str]:
    return [str(summary.get("id", "")), str(summary.get("kind", "")), str(summary.get("label", ""))]


def _count_family(family: Any, summaries: Sequence[Mapping[str, Any]]) -> Any:
    return family("guild_runs_recorded", "Runs in the history that this exposition covers.", value=len(summaries))
