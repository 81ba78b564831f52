"""The monitor's decisions, on fake readings and a fake clock: every transition, hysteresis, no flapping."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import pytest

from guildcore import monitor
from guildcore.config import load_config
from guildcore.monitor import (
    Action,
    CachingLevel,
    Mode,
    Monitor,
    MonitorLimits,
    MonitorState,
    Probe,
    Readings,
    adaptive_plan,
    decide,
    may_start_agent,
)

MB = 10**6
LIMITS = MonitorLimits(
    total_system_bytes=1000 * MB,
    cache_size_bytes=100 * MB,
    per_agent_bytes=100 * MB,
    warning=0.80,
    critical=0.95,
    check_interval_s=1.0,
    min_agents=1,
    max_agents=4,
)
HOLD = monitor.HOLD_CHECKS * LIMITS.check_interval_s
WARNING_ENTRY = (Action.ALERT, Action.EVICT_HALF, Action.TRIM, Action.STOP_IDLE)
CRITICAL_ENTRY = (
    Action.ALERT, Action.EVICT_ALL, Action.TRIM, Action.STOP_IDLE, Action.CACHE_WRITES_OFF, Action.SEQUENTIAL_ON,
)  # fmt: skip


def reading(
    used: float = 0.1,
    *,
    cache: float = 0.0,
    host_available: int = 20_000 * MB,
    host_busy: float | None = 0.0,
    own_busy: float | None = 0.0,
    load_avg: float | None = None,
    cpus: int = 4,
) -> Readings:
    """A reading at ``used`` of total_system (split supervisor 1/4, agents 3/4) and ``cache`` of cache_size."""
    used_bytes = int(used * LIMITS.total_system_bytes)
    return Readings(
        supervisor_bytes=used_bytes // 4,
        agent_bytes=used_bytes - used_bytes // 4,
        agents=3,
        cache_bytes=int(cache * LIMITS.cache_size_bytes),
        host_total_bytes=24_000 * MB,
        host_available_bytes=host_available,
        cpus=cpus,
        host_busy_cpus=host_busy,
        own_busy_cpus=own_busy,
        load_avg=load_avg,
    )


class Run:
    """A Monitor on a fake clock that advances one check interval per reading."""

    def __init__(self, limits: MonitorLimits = LIMITS) -> None:
        self.now = 0.0
        self.monitor = Monitor(limits)
        self.decisions: list[monitor.Decision] = []

    def feed(self, pressures: Iterable[float], **kw: object) -> monitor.Decision:
        decision = None
        for p in pressures:
            self.now += self.monitor.limits.check_interval_s
            decision = self.monitor.observe(reading(p, **kw), self.now)  # type: ignore[arg-type]
            self.decisions.append(decision)
        assert decision is not None
        return decision

    @property
    def modes(self) -> list[Mode]:
        return [d.mode for d in self.decisions]

    @property
    def transitions(self) -> list[tuple[Mode, Mode]]:
        return [(t.previous, t.mode) for t in self.monitor.timeline]


# -- every transition ------------------------------------------------------------------


def test_normal_stays_normal_and_does_nothing() -> None:
    run = Run()
    d = run.feed([0.1, 0.5, 0.79])
    assert d.mode is Mode.NORMAL and d.actions == () and not d.changed
    assert run.transitions == []


def test_normal_to_warning_cleans_up_and_alerts_once() -> None:
    run = Run()
    d = run.feed([0.5, 0.84])
    assert (d.previous, d.mode, d.actions) == (Mode.NORMAL, Mode.WARNING, WARNING_ENTRY)
    assert d.reason == (
        "warning: private memory 840.0 MB (supervisor 210.0 MB + 3 agents 630.0 MB) is 84% of "
        "limits.total_system 1.0 GB, at or above monitoring.warning_threshold 80%"
    )
    d = run.feed([0.85])
    assert d.mode is Mode.WARNING and d.actions == () and not d.changed  # logged once: no second alert


def test_normal_to_critical_directly() -> None:
    d = Run().feed([0.97])
    assert (d.previous, d.mode, d.actions) == (Mode.NORMAL, Mode.CRITICAL, CRITICAL_ENTRY)


def test_warning_to_critical() -> None:
    run = Run()
    run.feed([0.85])
    d = run.feed([0.96])
    assert (d.previous, d.mode, d.actions) == (Mode.WARNING, Mode.CRITICAL, CRITICAL_ENTRY)


def test_warning_to_normal_needs_margin_and_hold() -> None:
    run = Run()
    run.feed([0.85])
    # Under the warning threshold but not under it minus the margin: stays.
    d = run.feed([0.75] * 50)
    assert d.mode is Mode.WARNING
    # Under 0.70: held for the hold time (HOLD_CHECKS readings after the first), then back.
    run.feed([0.6] * monitor.HOLD_CHECKS)
    assert run.monitor.mode is Mode.WARNING
    d = run.feed([0.6])
    assert (d.previous, d.mode, d.actions) == (Mode.WARNING, Mode.NORMAL, (Action.ALERT,))
    assert d.reason.startswith("normal: private memory 600.0 MB") and d.reason.endswith("under 70% for 5 s")


def test_critical_to_warning_restores_caching_and_parallelism() -> None:
    run = Run()
    run.feed([0.97])
    run.feed([0.82] * monitor.HOLD_CHECKS)  # under 0.85 (critical - margin) but not under 0.70
    d = run.feed([0.82])
    assert (d.previous, d.mode) == (Mode.CRITICAL, Mode.WARNING)
    assert d.actions == (Action.ALERT, Action.CACHE_WRITES_ON, Action.SEQUENTIAL_OFF)


def test_critical_to_normal_directly_when_low_enough() -> None:
    run = Run()
    run.feed([0.99])
    d = run.feed([0.2] * (monitor.HOLD_CHECKS + 1))
    assert (d.previous, d.mode) == (Mode.CRITICAL, Mode.NORMAL)
    assert d.actions == (Action.ALERT, Action.CACHE_WRITES_ON, Action.SEQUENTIAL_OFF)
    assert run.transitions == [(Mode.NORMAL, Mode.CRITICAL), (Mode.CRITICAL, Mode.NORMAL)]


def test_critical_steps_down_to_normal_only_if_held_under_the_normal_line() -> None:
    run = Run()
    run.feed([0.99])
    # Under 0.85 all along, under 0.70 only at the end: warning first, not normal.
    d = run.feed([0.8] * monitor.HOLD_CHECKS + [0.3])
    assert (d.previous, d.mode) == (Mode.CRITICAL, Mode.WARNING)


def test_hold_restarts_when_pressure_comes_back() -> None:
    run = Run()
    run.feed([0.85])
    run.feed([0.6] * monitor.HOLD_CHECKS + [0.72] + [0.6] * monitor.HOLD_CHECKS)
    assert run.monitor.mode is Mode.WARNING
    run.feed([0.6])
    assert run.monitor.mode is Mode.NORMAL


def test_cleanup_repeats_while_pressure_stays_high() -> None:
    run = Run()
    run.feed([0.85])
    actions = [run.feed([0.9]).actions for _ in range(2 * monitor.CLEANUP_EVERY_CHECKS)]
    cleanups = [a for a in actions if a]
    assert cleanups == [(Action.EVICT_HALF, Action.TRIM, Action.STOP_IDLE)] * 2  # no ALERT again
    # Between the recovery line and the threshold: nothing more to clean.
    assert all(not run.feed([0.75]).actions for _ in range(2 * monitor.CLEANUP_EVERY_CHECKS))


def test_critical_cleanup_repeats_forced() -> None:
    run = Run()
    run.feed([0.97])
    actions = [run.feed([0.97]).actions for _ in range(monitor.CLEANUP_EVERY_CHECKS)]
    assert actions[-1] == (Action.EVICT_ALL, Action.TRIM, Action.STOP_IDLE)
    assert all(a == () for a in actions[:-1])


def test_alerts_off_changes_mode_without_alert() -> None:
    """``monitoring.alerts: false``: the mode still changes, with its cleanup, but no alert."""
    limits = LIMITS.replace(alerts=MonitorLimits.from_config(load_config({"monitoring": {"alerts": False}}, environ={})).alerts)
    d = Run(limits).feed([0.9])
    assert d.mode is Mode.WARNING and d.actions == WARNING_ENTRY[1:]


def test_cache_pressure_alone_raises_the_mode() -> None:
    d = Run().feed([0.1], cache=0.9)
    assert d.mode is Mode.WARNING
    assert d.reason.startswith("warning: in-process cache 90.0 MB is 90% of limits.cache_size 100.0 MB")


def test_host_pressure_alone_raises_the_mode() -> None:
    d = Run().feed([0.1], host_available=600 * MB)
    assert d.mode is Mode.CRITICAL
    assert d.reason.startswith("critical: the host has 600.0 MB available of 24.0 GB: 98% used")


@pytest.mark.parametrize(
    ("warning", "critical", "p", "mode"),
    [(0.5, 0.6, 0.55, Mode.WARNING), (0.5, 0.6, 0.65, Mode.CRITICAL), (0.9, 0.99, 0.85, Mode.NORMAL)],
)
def test_thresholds_from_config_move_the_transitions(warning: float, critical: float, p: float, mode: Mode) -> None:
    """``monitoring.warning_threshold`` / ``critical_threshold`` decide where the modes begin."""
    config = load_config({"monitoring": {"warning_threshold": warning, "critical_threshold": critical}}, environ={})
    limits = MonitorLimits.from_config(config).replace(
        total_system_bytes=LIMITS.total_system_bytes,
        cache_size_bytes=LIMITS.cache_size_bytes,
    )
    assert decide(reading(p), MonitorState(), 1.0, limits).mode is mode


def test_limits_from_config_read_every_monitor_setting() -> None:
    config = load_config(
        {"limits": {"total_system": "2GB", "cache_size": "300MB", "per_agent": "50MB"},
         "monitoring": {"check_interval": "250ms", "alerts": False}, "pool": {"min_agents": 0, "max_agents": 3}},
        environ={},
    )  # fmt: skip
    limits = MonitorLimits.from_config(config)
    assert (limits.total_system_bytes, limits.cache_size_bytes, limits.per_agent_bytes) == (2 * 10**9, 300 * MB, 50 * MB)
    assert (limits.check_interval_s, limits.alerts, limits.min_agents, limits.max_agents) == (0.25, False, 0, 3)
    assert limits.base_hold_s == monitor.HOLD_CHECKS * 0.25


@pytest.mark.parametrize(("total", "mode"), [("2000MB", Mode.NORMAL), ("1000MB", Mode.WARNING), ("880MB", Mode.CRITICAL)])
def test_total_system_sets_the_scale(total: str, mode: Mode) -> None:
    """``limits.total_system``: the same 850 MB is normal, warning or critical depending on it."""
    limits = MonitorLimits.from_config(load_config({"limits": {"total_system": total}}, environ={})).replace(
        cache_size_bytes=LIMITS.cache_size_bytes,
    )
    r = reading(0.1).replace(supervisor_bytes=250 * MB, agent_bytes=600 * MB)
    assert decide(r, MonitorState(), 1.0, limits).mode is mode


@pytest.mark.parametrize(("size", "mode"), [("1GB", Mode.NORMAL), ("100MB", Mode.WARNING), ("80MB", Mode.CRITICAL)])
def test_cache_size_sets_the_cache_scale(size: str, mode: Mode) -> None:
    """``limits.cache_size``: 85 MB of in-process cache against it."""
    limits = MonitorLimits.from_config(load_config({"limits": {"cache_size": size}}, environ={})).replace(
        total_system_bytes=10**12,
    )
    r = reading(0.0).replace(cache_bytes=85 * MB, host_available_bytes=24_000 * MB)
    assert decide(r, MonitorState(), 1.0, limits).mode is mode


def test_check_interval_scales_the_hold() -> None:
    """``monitoring.check_interval``: the hold before a step down is HOLD_CHECKS intervals of it."""
    for interval in (0.1, 2.0):
        limits = LIMITS.replace(check_interval_s=interval)
        state = decide(reading(0.9), MonitorState(), 0.0, limits).state
        t = 0.0
        while state.mode is Mode.WARNING:
            t += interval
            state = decide(reading(0.1), state, t, limits).state
        assert math.isclose(t, (monitor.HOLD_CHECKS + 1) * interval)


# -- no flapping ------------------------------------------------------------------------


def test_oscillation_around_the_warning_threshold_changes_the_mode_once() -> None:
    run = Run()
    run.feed([0.79, 0.81] * 500)
    assert run.transitions == [(Mode.NORMAL, Mode.WARNING)]


def test_oscillation_around_the_recovery_line_does_not_flap() -> None:
    run = Run()
    run.feed([0.85] + [0.69, 0.71] * 500)
    assert run.transitions == [(Mode.NORMAL, Mode.WARNING)]


def test_wide_fast_oscillation_does_not_flap() -> None:
    run = Run()
    run.feed([0.3, 0.97] * 500)
    assert run.transitions == [(Mode.NORMAL, Mode.CRITICAL)]


@pytest.mark.parametrize("low_checks", [6, 12, 25, 45])
def test_slow_oscillation_settles_by_doubling_the_hold(low_checks: int) -> None:
    """A spike every ``low_checks + 1`` readings: steps down and relapses a few times, then stays up."""
    run = Run()
    run.feed(([0.9] + [0.3] * low_checks) * 300)
    n = len(run.transitions)
    assert n <= 2 * (int(math.log2(monitor.MAX_HOLD_FACTOR)) + 1) + 1
    late = [t for t in run.monitor.timeline if t.at > run.now / 2]
    assert late == []  # settled: the second half has no mode change at all


def test_genuine_changes_are_followed() -> None:
    """Long periods high, then long periods low: the mode tracks each one."""
    run = Run()
    for _ in range(3):
        run.feed([0.9] * 100 + [0.3] * 100)
    assert run.transitions == [(Mode.NORMAL, Mode.WARNING), (Mode.WARNING, Mode.NORMAL)] * 3


def test_hold_decays_after_a_long_calm() -> None:
    run = Run()
    run.feed([0.9] + [0.3] * 6 + [0.9])  # relapse: hold doubled
    doubled = run.monitor.state.hold_s
    assert doubled == 2 * HOLD
    run.feed([0.3] * 200 + [0.9])  # long calm before this escalation: halved back
    assert run.monitor.state.hold_s == HOLD


# -- the headroom rule ------------------------------------------------------------------


def test_no_start_without_headroom_for_one_agent() -> None:
    assert may_start_agent(reading(0.85), LIMITS, alive=2) == (True, "headroom 150.0 MB")
    assert may_start_agent(reading(0.95), LIMITS, alive=2) == (
        False, "headroom 50.0 MB under limits.total_system is less than one agent's limits.per_agent 100.0 MB",
    )  # fmt: skip


def test_headroom_counts_agents_started_since_the_reading() -> None:
    assert may_start_agent(reading(0.7), LIMITS, alive=3, started_since=2) == (True, "headroom 100.0 MB")
    assert may_start_agent(reading(0.7), LIMITS, alive=4, started_since=3) == (
        False, "headroom 0 B under limits.total_system is less than one agent's limits.per_agent 100.0 MB",
    )  # fmt: skip


def test_headroom_of_the_host() -> None:
    ok, why = may_start_agent(reading(0.1, host_available=80 * MB), LIMITS, alive=1)
    assert (ok, why) == (False, "headroom 80.0 MB of the host's available memory is less than one agent's limits.per_agent 100.0 MB")


def test_first_agent_always_starts() -> None:
    assert may_start_agent(reading(1.5), LIMITS, alive=0) == (
        True, "no agent is alive: one always starts, so that queued work runs",
    )  # fmt: skip
    assert may_start_agent(None, LIMITS, alive=3)[0]


@pytest.mark.parametrize(("per_agent", "allowed"), [("50MB", True), ("200MB", False)])
def test_per_agent_is_the_unit_of_headroom(per_agent: str, allowed: bool) -> None:
    limits = MonitorLimits.from_config(load_config({"limits": {"per_agent": per_agent}}, environ={})).replace(
        total_system_bytes=LIMITS.total_system_bytes,
    )
    assert may_start_agent(reading(0.85), limits, alive=1)[0] is allowed  # 150 MB of headroom


# -- adaptive ---------------------------------------------------------------------------


def test_adaptive_idle_host_uses_every_agent_and_caches_aggressively() -> None:
    plan = adaptive_plan(reading(host_busy=0.3, own_busy=0.2), Mode.NORMAL, LIMITS)
    assert (plan.agents, plan.caching) == (4, CachingLevel.AGGRESSIVE)
    assert plan.reason == "host load from other processes 0.1 of 4 CPUs: up to 4 agents, caching aggressive"


def test_adaptive_busy_host_uses_the_cpus_left() -> None:
    plan = adaptive_plan(reading(host_busy=3.5, own_busy=1.0), Mode.NORMAL, LIMITS)  # 2.5 CPUs used by others
    assert (plan.agents, plan.caching) == (2, CachingLevel.CONSERVATIVE)
    plan = adaptive_plan(reading(host_busy=4.0, own_busy=0.0), Mode.NORMAL, LIMITS)
    assert (plan.agents, plan.caching) == (1, CachingLevel.CONSERVATIVE)


def test_adaptive_our_own_load_does_not_count() -> None:
    plan = adaptive_plan(reading(host_busy=4.0, own_busy=3.9), Mode.NORMAL, LIMITS)
    assert (plan.agents, plan.caching) == (4, CachingLevel.AGGRESSIVE)


def test_adaptive_first_reading_uses_the_load_average() -> None:
    r = reading(host_busy=None, own_busy=None, load_avg=3.0)
    assert adaptive_plan(r, Mode.NORMAL, LIMITS, running=0).agents == 1
    assert adaptive_plan(r, Mode.NORMAL, LIMITS, running=3).agents == 4  # the load is ours
    assert adaptive_plan(reading(host_busy=None, own_busy=None), Mode.NORMAL, LIMITS).agents == 4


def test_adaptive_run_queue_caps_agents() -> None:
    plan = adaptive_plan(reading(), Mode.NORMAL, LIMITS, queued=1, running=1)
    assert plan.agents == 2 and plan.reason.endswith("; 2 tasks to run: 2 agents")
    assert adaptive_plan(reading(), Mode.NORMAL, LIMITS, queued=0).agents == 1


def test_adaptive_low_memory_goes_sequential_without_caching() -> None:
    plan = adaptive_plan(reading(), Mode.CRITICAL, LIMITS)
    assert (plan.agents, plan.caching) == (1, CachingLevel.OFF)
    plan = adaptive_plan(reading(host_available=50 * MB), Mode.NORMAL, LIMITS)
    assert (plan.agents, plan.caching) == (1, CachingLevel.OFF)
    assert plan.reason == (
        "memory low (the host has 50.0 MB available, less than one agent's limits.per_agent 100.0 MB): "
        "one agent, caching off"
    )


def test_adaptive_warning_mode_caches_conservatively() -> None:
    plan = adaptive_plan(reading(), Mode.WARNING, LIMITS)
    assert (plan.agents, plan.caching) == (4, CachingLevel.CONSERVATIVE)


def test_adaptive_keeps_min_agents_as_floor() -> None:
    limits = LIMITS.replace(min_agents=3)
    assert adaptive_plan(reading(host_busy=4.0), Mode.NORMAL, limits).agents == 3
    assert adaptive_plan(reading(host_busy=4.0), Mode.CRITICAL, limits).agents == 1


# -- the timeline and the probe ---------------------------------------------------------


def test_timeline_keeps_each_change_with_its_readings() -> None:
    run = Run()
    run.feed([0.5, 0.9, 0.97])
    snap = run.monitor.snapshot()
    assert snap["mode"] == "critical" and snap["since"] == 3.0
    assert [(t["from"], t["to"], t["at"]) for t in snap["timeline"]] == [("normal", "warning", 2.0), ("warning", "critical", 3.0)]
    assert snap["timeline"][1]["readings"]["agent_bytes"] == reading(0.97).agent_bytes
    assert snap["readings"] == reading(0.97).to_dict()


def test_probe_reads_through_its_seams() -> None:
    seen: list[int] = []

    def private(pid: int) -> int | None:
        seen.append(pid)
        return None if pid == 999_999 else 10 * MB

    probe = Probe(private, cache_bytes=lambda: 3 * MB, pid=os.getpid())
    r = probe.read([os.getpid(), 999_999], now=1.0)
    assert (r.supervisor_bytes, r.agent_bytes, r.agents, r.cache_bytes) == (10 * MB, 10 * MB, 1, 3 * MB)
    assert r.host_total_bytes > r.host_available_bytes > 0 and r.cpus >= 1
    assert r.host_busy_cpus is None and r.own_busy_cpus is None  # no interval yet
    sum(i * i for i in range(200_000))  # some CPU of our own
    r = probe.read([], now=2.0)
    assert r.host_busy_cpus is not None and r.own_busy_cpus is not None and r.own_busy_cpus >= 0
    assert 999_999 in seen


def test_probe_default_reader_reads_private_memory() -> None:
    from guildcore.engine import limits

    r = Probe(limits.read_private_bytes).read([], now=0.0)
    assert r.supervisor_bytes > MB


def test_release_memory_gives_freed_heap_back() -> None:
    """Freed blocks under a live one stay in malloc's free lists until malloc_trim."""
    from guildcore.engine import limits

    blocks = [bytearray(2000) for _ in range(60_000)]  # 120 MB of malloc'd blocks
    pin = bytearray(2000)  # above them on the heap: the heap cannot shrink from its top
    del blocks
    freed = limits.read_private_bytes(os.getpid())
    monitor.release_memory()
    after = limits.read_private_bytes(os.getpid())
    assert freed is not None and after is not None
    assert freed - after > 80 * MB
    del pin
