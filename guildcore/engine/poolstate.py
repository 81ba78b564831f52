"""The state machine's state, and the primitives every one of its rules uses.

This module covers ``PoolState``: everything the supervisor knows (the
queue, the agents' records, tasks being read or run inline, counters,
flags, deadlines) and the moves that change it in one place: a task's or an
agent's state change (with the record an observer sees), putting a task
back, letting it begin, retrying or splitting it, finishing it (with its
parts), draining and stopping agents. It does not cover which event causes
what (``agentrules``, ``taskrules``) nor the entry points (``machine``).

Invariant: a state change goes through ``_move`` or ``_agent_to``, which
check it against ``states`` and make the record observers see.
"""

from __future__ import annotations

import itertools
import logging
import signal
from collections.abc import Callable

from guildcore import codec
from guildcore._records import Record
from guildcore.codec import Kind
from guildcore.engine import lifecycle, timers
from guildcore.engine.events import (
    Action,
    Admission,
    AgentMoved,
    Cancel,
    Fail,
    Log,
    Resolve,
    Send,
    SignalAgent,
    StartAgent,
    TaskMoved,
    Warn,
)
from guildcore.engine.lifecycle import AgentRecord
from guildcore.engine.states import AgentState, TaskState
from guildcore.engine.supsettings import SupervisorSettings
from guildcore.engine.task import ENDED, Task
from guildcore.engine.taskqueue import TaskQueue
from guildcore.errors import TaskCancelled

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.errors import PoolBroken

# Per-agent peaks kept in ``counters.peak_private_bytes``: the highest ones,
# so the pool's high-water mark stays while a long run recycling agents
# does not grow the table without bound.
PEAKS_KEPT = 32


class Counters(Record):
    """The pool's counters; no ``__slots__``: ``vars()`` reads them all (``stats()``)."""

    _fields = (
        "submitted", "done", "failed", "cancelled", "retried", "split", "stolen", "agents_started",
        "agents_died", "agents_replaced_memory", "agents_replaced_timeout", "agents_killed_malformed",
        "peak_private_bytes",
    )  # fmt: skip
    submitted: int
    done: int
    failed: int
    cancelled: int
    retried: int  # retries and splits
    split: int  # map chunks split in two after a failure
    stolen: int  # tasks an agent gave back, not begun, for an idle one
    agents_started: int
    agents_died: int
    agents_replaced_memory: int
    agents_replaced_timeout: int
    agents_killed_malformed: int
    peak_private_bytes: dict[int, int]  # agent id -> peak, the PEAKS_KEPT highest

    def __init__(
        self,
        submitted: int = 0,
        done: int = 0,
        failed: int = 0,
        cancelled: int = 0,
        retried: int = 0,
        split: int = 0,
        stolen: int = 0,
        agents_started: int = 0,
        agents_died: int = 0,
        agents_replaced_memory: int = 0,
        agents_replaced_timeout: int = 0,
        agents_killed_malformed: int = 0,
        peak_private_bytes: dict[int, int] | None = None,
    ) -> None:
        self.submitted = submitted
        self.done = done
        self.failed = failed
        self.cancelled = cancelled
        self.retried = retried
        self.split = split
        self.stolen = stolen
        self.agents_started = agents_started
        self.agents_died = agents_died
        self.agents_replaced_memory = agents_replaced_memory
        self.agents_replaced_timeout = agents_replaced_timeout
        self.agents_killed_malformed = agents_killed_malformed
        self.peak_private_bytes = {} if peak_private_bytes is None else peak_private_bytes


class _PartFailed:
    """A part of a split chunk that failed: its error, kept until the other parts end."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class PoolState:
    """The machine's state and its primitives (see the module docstring)."""

    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        new_task_id: Callable[[], int],
        has_initializer: bool = False,
    ) -> None:
        self.settings = settings
        self._new_task_id = new_task_id
        self._has_initializer = has_initializer
        self.queue = TaskQueue(settings.queue_strategy)
        self.agents: dict[int, AgentRecord] = {}
        self._agent_ids = itertools.count(1)
        self.counters = Counters()
        self.stopping = False
        self.kill_on_stop = False
        self.broken: PoolBroken | None = None
        self.inline = not settings.parallel
        self._inline_warned = not settings.parallel  # the Guild warned already
        self.inline_task: Task | None = None  # run by the inline runner now
        self.inline_streams: set[Task] = set()  # handed to their consumers, not ended
        self.fetching: set[Task] = set()  # results being read out of shared memory
        self.admission = Admission()
        self.start_failures = 0
        self.next_sample_at = 0.0
        self.next_scale_check: float | None = None
        self._last_rr = -1
        self.trace = False  # make records for observers
        self.now = 0.0
        self._out: list[Action] = []

    def _move(
        self, task: Task, new: TaskState, reason: str, error: BaseException | None = None
    ) -> None:
        old = task.state
        task.set_state(new)
        if self.trace:
            self._out.append(
                TaskMoved(
                    task.id,
                    task.fn_name,
                    old.name,
                    new.name,
                    reason,
                    task.agent_id,
                    len(self.queue),
                    None if error is None else type(error).__name__,
                    task.n_items,
                    task.parent is not None,
                )
            )

    def _agent_to(
        self, agent: AgentRecord, new: AgentState, reason: str, exitcode: int | None = None
    ) -> None:
        old = agent.set_state(new)
        if self.trace and old is not new:
            self._out.append(
                AgentMoved(
                    agent.id,
                    agent.pid,
                    old.name,
                    new.name,
                    reason,
                    agent.ready,
                    agent.exit_reason,
                    exitcode,
                )
            )

    def _requeue(self, task: Task) -> None:
        if self.stopping and self.kill_on_stop:
            self._finish_cancelled(task, "the pool stops")
            return
        self.queue.push_front(task)

    def _unsend(self, task: Task, reason: str) -> None:
        """A task sent to an agent that never began it: back to the queue, no attempt counted."""
        task.attempts -= 1
        task.withdrawing = False
        task.agent_id = None
        task.started_at = None
        self._move(task, TaskState.PENDING, reason)
        self._requeue(task)

    def _begin(self, task: Task) -> None:
        """``task`` heads a ready agent's queue: the agent runs it now, and its clock starts."""
        if task.state is TaskState.SENT:
            task.started_at = self.now
            self._move(task, TaskState.RUNNING, "begun")

    def _pop_held(self, agent: AgentRecord, task: Task, *, ran: bool = True) -> None:
        """``task`` leaves ``agent``: finished (``ran``), or given back."""
        held = agent.held
        was_head = held[0] is task
        if was_head:
            held.popleft()
        else:
            held.remove(task)
        task.agent_id = None
        if ran:
            agent.tasks_done += 1
        # Only the head's end lets the next task begin: a task given back
        # from behind it changes nothing for the one running.
        if was_head and held and agent.ready:
            self._begin(held[0])
        if not held and agent.state is AgentState.BUSY:
            self._agent_to(agent, AgentState.IDLE, "holds nothing")
            agent.idle_since = self.now
        limit = self.settings.max_tasks_per_agent
        if limit and agent.tasks_done >= limit and agent.live:
            self._drain_agent(agent, "recycled after max_tasks_per_agent")
        if agent.state is AgentState.DRAINING and not held:
            self._send_shutdown(agent)

    def _malformed(self, agent: AgentRecord, why: str) -> None:
        """A frame the supervisor cannot use: the agent cannot be trusted further."""
        if agent.exit_reason is not None and agent.exit_reason[0] == lifecycle.MALFORMED:
            return
        agent.exit_reason = (lifecycle.MALFORMED, why)
        self.counters.agents_killed_malformed += 1
        self._out.append(
            Log(
                logging.ERROR,
                f"agent {agent.id} (pid {agent.pid}) sent a malformed frame ({why}); replacing it",
            )
        )
        self._out.append(SignalAgent(agent.id, signal.SIGKILL, "malformed frame"))

    def _start_agent(self, reason: str) -> AgentRecord:
        agent = AgentRecord(next(self._agent_ids), self.now)
        self.agents[agent.id] = agent
        self._out.append(StartAgent(agent.id, reason))
        return agent

    def _drain_agent(self, agent: AgentRecord, reason: str) -> None:
        self._agent_to(agent, AgentState.DRAINING, reason)
        if not agent.held:
            self._send_shutdown(agent)

    def _send_shutdown(self, agent: AgentRecord) -> None:
        if agent.shutdown_sent:
            return
        agent.shutdown_sent = True
        agent.stop_deadline = self.now + timers.STOP_DEADLINE_S
        self._out.append(Send(agent.id, codec.encode_frame(Kind.SHUTDOWN, 0), "stop"))

    def _go_inline(self, why: str) -> None:
        self.inline = True
        if not self._inline_warned:
            self._inline_warned = True
            self._out.append(
                Warn(
                    f"guildcore could not start agents ({why}); running tasks inline in the supervisor "
                    "(sequential fallback). Check pool.start_method and the host's process limits."
                )
            )

    def _retry_or_fail(self, task: Task, err: BaseException, *, agent_killed: bool) -> None:
        from guildcore.engine import retry  # failures only: not on a first result's path

        if agent_killed:
            task.agent_kills += 1
        verdict = retry.decide(
            task, quarantine_after=self.settings.quarantine_after, stopping=self.stopping
        )
        if verdict == retry.SPLIT:
            self.counters.retried += 1
            self.counters.split += 1
            self._move(task, TaskState.RETRYING, f"split after {type(err).__name__}", err)
            first, second = retry.split(task, self._new_task_id(), self._new_task_id())
            self._requeue(second)
            self._requeue(first)  # pushed last: leaves first
            return
        if verdict == retry.RETRY:
            self.counters.retried += 1
            self._move(task, TaskState.RETRYING, f"retry after {type(err).__name__}", err)
            self._requeue(task)
            return
        if task.attempts <= task.retries and retry.quarantined(
            task, self.settings.quarantine_after
        ):
            retry.note_quarantine(err, task)
        self._finish_error(task, err)

    def _finish_result(self, task: Task, value: Any) -> None:
        if task.state in ENDED:
            return
        self._move(task, TaskState.DONE, "result")
        task.payload = None  # let big arguments go as soon as possible
        if task.parent is not None:
            self._part_ended(task, value)
            return
        self.counters.done += 1
        self._out.append(Resolve(task, value))

    def _finish_error(self, task: Task, err: BaseException) -> None:
        if task.state in ENDED:
            return
        self._move(task, TaskState.FAILED, "error", err)
        task.payload = None
        if task.parent is not None:
            self._part_ended(task, _PartFailed(err))
            return
        self.counters.failed += 1
        self._out.append(Fail(task, err))

    def _finish_cancelled(self, task: Task, reason: str) -> None:
        if task.state in ENDED:
            return
        self._move(task, TaskState.CANCELLED, reason)
        task.payload = None
        if task.parent is not None:
            self._finish_cancelled(task.parent, reason)
            return
        self.counters.cancelled += 1
        self._out.append(Cancel(task, cancelled(task)))

    def _part_ended(self, part: Task, value: Any) -> None:
        """A part of a split chunk ended; the chunk ends once all its parts have."""
        parent = part.parent
        assert parent is not None and parent.parts is not None
        if parent.state in ENDED:
            return
        parent.parts[part.part] = value
        parent.parts_left -= 1
        if parent.parts_left:
            return
        parts, parent.parts = parent.parts, None
        for p in parts:
            if isinstance(p, _PartFailed):
                self._finish_error(parent, p.error)  # the first failure in item order
                return
        self._finish_result(parent, [item for p in parts for item in p])

    def _fail_everything(self, err: BaseException) -> None:
        for task in list(self.queue.drain()):
            self._finish_error(task, err)
        for agent in list(self.agents.values()):
            for task in list(agent.held):
                task.agent_id = None
                self._finish_error(task, err)
            agent.held.clear()

    def _break(self, broken: PoolBroken) -> None:
        """Agents cannot start: every pending and later task fails with ``broken``."""
        self.broken = broken
        self._fail_everything(broken)


def cancelled(task: Task) -> TaskCancelled:
    return TaskCancelled(
        f"task {task.id} ({task.fn_name}) was cancelled", task_id=task.id, fn=task.fn_name
    )
