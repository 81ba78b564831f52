"""The supervisor's state machine, driven with a fake clock and no process at all.

Each test feeds events (``FrameIn`` for what an agent would send,
``AgentExited`` for its death, ...) at chosen clock readings and checks the
actions that come out: frames sent, signals, futures resolved or failed.
"""

from __future__ import annotations

import itertools
import signal
from concurrent.futures import Future
from typing import Any

import pytest

from guildcore import AgentDied, MemoryLimitExceeded, PoolBroken, TaskTimeout, codec
from guildcore.codec import Kind
from guildcore.engine import timers
from guildcore.engine.agent import FLAG_TIMEOUT, MODE_CALL, MODE_MAP, MODE_STREAM
from guildcore.engine.events import (
    Action,
    Admission,
    AdmissionChanged,
    AgentExited,
    AgentMoved,
    AgentPipeClosed,
    AgentStarted,
    AgentStartFailed,
    Cancel,
    CreditGranted,
    Fail,
    FetchResult,
    FrameBad,
    FrameIn,
    InlineFinished,
    Log,
    MemorySampled,
    Resolve,
    RunInline,
    SampleMemory,
    Send,
    ShutdownRequested,
    SignalAgent,
    StartAgent,
    StopIdleAgents,
    Submitted,
    TaskMoved,
    Warn,
)
from guildcore.engine.machine import Machine, SupervisorSettings
from guildcore.engine.states import TaskState
from guildcore.engine.stream import StreamState
from guildcore.engine.task import Task
from guildcore.engine.taskqueue import TaskQueue

SETTINGS = SupervisorSettings(
    min_agents=1,
    max_agents=2,
    idle_timeout_s=60.0,
    scale_up_queue_length=100,
    balancing="least_loaded",
    prefetch=2,
    max_tasks_per_agent=None,
    quarantine_after=2,
    limit_bytes=100_000_000,
    sample_interval_s=0.1,
    timeout_grace_s=0.5,
    stream_window=2,
    parallel=True,
)


class Pool:
    """A machine and a fake clock; agents exist only as the events fed for them."""

    def __init__(self, *, initializer: bool = False, **changes: Any) -> None:
        self.ids = itertools.count(1000)
        self.m = Machine(SETTINGS.replace(**changes), new_task_id=lambda: next(self.ids), has_initializer=initializer)
        self.now = 0.0
        self.log: list[Action] = []

    def feed(self, *events: Any, at: float | None = None) -> list[Action]:
        if at is not None:
            self.now = at
        out = self.m.handle_batch(list(events), self.now)
        self.log += out
        return out

    def start(self, out: list[Action], *, ready: bool = True) -> list[Action]:
        """Answer every StartAgent in ``out`` (and READY if ``ready``); the actions that follow."""
        more: list[Action] = []
        for a in out:
            if isinstance(a, StartAgent):
                more += self.feed(AgentStarted(a.agent_id, 100 + a.agent_id))
                if ready:
                    more += self.ready(a.agent_id)
        return more

    def ready(self, agent_id: int) -> list[Action]:
        return self.feed(FrameIn(agent_id, Kind.READY, 0, [100 + agent_id, 0]))

    def boot(self, n: int | None = None) -> None:
        """Start ``n`` ready agents (default: min_agents), as the machine asks for them."""
        settings = self.m.settings
        if n is not None:
            self.m.settings = settings.replace(min_agents=n, max_agents=max(n, settings.max_agents))
        self.start(self.feed())
        self.m.settings = settings

    def result(self, agent_id: int, task: Task, value: Any, at: float | None = None) -> list[Action]:
        return self.feed(FrameIn(agent_id, Kind.RESULT, task.id, [value]), at=at)

    def died(self, agent_id: int, exitcode: int = -signal.SIGKILL, at: float | None = None) -> list[Action]:
        return self.feed(AgentExited(agent_id, exitcode), at=at)


_task_ids = itertools.count(1)


def make_task(
    mode: int = MODE_CALL, payload: Any = None, *, timeout: float | None = None, retries: int = 0, priority: int = 0
) -> Task:
    if payload is None:
        payload = [[1], {}] if mode == MODE_CALL else list(range(4))
    n = len(payload) if mode == MODE_MAP else 1
    return Task(
        id=next(_task_ids), fn_name="m:f", spec="m:f", mode=mode, payload=payload, future=Future(),
        timeout_s=timeout, retries=retries, n_items=n, priority=priority,
    )


def sent(actions: list[Action], kind: Kind = Kind.TASK) -> list[tuple[int, int]]:
    """(agent id, task id) of every frame of ``kind`` sent."""
    out = []
    for a in actions:
        if isinstance(a, Send):
            k, task_id, _fields = codec.decode_frame(a.frame)
            if k == kind:
                out.append((a.agent_id, task_id))
    return out


def signals(actions: list[Action]) -> list[tuple[int, int]]:
    return [(a.agent_id, a.signum) for a in actions if isinstance(a, SignalAgent)]


def of(actions: list[Action], cls: type) -> list[Any]:
    return [a for a in actions if isinstance(a, cls)]


# ---------------------------------------------------------------- basics


def test_min_agents_start_and_a_task_runs_to_its_result() -> None:
    p = Pool()
    out = p.feed()
    assert [type(a) for a in out] == [StartAgent]
    p.start(out)
    task = make_task()
    out = p.feed(Submitted([task]))
    assert sent(out) == [(1, task.id)]
    assert task.state is TaskState.RUNNING and task.started_at == 0.0
    out = p.result(1, task, 42)
    assert [(type(a), a.value) for a in of(out, Resolve)] == [(Resolve, 42)]
    assert task.state is TaskState.DONE and p.m.counters.done == 1


def test_a_task_sent_to_a_starting_agent_waits_for_ready_before_its_clock_runs() -> None:
    """Timeout during agent start: an initializer of 10 s costs a 0.5 s task nothing."""
    p = Pool()
    p.start(p.feed(), ready=False)  # started, READY not yet sent: the initializer runs
    task = make_task(timeout=0.5)
    out = p.feed(Submitted([task]))
    assert sent(out) == [(1, task.id)] and task.state is TaskState.SENT
    assert p.m.next_deadline() is None  # nothing to time while it has not begun
    assert signals(p.feed(at=10.0)) == []
    p.now = 10.0
    p.ready(1)
    assert task.state is TaskState.RUNNING and task.started_at == 10.0
    assert timers.hard_deadline(task, 0.5) == pytest.approx(11.0)  # 0.5 s + 0.5 s grace
    assert signals(p.feed(at=10.99)) == []
    assert signals(p.feed(at=11.0)) == [(1, signal.SIGTERM)]
    assert signals(p.feed(at=12.0)) == [(1, signal.SIGKILL)]
    out = p.died(1, at=12.01)
    [fail] = of(out, Fail)
    assert isinstance(fail.error, TaskTimeout) and "did not stop when asked" in str(fail.error)


def test_the_next_task_begins_when_the_one_before_ends() -> None:
    p = Pool(max_agents=1)
    p.boot()
    a, b = make_task(timeout=1.0), make_task(timeout=1.0)
    p.feed(Submitted([a, b]))
    assert (a.state, b.state) == (TaskState.RUNNING, TaskState.SENT)
    p.result(1, a, "a", at=5.0)
    assert b.state is TaskState.RUNNING and b.started_at == 5.0
    assert signals(p.feed(at=6.4)) == []
    assert signals(p.feed(at=6.5)) == [(1, signal.SIGTERM)]


# ---------------------------------------------------------------- stealing


def test_a_steal_does_not_reset_the_running_tasks_clock() -> None:
    p = Pool(min_agents=2)
    p.boot()
    long = make_task(timeout=1.0)
    p.feed(Submitted([long]))
    assert long.agent_id == 1
    shorts = [make_task() for _ in range(2)]
    out = p.feed(Submitted(shorts), at=0.1)
    assert sent(out) == [(2, shorts[0].id), (1, shorts[1].id)]  # the second is sent ahead to agent 1
    out = p.result(2, shorts[0], 0, at=0.2)
    assert sent(out, Kind.WITHDRAW) == [(1, shorts[1].id)]  # agent 2 idles: ask for it back
    out = p.feed(FrameIn(1, Kind.WITHDRAWN, shorts[1].id, []), at=0.3)
    assert sent(out) == [(2, shorts[1].id)] and p.m.counters.stolen == 1
    assert long.started_at == 0.0
    assert signals(p.feed(at=1.49)) == []
    assert signals(p.feed(at=1.5)) == [(1, signal.SIGTERM)]  # 1 s + 0.5 s grace from its own start


def test_a_result_after_a_skipped_withdrawn_task_takes_it_as_given_back() -> None:
    """The agent skipped a task it gave back and ran the next before its WITHDRAWN came."""
    p = Pool(max_agents=1)
    p.boot()
    a, b, c = make_task(), make_task(), make_task()
    p.feed(Submitted([a, b, c]))
    b.withdrawing = True  # asked back
    p.result(1, a, "a")
    out = p.result(1, c, "c")  # c ran: b was skipped
    assert [r.task for r in of(out, Resolve)] == [c]
    assert b.state is not TaskState.DONE and p.m.counters.stolen == 1
    assert sent(out) == [(1, b.id)]  # back to the queue, sent again
    assert not of(out, SignalAgent)


def test_a_frame_out_of_order_kills_the_agent() -> None:
    p = Pool(max_agents=1)
    p.boot()
    a, b = make_task(), make_task()
    p.feed(Submitted([a, b]))
    out = p.result(1, b, "b")  # b had not begun: a broken agent
    assert signals(out) == [(1, signal.SIGKILL)]


# ---------------------------------------------------------------- retries and splits


def test_a_dead_agents_prefetched_tasks_go_back_without_an_attempt() -> None:
    p = Pool(max_agents=1)
    p.boot()
    running, ahead = make_task(), make_task()
    p.feed(Submitted([running, ahead]))
    out = p.died(1)
    [fail] = of(out, Fail)
    assert fail.task is running and isinstance(fail.error, AgentDied) and "SIGKILL" in str(fail.error)
    assert ahead.state is TaskState.PENDING and ahead.attempts == 0
    out = p.start(out)  # the replacement
    assert sent(out) == [(2, ahead.id)]


def test_retries_then_quarantine_of_a_single_task() -> None:
    p = Pool(max_agents=1, quarantine_after=2)
    p.boot()
    task = make_task(retries=5)
    p.feed(Submitted([task]))
    out = p.start(p.died(1))
    assert sent(out) == [(2, task.id)] and task.attempts == 2 and p.m.counters.retried == 1
    out = p.died(2)
    [fail] = of(out, Fail)
    assert "quarantined after killing agents 2 times" in str(fail.error)


def test_a_soft_timeout_is_retried_without_killing_the_agent() -> None:
    p = Pool(max_agents=1)
    p.boot()
    task = make_task(timeout=1.0, retries=1)
    p.feed(Submitted([task]))
    err = TaskTimeout("timed out", task_id=task.id)
    out = p.feed(FrameIn(1, Kind.ERROR, task.id, [err, "tb", "TaskTimeout", "timed out", FLAG_TIMEOUT]))
    assert sent(out) == [(1, task.id)] and task.agent_kills == 0


def test_a_chunk_whose_agent_dies_is_split_and_its_halves_complete() -> None:
    p = Pool(max_agents=1)
    p.boot()
    chunk = make_task(MODE_MAP, list(range(8)), retries=1)
    p.feed(Submitted([chunk]))
    out = p.start(p.died(1))
    assert chunk.state is TaskState.RETRYING and p.m.counters.split == 1
    first, second = (p.m.agents[2].held[0], p.m.agents[2].held[1])
    assert (first.payload, second.payload) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert sent(out) == [(2, first.id), (2, second.id)]
    p.result(2, first, [0, 1, 2, 3])
    out = p.result(2, second, [4, 5, 6, 7])
    [done] = of(out, Resolve)
    assert done.task is chunk and done.value == list(range(8))
    assert p.m.counters.done == 1  # the chunk, not its parts


def test_a_poison_item_ends_alone_after_bisection() -> None:
    """Item 5 kills every agent that runs it; the seven others complete."""
    p = Pool(max_agents=1, quarantine_after=2)
    p.boot()
    chunk = make_task(MODE_MAP, list(range(8)), retries=3)
    p.feed(Submitted([chunk]))
    completed: list[int] = []
    for _ in range(40):
        if chunk.state in (TaskState.DONE, TaskState.FAILED):
            break
        agent = max(p.m.agents)
        head = p.m.agents[agent].held[0]
        if 5 in head.payload:
            p.start(p.died(agent))
        else:
            completed += head.payload
            p.result(agent, head, [x * 10 for x in head.payload])
    assert chunk.state is TaskState.FAILED
    [fail] = of(p.log, Fail)
    assert fail.task is chunk and "quarantined after killing agents 2 times" in str(fail.error)
    assert sorted(completed) == [0, 1, 2, 3, 4, 6, 7]  # the chunk failed only once they had
    assert p.m.counters.split == 3  # 8 -> 4 -> 2 -> 1
    assert p.m.counters.agents_died == 3 + 2  # three splits, then the item alone twice


def test_a_chunk_without_retries_fails_with_its_cause() -> None:
    p = Pool(max_agents=1)
    p.boot()
    chunk = make_task(MODE_MAP, list(range(8)))
    p.feed(Submitted([chunk]))
    [fail] = of(p.died(1), Fail)
    assert isinstance(fail.error, AgentDied) and "signal SIGKILL" in str(fail.error)
    assert p.m.counters.split == 0


# ---------------------------------------------------------------- memory


def test_memory_over_the_limit_kills_the_agent_and_fails_the_task() -> None:
    p = Pool(max_agents=1)
    p.boot()
    task = make_task()
    p.feed(Submitted([task]))
    [sample] = of(p.feed(at=1.0), SampleMemory)  # busy agents only, every sample_interval
    assert sample.agent_ids == [1] and p.m.next_sample_at == pytest.approx(1.1)
    out = p.feed(MemorySampled([(1, 150_000_000)]))
    assert signals(out) == [(1, signal.SIGKILL)]
    [fail] = of(p.died(1), Fail)
    assert isinstance(fail.error, MemoryLimitExceeded) and fail.error.peak_bytes == 150_000_000


def test_peaks_kept_are_bounded_and_keep_the_highest() -> None:
    from guildcore.engine.lifecycle import AgentRecord

    p = Pool(max_agents=1)
    for i in range(100):
        agent = AgentRecord(10 + i, 0.0)
        agent.ready = True
        p.m.agents[agent.id] = agent
        p.feed(MemorySampled([(agent.id, 1000 * ((i * 37) % 100 + 1))]))
    peaks = p.m.counters.peak_private_bytes
    assert len(peaks) == 32 and max(peaks.values()) == 100_000 and min(peaks.values()) == 69_000


# ---------------------------------------------------------------- frames


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (Kind.RESULT, []),
        (Kind.ERROR, [None]),
        (Kind.ERROR, [None, "tb", "T", "m", "flags"]),
        (Kind.CHUNK, [0]),
        (Kind.STATS, ["slow"]),
        (Kind.END, ["x"]),
        (Kind.TASK, []),
        (Kind.SHUTDOWN, []),
    ],
)
def test_a_malformed_frame_kills_its_agent_and_says_so(kind: Kind, fields: list[Any]) -> None:
    p = Pool(max_agents=1)
    p.boot()
    task = make_task()
    p.feed(Submitted([task]))
    out = p.feed(FrameIn(1, kind, task.id, fields))
    assert signals(out) == [(1, signal.SIGKILL)]
    assert p.feed(FrameIn(1, Kind.RESULT, task.id, [1])) == []  # nothing it says counts any more
    [fail] = of(p.died(1), Fail)
    assert isinstance(fail.error, AgentDied) and "sent a frame the supervisor could not read" in str(fail.error)


def test_a_result_that_cannot_be_decoded_fails_its_task_and_keeps_the_agent() -> None:
    p = Pool(max_agents=1)
    p.boot()
    task, after = make_task(), make_task()
    p.feed(Submitted([task, after]))
    out = p.feed(FrameBad(1, "SystemExit: 1", Kind.RESULT, task.id, SystemExit(1)))
    [fail] = of(out, Fail)
    assert "could not be decoded" in str(fail.error) and isinstance(fail.error.__cause__, SystemExit)
    assert not signals(out) and after.state is TaskState.RUNNING


def test_garbage_kills_the_agent() -> None:
    p = Pool(max_agents=1)
    p.boot()
    assert signals(p.feed(FrameBad(1, "not msgpack"))) == [(1, signal.SIGKILL)]


def test_a_closed_pipe_gets_a_grace_before_the_kill() -> None:
    p = Pool(max_agents=1)
    p.boot()
    task = make_task()
    p.feed(Submitted([task]))
    assert signals(p.feed(AgentPipeClosed(1), at=1.0)) == []  # a dying agent: its exit comes in a moment
    assert signals(p.feed(at=2.0)) == [(1, signal.SIGKILL)]
    [fail] = of(p.died(1), Fail)
    assert "its pipe closed while it still ran" in str(fail.error)


def test_a_frame_before_ready_is_malformed_but_an_initializer_error_breaks_the_pool() -> None:
    p = Pool(max_agents=1, initializer=True)
    p.start(p.feed(), ready=False)
    task = make_task()
    p.feed(Submitted([task]))
    out = p.feed(FrameIn(1, Kind.ERROR, 0, [ValueError("no"), "tb", "builtins.ValueError", "no", 0]))
    [fail] = of(out, Fail)
    assert isinstance(fail.error, PoolBroken)
    later = make_task()
    [fail] = of(p.feed(Submitted([later])), Fail)
    assert fail.task is later and isinstance(fail.error, PoolBroken)


# ---------------------------------------------------------------- start failures


def test_agents_that_die_starting_send_tasks_back_then_go_inline() -> None:
    p = Pool(max_agents=1)
    task = make_task()
    out = p.feed(Submitted([task]))
    for _ in range(3):
        p.start(out, ready=False)
        [agent_id] = list(p.m.agents)
        assert task.agent_id == agent_id and task.state is TaskState.SENT
        out = p.died(agent_id, exitcode=1)
        assert task.state in (TaskState.PENDING, TaskState.RUNNING)
    assert p.m.inline and task.attempts == 1
    assert [a.task for a in of(out, RunInline)] == [task]
    assert next(w.message for w in of(out, Warn)).startswith("guildcore could not start agents (3 agents in a row")
    [done] = of(p.feed(InlineFinished(task, True, 7)), Resolve)
    assert done.value == 7


def test_agents_that_die_starting_with_an_initializer_break_the_pool() -> None:
    p = Pool(max_agents=1, initializer=True)
    task = make_task()
    out = p.feed(Submitted([task]))
    for _ in range(3):
        p.start(out, ready=False)
        out = p.died(max(p.m.agents), exitcode=1)
    [fail] = of(out, Fail)
    assert isinstance(fail.error, PoolBroken) and not p.m.inline


def test_a_start_that_fails_runs_inline_when_no_agent_is_left() -> None:
    p = Pool(max_agents=1)
    out = p.feed(Submitted([make_task()]))
    [start] = of(out, StartAgent)
    out = p.feed(AgentStartFailed(start.agent_id, "EAGAIN"))
    assert p.m.inline and of(out, RunInline) and of(out, Log)


# ---------------------------------------------------------------- inline


def test_inline_runs_one_task_at_a_time_and_streams_do_not_hold_the_runner() -> None:
    p = Pool(parallel=False)
    stream = make_task(MODE_STREAM, [[3], {}])
    stream.stream = StreamState(2, grant=lambda n: None, cancel=lambda: None)
    a, b = make_task(), make_task()
    out = p.feed(Submitted([stream, a, b]))
    assert [r.task for r in of(out, RunInline)] == [stream, a]
    out = p.feed(InlineFinished(a, False, SystemExit(3)))
    assert [f.task for f in of(out, Fail)] == [a] and [r.task for r in of(out, RunInline)] == [b]
    assert not p.m.finished
    out = p.feed(InlineFinished(stream, True, None))
    assert [r.task for r in of(out, Resolve)] == [stream]


# ---------------------------------------------------------------- streams


def test_a_stream_paused_by_its_consumer_does_not_time_out() -> None:
    p = Pool(max_agents=1)
    p.boot()
    task = make_task(MODE_STREAM, [[], {}], timeout=1.0)
    task.stream = StreamState(2, grant=lambda n: None, cancel=lambda: None)
    out = p.feed(Submitted([task]))
    assert sent(out, Kind.CREDIT) == [(1, task.id)]
    p.feed(FrameIn(1, Kind.CHUNK, task.id, [0, "a"]), at=0.1)
    p.feed(FrameIn(1, Kind.CHUNK, task.id, [1, "b"]), at=0.2)  # out of credits: paused
    assert task.stream.paused_since == 0.2
    assert signals(p.feed(at=50.0)) == []
    out = p.feed(CreditGranted(task, 1), at=50.0)
    assert sent(out, Kind.CREDIT) == [(1, task.id)]
    assert task.started_at == pytest.approx(49.8)  # the 49.8 s paused moved its start on
    assert signals(p.feed(at=51.29)) == []
    assert signals(p.feed(at=51.3)) == [(1, signal.SIGTERM)]


# ---------------------------------------------------------------- cancel and shutdown


def test_a_task_cancelled_while_queued_is_never_sent() -> None:
    p = Pool(max_agents=1, prefetch=0)
    p.boot()
    blocker, victim, other = make_task(), make_task(), make_task()
    p.feed(Submitted([blocker, victim, other]))
    assert victim.future.cancel()
    out = p.result(1, blocker, None)
    assert sent(out) == [(1, other.id)] and victim.state is TaskState.CANCELLED


def test_shutdown_finishes_queued_work_then_stops_agents() -> None:
    p = Pool(max_agents=1, prefetch=0)
    p.boot()
    a, b = make_task(), make_task()
    p.feed(Submitted([a, b]))
    p.feed(ShutdownRequested(cancel_futures=False, kill=False))
    assert not p.m.finished
    out = p.result(1, a, 1)
    assert sent(out) == [(1, b.id)]
    out = p.result(1, b, 2)
    assert sent(out, Kind.SHUTDOWN) == [(1, 0)]
    assert signals(p.feed(at=5.0)) == [(1, signal.SIGKILL)]  # it did not exit within 5 s
    p.feed(AgentExited(1, 0))
    assert p.m.finished


def test_shutdown_with_cancel_futures_cancels_the_queue_only() -> None:
    p = Pool(max_agents=1, prefetch=0)
    p.boot()
    a, b = make_task(), make_task()
    p.feed(Submitted([a, b]))
    out = p.feed(ShutdownRequested(cancel_futures=True, kill=False))
    assert [c.task for c in of(out, Cancel)] == [b] and a.state is TaskState.RUNNING


def test_shutdown_with_kill_cancels_everything_and_terminates_agents() -> None:
    p = Pool(max_agents=1)
    p.boot()
    a, b = make_task(), make_task()
    p.feed(Submitted([a, b]))
    out = p.feed(ShutdownRequested(cancel_futures=True, kill=True))
    assert sorted(c.task.id for c in of(out, Cancel)) == sorted([a.id, b.id])
    assert signals(out) == [(1, signal.SIGTERM)]
    assert not of(p.died(1, exitcode=-signal.SIGTERM), Fail)
    assert p.m.finished


# ---------------------------------------------------------------- admission (the monitor's levers)


def test_admission_one_working_agent_stops_the_others_and_may_start_blocks_starts() -> None:
    p = Pool(max_agents=2, min_agents=2, scale_up_queue_length=0)
    p.boot()
    out = p.feed(AdmissionChanged(Admission(working_agents=1), "critical"))
    assert p.m.agents[2].state.name == "DRAINING" and sent(out, Kind.SHUTDOWN) == [(2, 0)]
    tasks = [make_task() for _ in range(3)]
    out = p.feed(Submitted(tasks))
    assert {agent for agent, _ in sent(out)} == {1} and not of(out, StartAgent)
    p.feed(AgentExited(2, 0))
    out = p.feed(AdmissionChanged(Admission(may_start=False), "no headroom for one more agent"))
    assert not of(out, StartAgent)  # min_agents is 2, but no agent may start
    out = p.feed(AdmissionChanged(Admission(), "normal"))
    assert of(out, StartAgent)


def test_stop_idle_agents_keeps_min_agents() -> None:
    p = Pool(max_agents=3, min_agents=1)
    p.boot(3)
    p.feed(StopIdleAgents("warning"))
    assert sorted(a.state.name for a in p.m.agents.values()) == ["DRAINING", "DRAINING", "IDLE"]


# ---------------------------------------------------------------- queue order and records


def test_queue_orders_by_priority_or_by_submission() -> None:
    tasks = [make_task(priority=pr) for pr in (5, -1, 0, -1)]
    by_priority, fifo = TaskQueue("priority"), TaskQueue("fifo")
    for t in tasks:
        by_priority.push(t)
        fifo.push(t)
    back = make_task(priority=9)
    by_priority.push_front(back)
    fifo.push_front(back)
    assert list(by_priority.drain()) == [tasks[1], tasks[3], tasks[2], tasks[0], back]
    assert list(fifo.drain()) == [back, *tasks]


def test_records_for_observers_follow_a_task_from_queue_to_result() -> None:
    p = Pool(max_agents=1)
    p.m.trace = True
    p.boot()
    task = make_task()
    p.feed(Submitted([task]))
    p.result(1, task, 1)
    moves = [(r.old, r.new, r.reason) for r in p.log if isinstance(r, TaskMoved) and r.task_id == task.id]
    assert moves == [
        ("NEW", "PENDING", "submitted"),
        ("PENDING", "SENT", "sent"),
        ("SENT", "RUNNING", "begun"),
        ("RUNNING", "DONE", "result"),
    ]
    agent_moves = [(r.old, r.new) for r in p.log if isinstance(r, AgentMoved)]
    assert agent_moves[:2] == [("NEW", "STARTING"), ("STARTING", "IDLE")]
    assert ("BUSY", "IDLE") in agent_moves


def test_results_through_shared_memory_are_fetched_then_resolved() -> None:
    p = Pool(max_agents=1)
    p.boot()
    task = make_task()
    p.feed(Submitted([task]))
    out = p.feed(FrameIn(1, Kind.RESULT, task.id, ["guild_x", 10, 0]))
    [fetch] = of(out, FetchResult)
    assert fetch.task is task and not p.m.finished
    from guildcore.engine.events import ResultFetched

    [done] = of(p.feed(ResultFetched(task, True, b"x" * 10)), Resolve)
    assert done.value == b"x" * 10
