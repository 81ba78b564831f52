"""The supervisor's state machine: events in, actions out, no I/O.

This module covers every decision of the supervisor: which agent gets which
task, when a task begins and when it has run too long, what a frame from an
agent means, what a dead agent's tasks become (retried, split, requeued or
failed), when agents start and stop, and when the pool has finished. One
class, ``Machine``, owns that state; ``handle_batch(events, now)`` applies
events (``events``) at clock reading ``now`` and returns the actions the
loop must carry out. Nothing here reads a clock, touches a pipe, signals a
process or runs a future's callbacks, so every rule is tested by feeding
events with a fake clock and reading the actions (``tests/test_machine.py``),
the way Dask tests its worker state machine.

It does not cover carrying actions out (``supervisor``), the wording of
errors (``postmortem``), nor the pure sub-decisions it consults: which agent
(``dispatch``), how many agents (``scaling``), retry or split (``retry``),
deadlines (``timers``), an agent's record and start failures (``lifecycle``),
queue order (``taskqueue``).

Two things here do touch objects callers can see, each a non-blocking,
in-memory hand-off that must be atomic with the decision: claiming a
queued task's future (``set_running_or_notify_cancel``, so a caller cannot
cancel a task once it is sent) and handing a stream's chunk to its consumer
(``StreamState.put_chunk``, a queue put).

Time enters only as ``now``: every batch ends by settling the pool, which
compares the deadlines kept in state (a task's hard timeout, a SIGTERM's
grace, a stopping agent's, the next memory sample, the next idle check,
the monitor's next reading) with it; ``next_deadline()`` tells the loop when to call again, with an
empty batch if nothing else happened by then.

Each call's actions come out in the order they must be carried out. Records
for observers (``TaskMoved``, ``AgentMoved``, ``TaskRan``, ``MemoryNoted``)
are made only while ``trace`` is set: the hot path pays nothing for them
otherwise.

The rules are layered, a module each, so each reads on its own:
``poolstate`` (the state, and the primitives every rule uses: state changes,
requeue, retry or split, finishing), ``agentrules`` (agents' lives, memory,
deadlines, scale), ``taskrules`` (queue, dispatch, frames, streams,
shutdown), ``monitorrules`` (the memory monitor's readings: modes,
cleanup, caching, admission, headroom), and ``frames`` (what an agent may
send). This module adds the entry points.

Invariant: every task ends DONE, FAILED (with its cause) or CANCELLED: a
task lost with its agent is retried, split or failed with ``AgentDied``;
shutdown cancels what it does not run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from guildcore.engine import timers
from guildcore.engine.events import (
    Action,
    AdmissionChanged,
    AgentExited,
    AgentPipeClosed,
    AgentStarted,
    AgentStartFailed,
    CallRequested,
    CreditGranted,
    Event,
    FrameBad,
    FrameIn,
    InlineFinished,
    MemorySampled,
    MonitorRead,
    ResultFetched,
    ShutdownRequested,
    StopIdleAgents,
    StreamCancelled,
    Submitted,
)
from guildcore.engine.monitorrules import MonitorRules
from guildcore.engine.poolstate import Counters
from guildcore.engine.supsettings import SupervisorSettings
from guildcore.engine.task import Task

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any


class Machine(MonitorRules):
    """The supervisor's whole state and every rule that changes it.

    The rules live in layers, each a module: ``poolstate`` (the state and
    its primitives), ``agentrules`` (agents' lives, clocks, scale),
    ``taskrules`` (tasks, frames, streams, stopping), ``monitorrules``
    (the memory monitor); this class adds the entry points.
    """

    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        new_task_id: Callable[[], int],
        has_initializer: bool = False,
    ) -> None:
        super().__init__(settings, new_task_id=new_task_id, has_initializer=has_initializer)
        self._handlers: dict[type, Callable[[Any], None]] = {
            Submitted: self._on_submitted,
            FrameIn: self._on_frame,
            FrameBad: self._on_bad_frame,
            AgentStarted: self._on_started,
            AgentStartFailed: self._on_start_failed,
            AgentExited: self._on_exited,
            AgentPipeClosed: self._on_pipe_closed,
            MemorySampled: self._on_memory,
            CreditGranted: self._on_credit,
            StreamCancelled: self._on_stream_cancelled,
            ShutdownRequested: self._on_shutdown,
            CallRequested: self._on_call,
            InlineFinished: self._on_inline_finished,
            ResultFetched: self._on_fetched,
            AdmissionChanged: self._on_admission,
            StopIdleAgents: self._on_stop_idle,
            MonitorRead: self._on_monitor_read,
        }

    def handle(self, event: Event, now: float) -> list[Action]:
        """One event, then the pool settles; the actions to carry out, in order."""
        return self.handle_batch((event,), now)

    def handle_batch(self, events: Iterable[Event], now: float) -> list[Action]:
        """Several events at one clock reading, then one settle (the loop's turn)."""
        self.now = now
        out = self._out = []
        handlers = self._handlers
        for event in events:
            handlers[type(event)](event)
        self._settle()
        self._out = []
        return out

    @property
    def finished(self) -> bool:
        """Stopping, and nothing left: no queue, no agent, nothing running inline."""
        return (
            self.stopping
            and not self.queue
            and not self.agents
            and self.inline_task is None
            and not self.inline_streams
            and not self.fetching
        )

    def next_deadline(self) -> float | None:
        """The earliest clock reading at which the machine must be called again."""
        due = self.next_scale_check
        grace = self.settings.timeout_grace_s
        sampling = False
        for agent in self.agents.values():
            if agent.held and agent.ready:
                sampling = True
            t = timers.agent_deadline(agent, grace)
            if t is not None and (due is None or t < due):
                due = t
        if sampling and (due is None or self.next_sample_at < due):
            due = self.next_sample_at
        reading = self.monitor_deadline()
        if reading is not None and (due is None or reading < due):
            due = reading
        return due

    def fail_all(self, err: BaseException, more: Iterable[Task] = ()) -> list[Action]:
        """The loop cannot go on: every task held, queued or in ``more`` fails with ``err``."""
        out: list[Action] = []
        self._out = out
        self._fail_everything(err)
        for task in more:
            self._finish_error(task, err)
        if self.inline_task is not None:
            self._finish_error(self.inline_task, err)
        for task in list(self.inline_streams) + list(self.fetching):
            self._finish_error(task, err)
        self._out = []
        return out

    def snapshot(self) -> dict[str, Any]:
        """Pool state for stats."""
        counters = {k: v for k, v in vars(self.counters).items() if k != "peak_private_bytes"}
        return {
            "agents": [a.describe() for a in self.agents.values()],
            "queued": len(self.queue),
            "inline": self.inline,
            "counters": counters,
            "peak_private_bytes": dict(self.counters.peak_private_bytes),
            "mode": self._monitor().mode.value if self.monitoring else None,
            "monitor": self.monitor_snapshot(),
        }

    def _settle(self) -> None:
        """After every batch of events: timers, dispatch, stealing, scaling, stopping."""
        self._check_timers()
        if self.inline:
            self._dispatch_inline()
        else:
            self._dispatch()
            self._steal_for_idle()
        self._scale()
        self._check_monitor()  # after any start: a new agent is not held up by a reading
        if self.stopping:
            self._stop_when_empty()


__all__ = ["Counters", "Machine", "SupervisorSettings"]
