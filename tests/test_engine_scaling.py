"""Scaling and dispatch: pure decisions with a fake clock, then for real."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import faults
import pytest

from guildcore import Guild
from guildcore.engine import dispatch, scaling

pytestmark = pytest.mark.timeout(60)


def _view(queued: int, agents: list[scaling.AgentView], lo: int = 1, hi: int = 4) -> scaling.PoolView:
    return scaling.PoolView(
        queued=queued, agents=agents, min_agents=lo, max_agents=hi, scale_up_queue_length=3, idle_timeout_s=60.0
    )


def test_scaling_starts_min_agents_then_one_at_a_time() -> None:
    assert scaling.decide(_view(0, [], lo=2), now=0).start == 2
    busy = [scaling.AgentView(1, False, None)]
    assert scaling.decide(_view(3, busy), now=0).start == 0  # not longer than the trigger
    assert scaling.decide(_view(4, busy), now=0).start == 1
    starting = [*busy, scaling.AgentView(2, True, None)]
    assert scaling.decide(_view(10, starting), now=0).start == 0  # one start at a time
    full = [scaling.AgentView(i, False, None) for i in range(4)]
    assert scaling.decide(_view(100, full), now=0).start == 0  # max reached


def test_scaling_stops_idle_agents_down_to_min() -> None:
    agents = [scaling.AgentView(1, False, 0.0), scaling.AgentView(2, False, 10.0), scaling.AgentView(3, False, 20.0)]
    plan = scaling.decide(_view(0, agents), now=30.0)
    assert plan.stop == () and plan.next_check_at == 60.0
    plan = scaling.decide(_view(0, agents), now=75.0)
    assert plan.stop == (1, 2)  # idle longest first; agent 3 not yet due
    plan = scaling.decide(_view(0, agents), now=1000.0)
    assert plan.stop == (1, 2)  # never below min_agents=1
    assert scaling.decide(_view(5, agents), now=1000.0).stop == ()  # queued work keeps them


def test_dispatch_least_loaded_and_round_robin() -> None:
    slots = [dispatch.Slot(1, 1), dispatch.Slot(2, 0), dispatch.Slot(3, 2)]
    assert dispatch.choose(slots, capacity=3) == 2
    assert dispatch.choose([dispatch.Slot(1, 3)], capacity=3) is None
    rr = [dispatch.Slot(1, 1), dispatch.Slot(2, 1), dispatch.Slot(3, 1)]
    assert dispatch.choose(rr, capacity=3, strategy="round_robin", last_id=1) == 2
    assert dispatch.choose(rr, capacity=3, strategy="round_robin", last_id=3) == 1
    # Empty agents come first even in round robin.
    mixed = [dispatch.Slot(1, 0), dispatch.Slot(2, 1), dispatch.Slot(3, 0)]
    assert dispatch.choose(mixed, capacity=3, strategy="round_robin", last_id=1) == 3


def test_dispatch_keeps_streams_alone() -> None:
    slots = [dispatch.Slot(1, 1, streaming=True), dispatch.Slot(2, 1)]
    assert dispatch.choose(slots, capacity=3) == 2
    assert dispatch.choose(slots, capacity=3, for_stream=True) is None
    assert dispatch.choose([dispatch.Slot(3, 0)], capacity=3, for_stream=True) == 3


def test_scale_up_under_load_and_down_after_idle(tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    with Guild(min_agents=1, max_agents=2, pool={"idle_timeout": "200ms", "prefetch": 0}) as g:
        blocker = g.submit(faults.block, started, release)
        faults.wait_started(started)
        # The only agent is held: the queue grows past the trigger, a second agent starts.
        futs = [g.submit(faults.sleep_then, 0.01, i) for i in range(12)]
        assert [f.result(timeout=30) for f in futs] == list(range(12))
        faults.release(release)
        blocker.result(timeout=30)
        stats = g.stats()
        assert stats["counters"]["agents_started"] == 2
        # Idle past 200 ms: back down to min_agents. Wait on the state, with a deadline.
        _wait_for(lambda: len(g.stats()["agents"]) == 1, timeout_s=10)


def _wait_for(cond: Callable[[], bool], timeout_s: float) -> None:
    """Re-check a pool condition until it holds or the deadline passes."""
    end = time.monotonic() + timeout_s
    tick = threading.Event()  # never set: wait() is a bounded pause between checks
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached before the deadline")
        tick.wait(0.02)


def test_round_robin_spreads_tasks() -> None:
    with Guild(min_agents=2, max_agents=2, pool={"balancing": "round_robin"}) as g:
        pids = {g.submit(faults.pid).result(timeout=30) for _ in range(6)}
        pids |= set(g.map(faults.pid, range(40), chunksize=1))
        assert len(pids) == 2


def test_admission_posted_by_a_monitor_narrows_the_pool_to_one_working_agent() -> None:
    from guildcore.engine.events import Admission, AdmissionChanged, StopIdleAgents

    with Guild(min_agents=2, max_agents=2) as g:
        assert len(set(g.map(faults.pid, range(20), chunksize=1))) >= 1  # the pool is up
        _wait_for(lambda: len([a for a in g.stats()["agents"] if a["state"] == "IDLE"]) == 2, timeout_s=30)
        assert g._supervisor.post(AdmissionChanged(Admission(working_agents=1), "critical"))
        assert len(set(g.map(faults.pid, range(40), chunksize=1))) == 1  # one agent takes new work
        _wait_for(lambda: len(g.stats()["agents"]) == 1, timeout_s=30)  # the other stopped
        assert g._supervisor.post(AdmissionChanged(Admission(), "normal"))
        assert g._supervisor.post(StopIdleAgents("warning"))  # min_agents (2) holds: nothing to stop
        _wait_for(lambda: len(g.stats()["agents"]) == 2, timeout_s=30)
