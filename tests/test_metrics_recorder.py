"""The run recorder without processes: events in, with a fake clock; aggregates, live view and alerts out."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from guildcore.metrics.alerts import LOW_HIT_MIN_LOOKUPS, SLOW_FACTOR, SLOW_MIN_SAMPLES, Alert
from guildcore.metrics.fold import TASK_DETAIL_CAP, RecorderSettings
from guildcore.metrics.recorder import TICK_S, RunRecorder, error_name, exit_reason
from guildcore.metrics.series import Reservoir, Series, percentile
from guildcore.metrics.summary import build_record, rows

MB = 10**6
T0 = 1000.0


def _recorder(**kw: Any) -> tuple[RunRecorder, list[Alert]]:
    got: list[Alert] = []
    settings = RecorderSettings(max_agents=2, limit_bytes=100 * MB, warning_threshold=0.8, **kw)
    return RunRecorder(settings, t0=T0, on_alert=got.append), got


def _pool(*agents: dict[str, Any], queued: int = 0) -> dict[str, Any]:
    return {"agents": list(agents), "queued": queued, "inline": False}


def _agent(agent_id: int, state: str = "IDLE", held: list[int] | None = None, private: int | None = None) -> dict[str, Any]:
    return {"id": agent_id, "pid": 100 + agent_id, "state": state, "held": held or [], "tasks_done": 0,
            "private_bytes": private, "peak_private_bytes": private}  # fmt: skip


def _run_task(rec: RunRecorder, task_id: int, agent_id: int, t: float, run_s: float, *, fn: str = "m:f", n: int = 1) -> float:
    """Queue, send, run and finish one task from ``t``; returns when it finished."""
    rec.task_queued(task_id, fn, n, t)
    rec.task_sent(task_id, agent_id, t + 0.001)
    rec.task_ran(task_id, agent_id, [run_s, run_s * 0.9, t + 0.002], t + 0.002 + run_s + 0.0005)
    end = t + 0.002 + run_s + 0.001
    rec.task_finished(task_id, "done", None, end)
    return end


def test_reports_only_append_until_a_drain() -> None:
    rec, _ = _recorder()
    rec.agent_started(1, 101, T0)
    rec.task_queued(1, "m:f", 3, T0)
    assert len(rec._events) == 2 and rec.fold.counts["queued"] == 0  # nothing folded on the hot path
    rec.drain()
    assert rec._events == [] and rec.fold.counts["queued"] == 1 and rec.fold.items_submitted == 3


def test_a_task_record_has_queue_wait_run_cpu_ipc_and_peak_memory() -> None:
    rec, _ = _recorder()
    rec.agent_started(1, 101, T0)
    rec.agent_ready(1, T0 + 0.1)
    rec.task_queued(7, "m:f", 4, T0 + 0.2)
    rec.task_sent(7, 1, T0 + 0.5)
    rec.memory_sample(1, 30 * MB, T0 + 0.6)
    rec.memory_sample(1, 42 * MB, T0 + 0.7)
    rec.task_ran(7, 1, [0.3, 0.25, T0 + 0.51], T0 + 0.82)
    rec.task_finished(7, "done", None, T0 + 0.83)
    rec.drain()
    (row,) = rows({"guilds": [rec.fold.part(T0 + 1)]})
    assert row["queued"] == pytest.approx(0.2) and row["started"] == pytest.approx(0.51)
    assert row["run_s"] == pytest.approx(0.3) and row["cpu_s"] == pytest.approx(0.25)
    assert row["peak_private"] == 42 * MB and row["measured"] and row["agent"] == "1"
    assert rec.fold.queue_wait.summary()["max"] == pytest.approx(0.31)  # queued at 0.2, began at 0.51
    assert rec.fold.ipc.summary()["max"] == pytest.approx(0.83 - 0.81)  # run ended at 0.81, result at 0.83
    agent = rec.fold.agents[1]
    assert agent.busy_s == pytest.approx(0.3) and agent.tasks == 1 and agent.items == 4
    assert rec.fold.busy_fraction(agent, T0 + 1.1) == pytest.approx(0.3 / 1.0)


def test_a_task_without_stats_is_timed_from_the_supervisor_and_failures_keep_their_type() -> None:
    rec, _ = _recorder()
    rec.agent_started(1, 101, T0)
    rec.task_queued(1, "m:f", 1, T0)
    rec.task_sent(1, 1, T0 + 0.1)
    rec.task_retried(1, "AgentDied", T0 + 0.4)
    rec.task_sent(1, 1, T0 + 0.5)
    rec.task_finished(1, "failed", "AgentDied", T0 + 0.9)
    rec.drain()
    (row,) = rows({"guilds": [rec.fold.part(T0 + 1)]})
    assert (row["outcome"], row["error"], row["retries"], row["sends"]) == ("failed", "AgentDied", 1, 2)
    assert row["started"] == pytest.approx(0.5) and row["run_s"] == pytest.approx(0.4) and not row["measured"]
    assert rec.fold.errors == {"AgentDied": 1}


def test_queue_depth_follows_the_task_events() -> None:
    rec, _ = _recorder()
    for i in range(3):
        rec.task_queued(i, "m:f", 1, T0 + i)
    rec.task_sent(0, 1, T0 + 3)
    rec.task_finished(2, "cancelled", None, T0 + 4)  # cancelled while queued
    rec.task_retried(0, "TaskTimeout", T0 + 5)
    rec.drain()
    assert [p[1] for p in rec.fold.queue.points] == [1, 2, 3, 2, 1, 2]
    assert rec.fold.depth == 2


def test_inline_batches_count_as_work_of_the_caller() -> None:
    rec, _ = _recorder()
    rec.inline_batch("m:tiny", 1000, T0 + 1, T0 + 1.01)
    rec.drain()
    part = rec.fold.part(T0 + 2)
    (agent,) = part["agents"]
    assert agent["inline"] and agent["key"] == "inline" and agent["items"] == 1000
    assert part["items"] == {"submitted": 1000, "done": 1000}
    assert part["functions"]["m:tiny"]["item_s"]["p50"] == pytest.approx(1e-5)


def test_cache_lookups_keep_the_smallest_keys_in_any_order() -> None:
    keys = [bytes([i]) * 16 for i in range(200)]
    a, _ = _recorder()
    b, _ = _recorder()
    a.cache_lookup("m:f", "m:f@1", "result", keys, 10, T0)
    b.cache_lookup("m:f", "m:f@1", "result", [*reversed(keys), None], 0, T0)
    a.drain()
    b.drain()
    (use_a,) = a.fold.part(T0)["cache_lookups"]
    (use_b,) = b.fold.part(T0)["cache_lookups"]
    assert use_a["keys"] == use_b["keys"] and len(use_a["keys"]) == 64
    assert (use_a["lookups"], use_a["hits"], use_b["lookups"]) == (200, 10, 201)


def test_tick_publishes_a_live_view_and_schedules_the_next() -> None:
    published: list[dict[str, Any]] = []
    settings = RecorderSettings(max_agents=2, limit_bytes=100 * MB)
    rec = RunRecorder(settings, t0=T0, publish=lambda r, live: published.append(live))
    assert rec.next_tick == T0 + TICK_S
    rec.agent_started(1, 101, T0)
    rec.agent_ready(1, T0)
    rec.task_queued(5, "m:slow", 1, T0 + 0.1)
    rec.task_sent(5, 1, T0 + 0.2)
    rec.mode_changed("warning", "memory at 85% of limits.total_system", T0 + 0.3)
    rec.tick(T0 + 0.5, lambda: _pool(_agent(1, "BUSY", [5], 50 * MB), queued=4))
    (live,) = published
    assert rec.next_tick == T0 + 0.5 + TICK_S
    assert live["mode"] == "warning" and live["queued"] == 4
    (agent,) = live["agents"]
    assert agent["task"] == {"id": 5, "fn": "m:slow", "running_s": 0.3}
    assert agent["busy_fraction"] == pytest.approx(0.3 / 0.5)
    assert rec.live is live


def test_tick_survives_a_broken_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    rec, _ = _recorder()

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    rec.tick(T0 + 1, broken)
    assert "recording metrics failed" in caplog.text and rec.next_tick == T0 + 1 + TICK_S


def test_mode_changes_reach_the_record() -> None:
    rec, _ = _recorder()
    rec.mode_changed("critical", "over 95%", T0 + 2)
    rec.mode_changed("normal", "back under 80%", T0 + 3)
    rec.drain()
    assert rec.fold.part(T0 + 4)["modes"] == [[2.0, "critical", "over 95%"], [3.0, "normal", "back under 80%"]]


# ---------------------------------------------------------------- alerts


def _warm(rec: RunRecorder, n: int = SLOW_MIN_SAMPLES, run_s: float = 0.5) -> float:
    t = T0
    rec.agent_started(1, 101, T0)
    for i in range(n):
        t = _run_task(rec, 1000 + i, 1, t, run_s)
    return t


def test_a_slow_task_alerts_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    rec, got = _recorder()
    t = _warm(rec)
    t = _run_task(rec, 1, 1, t, 0.5 * SLOW_FACTOR * 2)  # twice over k x p95
    t = _run_task(rec, 2, 1, t, 0.5 * SLOW_FACTOR * 2)  # the same episode
    with caplog.at_level(logging.WARNING, logger="guildcore.alerts"):
        rec.tick(t, lambda: _pool(_agent(1)))
    assert [a.kind for a in got] == ["slow_task"] and got[0].task_id == 1 and got[0].fn == "m:f"
    assert "6.0x the p95 of m:f" in got[0].message and "limits.timeout" in got[0].message
    assert rec.rules.raised[0]["count"] == 2
    assert caplog.text.count("the p95 of m:f") == 1  # logged once


def test_tiny_tasks_are_never_slow() -> None:
    rec, got = _recorder()
    t = _warm(rec, run_s=0.0001)
    t = _run_task(rec, 1, 1, t, 0.001)  # 10x the p95, but a millisecond
    rec.tick(t, lambda: _pool(_agent(1)))
    assert got == []


def test_a_task_done_within_a_second_is_never_slow() -> None:
    # The refactor's biggest file: 3x the p95 of the others, in 0.16 s.
    rec, got = _recorder()
    t = _warm(rec, run_s=0.05)
    t = _run_task(rec, 1, 1, t, 0.9)  # 18x the p95
    rec.task_queued(2, "m:f", 1, t)
    rec.task_sent(2, 1, t)
    rec.tick(t + 0.9, lambda: _pool(_agent(1, "BUSY", [2])))  # running 18x the p95 so far
    assert got == []


def test_a_running_task_past_k_times_p95_alerts_before_it_ends() -> None:
    rec, got = _recorder()
    t = _warm(rec)
    rec.task_queued(9, "m:f", 1, t)
    rec.task_sent(9, 1, t)
    rec.tick(t + 2.0, lambda: _pool(_agent(1, "BUSY", [9])))
    assert [(a.kind, a.task_id) for a in got] == [("slow_task", 9)] and "has been running" in got[0].message


def test_high_memory_opens_closes_and_reopens() -> None:
    rec, got = _recorder()
    rec.tick(T0 + 0.5, lambda: _pool(_agent(1, private=85 * MB)))
    rec.tick(T0 + 1.0, lambda: _pool(_agent(1, private=90 * MB)))  # same episode
    rec.tick(T0 + 1.5, lambda: _pool(_agent(1, private=50 * MB)))  # below threshold - margin: ends
    rec.tick(T0 + 2.0, lambda: _pool(_agent(1, private=81 * MB)))  # a new episode
    assert [a.kind for a in got] == ["high_memory", "high_memory"]
    assert "85.0 MB of private memory, over 80% of its 100.0 MB limit" in got[0].message
    assert rec.rules.raised[0]["ended"] is not None and rec.rules.raised[1]["ended"] is None


def test_low_hit_rate_needs_enough_lookups() -> None:
    rec, got = _recorder()
    rec.cache_lookup("m:f", "fp", "result", [b"k" * 16] * 500, 0, T0)  # the cold fill: left out
    rec.cache_lookup("m:f", "fp", "result", [b"k" * 16] * (LOW_HIT_MIN_LOOKUPS - 1), 1, T0 + 0.1)
    rec.tick(T0 + 0.5, lambda: _pool())
    assert got == []
    rec.cache_lookup("m:f", "fp", "result", [b"k" * 16] * 10, 4, T0 + 0.6)
    rec.tick(T0 + 1.0, lambda: _pool())
    assert [a.kind for a in got] == ["low_hit_rate"] and got[0].namespace == "result"
    assert "answered 5 of 109 lookups (5%)" in got[0].message


def test_a_cold_fill_then_a_warm_rerun_raises_no_alert() -> None:
    rec, got = _recorder()
    rec.cache_lookup("m:f", "fp", "result", [b"k" * 16] * 500, 0, T0)
    rec.cache_lookup("m:f", "fp", "result", [b"k" * 16] * 500, 500, T0 + 0.1)
    rec.tick(T0 + 0.5, lambda: _pool())
    assert got == []


def test_agent_deaths_close_together_are_one_episode() -> None:
    rec, got = _recorder()
    for agent_id in (1, 2, 3):
        rec.agent_started(agent_id, 100 + agent_id, T0)
    rec.agent_exited(1, "signal SIGKILL (-9)", T0 + 1)
    rec.agent_exited(2, "memory limit (killed)", T0 + 2)
    rec.agent_exited(3, "stopped", T0 + 2.5)  # asked to stop: no failure
    rec.tick(T0 + 3, lambda: _pool())
    assert [a.kind for a in got] == ["agent_failed"] and "signal SIGKILL" in got[0].message
    assert rec.rules.raised[0]["count"] == 2


def test_on_alert_that_raises_is_logged_and_recording_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def explode(alert: Alert) -> None:
        raise ValueError("callback bug")

    settings = RecorderSettings(max_agents=1, limit_bytes=10 * MB, log_alerts=False)
    rec = RunRecorder(settings, t0=T0, on_alert=explode)
    rec.tick(T0 + 0.5, lambda: _pool(_agent(1, private=9 * MB)))
    assert "on_alert callback failed" in caplog.text and len(rec.rules.raised) == 1
    assert "guildcore.alerts" not in [r.name for r in caplog.records]  # monitoring.alerts: false


def test_alerts_raised_elsewhere_are_delivered_the_same_way() -> None:
    rec, got = _recorder()
    alert = Alert("mode", "critical: caching off, one agent", 1.0)
    rec.alert(alert)
    assert got == [alert] and rec.rules.raised[0]["kind"] == "mode"


# ---------------------------------------------------------------- record, bounds, helpers


def test_a_record_summarizes_every_guild() -> None:
    rec1, _ = _recorder()
    rec2 = RunRecorder(RecorderSettings(max_agents=2), t0=T0, opened=T0 + 2, guild_no=2)
    for rec in (rec1, rec2):
        rec.agent_started(1, 1, T0)
        _run_task(rec, 1, 1, T0 + 2, 0.5)
        rec.close(T0 + 3)
    record = build_record(run_id="r", kind="demo", label="x", started=5000.0, wall_s=3.0, host="h", pid=1,
                          parts=[(r.fold.part(T0 + 3), r.rules.raised, None) for r in (rec1, rec2)])  # fmt: skip
    s = record["summary"]
    assert s["tasks"]["done"] == 2 and s["agents_used"] == 2
    assert [a["key"] for g in record["guilds"] for a in g["agents"]] == ["1", "2.1"]
    # busy 1.0 agent-s over 2 agents x (3 s + 1 s of Guild lifetimes)
    assert s["parallel_efficiency"] == pytest.approx(1.0 / 8.0)


def test_task_rows_are_capped_and_aggregates_go_on() -> None:
    rec, _ = _recorder()
    rec.agent_started(1, 1, T0)
    for i in range(TASK_DETAIL_CAP + 5):
        rec.task_queued(i, "m:f", 1, T0)
        rec.task_finished(i, "done", None, T0)
    rec.drain()
    assert len(rec.fold.rows) == TASK_DETAIL_CAP and rec.fold.dropped == 5
    assert rec.fold.counts["done"] == TASK_DETAIL_CAP + 5


def test_series_and_reservoirs_stay_bounded_and_keep_peaks() -> None:
    series = Series(cap=100)
    for i in range(10_000):
        series.add(float(i), 5.0 if i != 7777 else 99.0)
    assert len(series) <= 100 and max(p[1] for p in series.points) == 99.0
    res = Reservoir(cap=64)
    for i in range(10_000):
        res.add(float(i))
    assert len(res.values) <= 64 and res.count == 10_000 and res.high == 9999.0
    assert 9000 <= (res.percentile(95) or 0) <= 9999
    assert percentile([3, 1, 2], 50) == 2 and percentile([], 50) is None


def test_exit_reasons_and_error_names() -> None:
    from concurrent.futures import Future

    assert exit_reason(True, False, None, 0) == "stopped"
    assert exit_reason(False, False, ("memory", 1), -9) == "memory limit (killed)"
    assert exit_reason(False, True, None, 3) == "died before ready: exit code 3"
    assert exit_reason(False, False, None, -9) == "signal SIGKILL (-9)"
    fut: Future[int] = Future()
    fut.set_exception(KeyError("x"))
    assert error_name(fut) == "KeyError"
    cancelled: Future[int] = Future()
    cancelled.cancel()
    assert error_name(cancelled) is None
