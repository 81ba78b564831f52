"""The memory monitor inside the state machine, on a fake clock and fake readings: no process at all.

Each test feeds ``MonitorRead`` events (what the loop answers to
``ReadMonitor``) at chosen clock readings, with the agents' frames around
them, and checks what comes out: cache cuts, TRIM and CACHING frames,
tasks given back, agents stopped or not started, mode changes.
"""

from __future__ import annotations

from typing import Any

from test_machine import Pool, make_task, of, sent

from guildcore import codec
from guildcore.codec import Kind
from guildcore.engine.events import (
    Admission,
    AdmissionChanged,
    FrameIn,
    Log,
    ModeChanged,
    MonitorRead,
    ReadMonitor,
    ReleaseMemory,
    Resolve,
    SetCaching,
    ShrinkCaches,
    StartAgent,
    Submitted,
)
from guildcore.engine.monitorrules import FIRST_READING_S
from guildcore.engine.states import AgentState, TaskState
from guildcore.monitor import HOLD_CHECKS, MonitorLimits, Readings

MB = 10**6
LIMITS = MonitorLimits(
    total_system_bytes=1000 * MB,
    cache_size_bytes=100 * MB,
    per_agent_bytes=100 * MB,
    warning=0.80,
    critical=0.95,
    check_interval_s=1.0,
    min_agents=1,
    max_agents=3,
)
HOLD = HOLD_CHECKS * LIMITS.check_interval_s


def reading(used: float = 0.1, *, cpus: int = 4, load_avg: float | None = 0.0, agents: int = 1) -> Readings:
    """``used`` of total_system, on a host with plenty of memory and no load."""
    used_bytes = int(used * LIMITS.total_system_bytes)
    return Readings(
        supervisor_bytes=used_bytes // 4, agent_bytes=used_bytes - used_bytes // 4, agents=agents, cache_bytes=0,
        host_total_bytes=24_000 * MB, host_available_bytes=20_000 * MB, cpus=cpus, load_avg=load_avg,
    )  # fmt: skip


def monitored(limits: MonitorLimits = LIMITS, **changes: Any) -> Pool:
    changes.setdefault("max_agents", limits.max_agents)
    changes.setdefault("min_agents", limits.min_agents)
    return Pool(monitor=limits, **changes)


def answer(p: Pool, r: Readings | None, at: float | None = None) -> list[Any]:
    """The reading the loop took for the last ReadMonitor, fed back."""
    return p.feed(MonitorRead(r), at=at)


def frames(actions: list[Any], kind: Kind) -> list[tuple[int, list[Any]]]:
    out = []
    for a in actions:
        if hasattr(a, "frame"):
            k, _task_id, fields = codec.decode_frame(a.frame)
            if k == kind:
                out.append((a.agent_id, fields))
    return out


def states(p: Pool) -> list[str]:
    return [p.m.agents[i].state.name for i in sorted(p.m.agents)]


# ---------------------------------------------------------------- the clock


def test_a_reading_soon_after_the_pool_starts_then_every_check_interval() -> None:
    p = monitored()
    out = p.feed()
    # The agent starts; the first reading waits FIRST_READING_S: a script's first
    # result does not wait for the monitor, which could not hold back this start anyway.
    assert [type(a) for a in out] == [StartAgent]
    assert p.m.monitor is None  # nor is guildcore.monitor needed yet
    assert p.m.next_deadline() == FIRST_READING_S
    assert not of(p.feed(at=FIRST_READING_S / 2), ReadMonitor)
    assert len(of(p.feed(at=FIRST_READING_S), ReadMonitor)) == 1
    assert p.m.next_deadline() is None  # the reading is out: nothing else is due
    answer(p, reading(), at=FIRST_READING_S)
    first = FIRST_READING_S + LIMITS.check_interval_s
    assert p.m.next_deadline() == first
    assert not of(p.feed(at=first - 0.01), ReadMonitor)
    assert len(of(p.feed(at=first), ReadMonitor)) == 1
    assert not of(p.feed(at=first + 1.5), ReadMonitor)  # one reading at a time
    # The next, due at first + 1.0, is asked at the loop's next turn, not in the one that
    # handled this answer: readings slower than check_interval must not chain without end
    # while no agent's pipe is read (the loop answers ReadMonitor within the same turn).
    assert not of(answer(p, reading(), at=first + 1.5), ReadMonitor)
    assert p.m.next_deadline() == first + 1.0
    assert len(of(p.feed(at=first + 1.5), ReadMonitor)) == 1


def test_the_first_reading_comes_within_one_check_interval_when_that_is_shorter() -> None:
    p = monitored(LIMITS.replace(check_interval_s=0.02))
    assert [type(a) for a in p.feed()] == [StartAgent]
    assert p.m.next_deadline() == 0.02
    assert len(of(p.feed(at=0.02), ReadMonitor)) == 1


def test_without_the_monitor_nothing_is_read() -> None:
    p = Pool()
    p.boot()
    assert not of(p.log, ReadMonitor) and p.m.next_deadline() is None
    assert p.m.snapshot()["mode"] is None and p.m.snapshot()["monitor"] is None


def test_a_reading_counts_ready_agents_above_their_baselines() -> None:
    p = monitored(min_agents=2)
    p.start(p.feed(), ready=False)
    p.feed(FrameIn(1, Kind.READY, 0, [101, 30 * MB]))  # agent 1 forked: 30 MB were the caller's
    answer(p, reading())
    [read] = of(p.feed(at=1.0), ReadMonitor)
    assert read.baselines == {101: 30 * MB}  # agent 2 is still starting: not counted yet


def test_a_failed_reading_is_skipped_and_the_next_comes_on_time() -> None:
    p = monitored()
    p.boot()
    out = answer(p, None)
    assert not of(out, ModeChanged) and p.m.snapshot()["mode"] == "normal"
    assert of(p.feed(at=1.0), ReadMonitor)


# ---------------------------------------------------------------- modes and their actions


def test_warning_cuts_caches_trims_idle_agents_and_stops_idle_ones_above_min() -> None:
    p = monitored()
    p.boot(3)
    busy = make_task()
    p.feed(Submitted([busy]))  # agent 1 runs it
    out = answer(p, reading(0.85))
    [changed] = of(out, ModeChanged)
    assert (changed.transition.previous.value, changed.transition.mode.value, changed.alert) == ("normal", "warning", True)
    assert changed.threshold == LIMITS.warning and changed.pressure == 0.85
    assert [a.keep for a in of(out, ShrinkCaches)] == [0.5] and of(out, ReleaseMemory)
    assert states(p).count("DRAINING") == 2  # down to min_agents; the busy one stays
    # TRIM goes to idle agents that stay; none is left idle here, so none is sent.
    assert frames(out, Kind.TRIM) == []
    assert p.m.snapshot()["mode"] == "warning"


def test_warning_trims_an_idle_agent_that_stays() -> None:
    p = monitored(min_agents=2)
    p.boot(2)
    out = answer(p, reading(0.85))
    assert sorted(agent for agent, _ in frames(out, Kind.TRIM)) == [1, 2]
    assert all(fields == [0.5] for _, fields in frames(out, Kind.TRIM))  # @cached in agents: half
    assert not of(out, SetCaching)  # warning keeps caching on


def test_critical_goes_sequential_and_loses_no_task() -> None:
    p = monitored(max_agents=2, min_agents=2, prefetch=2)
    p.boot(2)
    tasks = [make_task() for _ in range(6)]
    p.feed(Submitted(tasks))
    held_by_2 = [t.id for t in p.m.agents[2].held]
    assert len(held_by_2) == 3
    out = answer(p, reading(0.97))
    [changed] = of(out, ModeChanged)
    assert changed.transition.mode.value == "critical" and changed.threshold == LIMITS.critical
    assert [a.keep for a in of(out, ShrinkCaches)] == [0.0]
    assert [(a.writes, a.budget) for a in of(out, SetCaching)] == [(False, 1.0)]
    assert sorted(agent for agent, _ in frames(out, Kind.CACHING)) == [1, 2]
    # Agent 2 is outside the working set: what it has not begun comes back.
    assert sent(out, Kind.WITHDRAW) == [(2, i) for i in held_by_2[1:]]
    assert p.m.admission.working_agents == 1
    for task_id in held_by_2[1:]:
        p.feed(FrameIn(2, Kind.WITHDRAWN, task_id, []))
    running_on_2 = p.m.agents[2].held[0]
    out = p.result(2, running_on_2, "r")
    assert sent(out, Kind.SHUTDOWN) == [(2, 0)] and p.m.agents[2].state is AgentState.DRAINING
    resolved = []
    while p.m.agents[1].held:  # agent 1 runs everything else, its own and what came back
        resolved += of(p.result(1, p.m.agents[1].held[0], "r"), Resolve)
    assert len(resolved) == 5 and all(t.state is TaskState.DONE for t in tasks)
    assert p.m.counters.failed == 0 and p.m.counters.done == 6


def test_agents_started_in_critical_get_caching_off() -> None:
    p = monitored(max_agents=2, min_agents=1)
    p.boot()
    answer(p, reading(0.97))
    out = p.died(1, exitcode=-9)  # it dies; its replacement starts under critical
    [start] = of(out, StartAgent)
    assert [(agent, fields) for agent, fields in frames(out, Kind.CACHING)] == [(start.agent_id, [False, 1.0])]
    assert out.index(start) < next(i for i, a in enumerate(out) if hasattr(a, "frame"))


def test_back_to_normal_restores_caching_and_parallel_work() -> None:
    p = monitored(max_agents=2, min_agents=1, scale_up_queue_length=1)
    p.boot()
    answer(p, reading(0.97))
    t = 0.0
    for _ in range(int(HOLD) + 1):  # under the warning line minus the margin, held
        t += 1.0
        p.feed(at=t)
        out = answer(p, reading(0.5), at=t)
        if of(out, ModeChanged):
            break
    [changed] = of(out, ModeChanged)
    assert (changed.transition.previous.value, changed.transition.mode.value) == ("critical", "normal")
    assert changed.threshold == LIMITS.warning - 0.10
    assert [(a.writes, a.budget) for a in of(out, SetCaching)] == [(True, 1.0)]
    assert p.m.admission.working_agents is None
    out = p.feed(Submitted([make_task() for _ in range(6)]))
    assert of(out, StartAgent)  # the pool grows again under its queue


def test_alerts_off_still_changes_mode_and_says_so_without_an_alert() -> None:
    p = monitored(LIMITS.replace(alerts=False))
    p.boot()
    [changed] = of(answer(p, reading(0.85)), ModeChanged)
    assert changed.alert is False and changed.transition.mode.value == "warning"


def test_the_timeline_in_stats_keeps_the_readings_behind_each_change() -> None:
    p = monitored()
    p.boot()
    answer(p, reading(0.85))
    p.feed(at=1.0)
    answer(p, reading(0.97), at=1.0)
    snap = p.m.snapshot()
    assert snap["mode"] == "critical"
    timeline = snap["monitor"]["timeline"]
    assert [(e["from"], e["to"]) for e in timeline] == [("normal", "warning"), ("warning", "critical")]
    assert timeline[1]["readings"]["agent_bytes"] == reading(0.97).agent_bytes
    assert snap["monitor"]["caching"] == {"writes": False, "budget": 1.0} and snap["monitor"]["working_agents"] == 1


# ---------------------------------------------------------------- headroom


def test_an_agent_the_reading_did_not_count_is_reserved_at_its_per_agent() -> None:
    p = monitored(max_agents=3, min_agents=1, scale_up_queue_length=1)
    p.boot()
    answer(p, reading(0.75))  # asked while agent 1 was starting: 250 MB left, 100 of them its reserve
    out = p.feed(Submitted([make_task() for _ in range(9)]))
    assert len(of(out, StartAgent)) == 1


def test_no_agent_starts_without_headroom_for_one_per_agent() -> None:
    p = monitored(max_agents=3, min_agents=1, scale_up_queue_length=1)
    p.boot()
    answer(p, reading())  # asked while agent 1 was starting: it is not in it
    p.feed(at=1.0)
    answer(p, reading(0.85), at=1.0)  # 850 MB of 1000, agent 1 counted: 150 MB left
    out = p.feed(Submitted([make_task() for _ in range(9)]))
    assert len(of(out, StartAgent)) == 1  # one per_agent fits in the 150 MB left
    out = p.start(out)
    assert not of(out, StartAgent)  # the next would not: agent 2 is reserved at its per_agent
    assert any("no more agents start" in a.message for a in of(p.log, Log))
    assert p.m.snapshot()["monitor"]["starts_held"].startswith("headroom")


def test_agents_past_the_first_wait_for_the_first_reading() -> None:
    # Nine tasks 10 ms into the pool's life, before FIRST_READING_S: the
    # reading is taken at once, and the agents they call for start only on
    # its answer; here it leaves room for one more.
    p = monitored(max_agents=3, min_agents=1, scale_up_queue_length=1)
    out = p.feed()
    assert [type(a) for a in out] == [StartAgent]  # the pool's first agent: no reading needed
    p.start(out)
    out = p.feed(Submitted([make_task() for _ in range(9)]), at=0.01)
    assert not of(out, StartAgent) and len(of(out, ReadMonitor)) == 1
    out = answer(p, reading(0.85), at=0.01)  # agent 1 counted, 150 MB left: one per_agent fits
    assert len(of(out, StartAgent)) == 1
    out = p.start(out)
    assert not of(out, StartAgent)  # the next would not: agent 2 is reserved at its per_agent


def test_a_failed_first_reading_holds_no_start() -> None:
    p = monitored(max_agents=3, min_agents=1, scale_up_queue_length=1)
    p.start(p.feed())
    p.feed(Submitted([make_task() for _ in range(9)]), at=0.01)
    out = answer(p, None, at=0.01)  # the probe failed: nothing to judge by, nothing held
    assert len(of(out, StartAgent)) == 1
    assert len(of(p.start(out), StartAgent)) == 1  # and the next, as queue pressure asks


def test_the_first_agent_always_starts() -> None:
    p = monitored(min_agents=0, max_agents=2)
    out = p.feed()
    answer(p, reading(0.99))  # no agent alive, no room at all
    out = p.feed(Submitted([make_task()]))
    assert len(of(out, StartAgent)) == 1


# ---------------------------------------------------------------- adaptive and posted admission


def test_adaptive_follows_host_load_with_agents_and_caching() -> None:
    p = monitored(LIMITS.replace(max_agents=4), adaptive=True)
    p.boot(4)
    out = answer(p, reading(load_avg=3.5, cpus=4))  # other processes keep 3.5 of 4 CPUs busy
    assert p.m.admission.working_agents == 1
    assert [(a.writes, a.budget) for a in of(out, SetCaching)] == [(True, 0.5)]
    assert states(p).count("DRAINING") == 3
    p.feed(at=1.0)
    out = answer(p, reading(load_avg=0.0, cpus=4), at=1.0)  # the host is ours again
    assert p.m.admission.working_agents is None
    assert [(a.writes, a.budget) for a in of(out, SetCaching)] == [(True, 1.0)]
    assert p.m.snapshot()["monitor"]["adaptive"]["agents"] == 4


def test_adaptive_is_off_without_the_strategy() -> None:
    p = monitored(LIMITS.replace(max_agents=4))
    p.boot(4)
    out = answer(p, reading(load_avg=3.5, cpus=4))
    assert p.m.admission.working_agents is None and not of(out, SetCaching)


def test_posted_admission_and_the_monitor_combine() -> None:
    p = monitored(max_agents=3, min_agents=1)
    p.boot(3)
    p.feed(AdmissionChanged(Admission(working_agents=2), "from beside the pool"))
    assert p.m.admission.working_agents == 2
    answer(p, reading(0.97))
    assert p.m.admission.working_agents == 1  # the narrower wins
    p.feed(AdmissionChanged(Admission(), "lifted"))
    assert p.m.admission.working_agents == 1  # critical still holds


def test_settings_of_a_machine_without_a_monitor_keep_admission_as_posted() -> None:
    p = Pool(max_agents=2, min_agents=2)
    p.boot()
    p.feed(AdmissionChanged(Admission(working_agents=1), "critical"))
    assert p.m.admission == Admission(working_agents=1)
    assert p.m.settings.replace().monitor is None
