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

Each call's actions come out in the order they must be carried out. Records
for observers (``TaskMoved``, ``AgentMoved``, ``MemoryNoted``) are made only
while ``trace`` is set: the hot path pays nothing for them otherwise.

Invariant: every task ends DONE, FAILED (with its cause) or CANCELLED: a
task lost with its agent is retried, split or failed with ``AgentDied``;
shutdown cancels what it does not run.
"""

from __future__ import annotations

import itertools
import logging
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from guildcore import codec
from guildcore.codec import Kind
from guildcore.engine import dispatch, lifecycle, postmortem, retry, scaling, timers
from guildcore.engine.agent import FLAG_MEMORY, FLAG_TIMEOUT, MODE_STREAM
from guildcore.engine.events import (
    Action,
    Admission,
    AdmissionChanged,
    AgentExited,
    AgentMoved,
    AgentPipeClosed,
    AgentStarted,
    AgentStartFailed,
    CallRequested,
    Cancel,
    CreditGranted,
    DiscardResult,
    Event,
    Fail,
    FetchResult,
    FrameBad,
    FrameIn,
    InlineFinished,
    Log,
    MemoryNoted,
    MemorySampled,
    Resolve,
    ResultFetched,
    RunCall,
    RunInline,
    SampleMemory,
    Send,
    ShutdownRequested,
    SignalAgent,
    StartAgent,
    StopIdleAgents,
    StreamCancelled,
    Submitted,
    TaskMoved,
    TaskRan,
    Warn,
)
from guildcore.engine.lifecycle import AgentRecord
from guildcore.engine.states import AgentState, TaskState
from guildcore.engine.task import ENDED, Task
from guildcore.engine.taskqueue import TaskQueue
from guildcore.errors import (
    MemoryLimitExceeded,
    PoolBroken,
    SerializationError,
    TaskCancelled,
    TaskTimeout,
    describe_exitcode,
)

# Per-agent peaks kept in ``counters.peak_private_bytes``: the highest ones,
# so the pool's high-water mark stays while a long run recycling agents
# does not grow the table without bound.
PEAKS_KEPT = 32


@dataclass(frozen=True)
class SupervisorSettings:
    """The parts of Config the supervisor reads, resolved to plain values."""

    min_agents: int
    max_agents: int
    idle_timeout_s: float
    scale_up_queue_length: int
    balancing: str
    prefetch: int
    max_tasks_per_agent: int | None
    quarantine_after: int
    limit_bytes: int | None
    sample_interval_s: float
    timeout_grace_s: float
    stream_window: int
    parallel: bool
    queue_strategy: str = "priority"


@dataclass
class Counters:
    submitted: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0  # retries and splits
    split: int = 0  # map chunks split in two after a failure
    stolen: int = 0  # tasks an agent gave back, not begun, for an idle one
    agents_started: int = 0
    agents_died: int = 0
    agents_replaced_memory: int = 0
    agents_replaced_timeout: int = 0
    agents_killed_malformed: int = 0
    peak_private_bytes: dict[int, int] = field(default_factory=dict)  # agent id -> peak, the PEAKS_KEPT highest


class _PartFailed:
    """A part of a split chunk that failed: its error, kept until the other parts end."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# Frames an agent may send, with the fields each needs (see _frame_problem).
_FROM_AGENT = frozenset({Kind.READY, Kind.RESULT, Kind.ERROR, Kind.STATS, Kind.CHUNK, Kind.END, Kind.WITHDRAWN})


class Machine:
    """The supervisor's whole state and every rule that changes it."""

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
        }

    # ------------------------------------------------------------ entry points

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
        }

    # -------------------------------------------------------------- records

    def _move(self, task: Task, new: TaskState, reason: str, error: BaseException | None = None) -> None:
        old = task.state
        task.set_state(new)
        if self.trace:
            self._out.append(
                TaskMoved(
                    task.id, task.fn_name, old.name, new.name, reason, task.agent_id, len(self.queue),
                    None if error is None else type(error).__name__, task.n_items, task.parent is not None,
                )
            )

    def _agent_to(self, agent: AgentRecord, new: AgentState, reason: str, exitcode: int | None = None) -> None:
        old = agent.set_state(new)
        if self.trace and old is not new:
            self._out.append(
                AgentMoved(agent.id, agent.pid, old.name, new.name, reason, agent.ready, agent.exit_reason, exitcode)
            )

    # ------------------------------------------------------------ submitting

    def _on_submitted(self, event: Submitted) -> None:
        for task in event.tasks:
            if self.broken is not None:
                self._finish_error(task, self.broken)
            elif self.stopping and self.kill_on_stop:
                self._finish_cancelled(task, "submitted while the pool stops")
            else:
                self.counters.submitted += 1
                self.queue.push(task)
                if self.trace:
                    self._out.append(
                        TaskMoved(task.id, task.fn_name, "NEW", "PENDING", "submitted", None, len(self.queue), None, task.n_items)
                    )

    def _pop_task(self) -> Task | None:
        """The next task to run, skipping ended ones; claims its future."""
        queue = self.queue
        while queue:
            task = queue.pop()
            if task.state in ENDED:
                continue  # cancelled while it waited
            if task.parent is not None and task.root().state in ENDED:
                self._move(task, TaskState.CANCELLED, "its chunk ended")  # a part of a chunk that ended
                continue
            if not task.future_started:
                # The caller may have cancelled the future while it waited.
                if not task.future.set_running_or_notify_cancel():
                    self._move(task, TaskState.CANCELLED, "cancelled by the caller")
                    self.counters.cancelled += 1
                    self._out.append(Cancel(task, _cancelled(task)))
                    continue
                task.future_started = True
            return task
        return None

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

    # ------------------------------------------------------------- settling

    def _settle(self) -> None:
        """After every batch of events: timers, dispatch, stealing, scaling, stopping."""
        self._check_timers()
        if self.inline:
            self._dispatch_inline()
        else:
            self._dispatch()
            self._steal_for_idle()
        self._scale()
        if self.stopping:
            self._stop_when_empty()

    def _dispatch(self) -> None:
        queue = self.queue
        if not queue:
            return
        capacity = 1 + self.settings.prefetch
        while queue:
            slots = self._slots()
            if not slots:
                return
            agent_id = dispatch.choose(
                slots,
                capacity=capacity,
                strategy=self.settings.balancing,
                last_id=self._last_rr,
                for_stream=queue.peek().mode == MODE_STREAM,
            )
            if agent_id is None:
                return
            task = self._pop_task()
            if task is None:
                return
            self._last_rr = agent_id
            self._send_task(self.agents[agent_id], task)

    def _slots(self) -> list[dispatch.Slot]:
        working = self.admission.working_agents
        live = [a for a in self.agents.values() if a.live]
        if working is not None:
            live = sorted(live, key=lambda a: a.id)[:working]
        return [
            dispatch.Slot(a.id, len(a.held), streaming=any(t.mode == MODE_STREAM for t in a.held))
            for a in live
        ]

    def _send_task(self, agent: AgentRecord, task: Task) -> None:
        task.attempts += 1
        try:
            payload = task.payload
            if task.stream is not None and task.stream.ring is not None:
                payload = [*payload, task.stream.ring.describe()]  # the agent's shm ring for big chunks
            frame = codec.encode_frame(Kind.TASK, task.id, task.mode, task.spec, payload, task.timeout_s, task.ctx_ref)
        except BaseException as exc:  # a user's __reduce__ may raise anything, SystemExit included
            msg = f"task {task.id} ({task.fn_name}) cannot be sent to an agent: {exc}"
            self._finish_error(task, SerializationError.because(msg, exc, stage="arguments"))
            return
        limit = self.settings.limit_bytes
        if limit is not None and len(frame) > limit:
            # The agent could not even hold the arguments under its limit:
            # fail now, not after wedging its pipe or killing it.
            self._finish_error(task, postmortem.arguments_too_big(task, len(frame), limit))
            return
        task.agent_id = agent.id
        self._move(task, TaskState.SENT, "sent")
        agent.held.append(task)
        if agent.ready and len(agent.held) == 1:
            self._begin(task)
        if agent.state is AgentState.IDLE:
            self._agent_to(agent, AgentState.BUSY, "sent a task")
        self._out.append(Send(agent.id, frame, "task"))
        if task.stream is not None:
            self._out.append(Send(agent.id, codec.encode_frame(Kind.CREDIT, task.id, task.stream.window), "credit"))

    def _begin(self, task: Task) -> None:
        """``task`` heads a ready agent's queue: the agent runs it now, and its clock starts."""
        if task.state is TaskState.SENT:
            task.started_at = self.now
            self._move(task, TaskState.RUNNING, "begun")

    def _steal_for_idle(self) -> None:
        """An agent idles while another holds tasks sent ahead: ask for one back.

        Prefetch keeps agents from waiting between tasks, but a task sent
        ahead would otherwise wait behind its agent's current one however
        long that runs. The holder gives the task back only if it has not
        begun it (WITHDRAWN); the next dispatch sends it to the idle agent.
        An agent still starting has begun nothing: any task it holds may go.
        """
        if self.queue or self.stopping:
            return
        idle = 0
        for a in self.agents.values():
            if a.state is AgentState.IDLE and not a.held:
                idle += 1
        if not idle:
            return
        for agent in self.agents.values():
            if idle <= 0:
                return
            least = 1 if agent.state is AgentState.STARTING else 2
            if agent.state not in (AgentState.BUSY, AgentState.STARTING) or len(agent.held) < least:
                continue
            task = agent.held[-1]
            if task.withdrawing or task.stream is not None:
                continue
            task.withdrawing = True
            self._out.append(Send(agent.id, codec.encode_frame(Kind.WITHDRAW, task.id), "withdraw for an idle agent"))
            idle -= 1

    def _dispatch_inline(self) -> None:
        """Inline mode: tasks run in the supervisor's process, one at a time (streams aside)."""
        while self.inline_task is None:
            task = self._pop_task()
            if task is None:
                return
            task.attempts += 1
            task.started_at = self.now
            self._move(task, TaskState.RUNNING, "run inline")
            if task.stream is not None:
                # Its consumer drives the generator, in its own thread: the
                # runner is free at once.
                self.inline_streams.add(task)
            else:
                self.inline_task = task
            self._out.append(RunInline(task))

    # --------------------------------------------------------------- frames

    def _on_frame(self, event: FrameIn) -> None:
        agent = self.agents.get(event.agent_id)
        if agent is None or agent.state in (AgentState.DEAD, AgentState.STOPPED):
            return
        if agent.exit_reason is not None and agent.exit_reason[0] == lifecycle.MALFORMED:
            return  # being killed: nothing it says counts any more
        kind, task_id, fields = event.kind, event.task_id, event.fields
        problem = _frame_problem(kind, task_id, fields, agent)
        if problem is not None:
            self._malformed(agent, problem)
            return
        if kind == Kind.READY:
            self._on_ready(agent, fields)
            return
        if kind == Kind.ERROR and task_id == 0:
            agent.exit_reason = (lifecycle.INITIALIZER, None)
            self._break(postmortem.initializer_failed(fields))
            return
        task = agent.find(task_id)
        if kind == Kind.WITHDRAWN:
            if task is not None:  # else it finished first: its result came before this
                self.counters.stolen += 1
                self._pop_held(agent, task, ran=False)
                self._unsend(task, "withdrawn for an idle agent")
            return
        if task is None:
            if kind == Kind.RESULT and len(fields) > 1:
                self._out.append(DiscardResult(task_id))  # Ownership: nobody else will unlink it
            return  # a late frame for a task already failed or cancelled
        if not self._is_head(agent, task):
            self._malformed(agent, f"a {_kind_name(kind)} frame for task {task_id}, which it had not begun")
            return
        if kind == Kind.STATS:
            task.compute_s = float(fields[0])
            if self.trace:
                self._out.append(TaskRan(task.id, agent.id, fields))
        elif kind == Kind.CHUNK:
            if task.stream is not None:
                task.stream.put_chunk(fields[0], fields[1], fields[2:], now=self.now)
        elif kind == Kind.RESULT:
            self._pop_held(agent, task)
            if len(fields) > 1 or task.raw_result:
                self.fetching.add(task)
                self._out.append(FetchResult(task, fields))
            else:
                self._finish_result(task, fields[0])
        elif kind == Kind.ERROR:
            self._pop_held(agent, task)
            self._on_task_error(agent, task, fields)
        elif kind == Kind.END:
            self._pop_held(agent, task)
            if len(fields) > 1 and fields[1]:
                self._finish_cancelled(task, "its consumer closed the stream")
            else:
                self._finish_result(task, None)

    def _is_head(self, agent: AgentRecord, task: Task) -> bool:
        """Whether ``task`` is what ``agent`` runs (Invariant: the head of ``held``).

        Tasks ahead of it that were asked back may have been skipped by the
        agent before their WITHDRAWN reply came (the reply and the next
        task's frames are written by two threads): they are taken as given
        back now. Anything else ahead of it means the agent broke the order.
        """
        held = agent.held
        if held[0] is task:
            return True
        ahead = list(itertools.takewhile(lambda t: t is not task, held))
        if not all(t.withdrawing for t in ahead):
            return False
        for t in ahead:
            self.counters.stolen += 1
            self._pop_held(agent, t, ran=False)
            self._unsend(t, "withdrawn for an idle agent")
        return True

    def _on_ready(self, agent: AgentRecord, fields: list[Any]) -> None:
        if agent.ready:
            return
        agent.ready = True
        agent.baseline_private = int(fields[1]) if len(fields) > 1 else 0
        self.start_failures = 0
        if agent.state is AgentState.STARTING:
            self._agent_to(agent, AgentState.BUSY if agent.held else AgentState.IDLE, "ready")
            agent.idle_since = self.now
        if agent.held:
            self._begin(agent.held[0])

    def _on_bad_frame(self, event: FrameBad) -> None:
        agent = self.agents.get(event.agent_id)
        if agent is None or agent.state in (AgentState.DEAD, AgentState.STOPPED):
            return
        if event.kind in (Kind.RESULT, Kind.ERROR) and event.task_id:
            # A whole frame whose value cannot be decoded here: the agent is
            # sound (it sent a complete frame, in order); the task fails.
            task = agent.find(event.task_id)
            if task is None:
                return  # a late frame for a task already ended
            if self._is_head(agent, task):
                self._pop_held(agent, task)
                what = "result" if event.kind == Kind.RESULT else "error"
                msg = f"the {what} of task {task.id} ({task.fn_name}) could not be decoded in the caller: {event.why}"
                raised = event.error if event.error is not None else SerializationError(event.why)
                err = SerializationError.because(msg, raised, stage="result", decoding=True)
                err.__cause__ = event.error
                self._finish_error(task, err)
                return
        self._malformed(agent, event.why)

    def _malformed(self, agent: AgentRecord, why: str) -> None:
        """A frame the supervisor cannot use: the agent cannot be trusted further."""
        if agent.exit_reason is not None and agent.exit_reason[0] == lifecycle.MALFORMED:
            return
        agent.exit_reason = (lifecycle.MALFORMED, why)
        self.counters.agents_killed_malformed += 1
        self._out.append(Log(logging.ERROR, f"agent {agent.id} (pid {agent.pid}) sent a malformed frame ({why}); replacing it"))
        self._out.append(SignalAgent(agent.id, signal.SIGKILL, "malformed frame"))

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

    def _on_task_error(self, agent: AgentRecord, task: Task, fields: list[Any]) -> None:
        flags = fields[4]
        err = postmortem.reported_error(agent, task, fields, self.settings.limit_bytes)
        if flags & FLAG_MEMORY:
            # The agent exits by itself after this report (its heap is at the
            # cap): send it nothing more; what it holds goes back to the queue.
            agent.exit_reason = (lifecycle.MEMORY_REPORTED, None)
            self.counters.agents_replaced_memory += 1
            if agent.live:
                self._agent_to(agent, AgentState.DRAINING, "out of memory under its hard cap")
            agent.shutdown_sent = True
            agent.stop_deadline = self.now + timers.STOP_DEADLINE_S
            self._retry_or_fail(task, err, agent_killed=True)
            return
        if flags & FLAG_TIMEOUT:
            self._retry_or_fail(task, err, agent_killed=False)
            return
        self._finish_error(task, err)

    def _on_fetched(self, event: ResultFetched) -> None:
        task = event.task
        self.fetching.discard(task)
        if event.ok:
            self._finish_result(task, event.value)
        else:
            self._finish_error(task, event.value)

    # --------------------------------------------------------------- agents

    def _start_agent(self, reason: str) -> None:
        agent = AgentRecord(next(self._agent_ids), self.now)
        self.agents[agent.id] = agent
        self._out.append(StartAgent(agent.id, reason))

    def _on_started(self, event: AgentStarted) -> None:
        agent = self.agents.get(event.agent_id)
        if agent is None:
            return
        agent.pid = event.pid
        self.counters.agents_started += 1
        if self.trace:
            self._out.append(AgentMoved(agent.id, agent.pid, "NEW", agent.state.name, "started"))

    def _on_start_failed(self, event: AgentStartFailed) -> None:
        agent = self.agents.pop(event.agent_id, None)
        if agent is None:
            return
        for task in list(agent.held):
            self._unsend(task, "its agent could not start")
        agent.held.clear()
        self.start_failures += 1
        self._out.append(Log(logging.WARNING, f"agent {agent.id} could not start: {event.why}"))
        if lifecycle.start_verdict(self.start_failures, has_initializer=False) != lifecycle.GO_ON or not self.agents:
            self._go_inline(event.why)

    def _on_pipe_closed(self, event: AgentPipeClosed) -> None:
        """Its pipe ended: an agent that is dying (its sentinel comes in a moment), or
        one whose pipe something closed. The first exits within the grace; the
        second is killed at its end, with that reason."""
        agent = self.agents.get(event.agent_id)
        if agent is not None and agent.exit_reason is None:
            agent.pipe_closed = True
            agent.kill_at = self.now + timers.KILL_GRACE_S

    def _on_exited(self, event: AgentExited) -> None:
        """The agent's process ended: account for every task it held."""
        agent = self.agents.pop(event.agent_id, None)
        if agent is None:
            return
        exitcode = event.exitcode
        expected = agent.state is AgentState.DRAINING and agent.shutdown_sent
        died_starting = not agent.ready  # it began nothing
        if agent.exit_reason is not None and agent.exit_reason[0] == lifecycle.MALFORMED and exitcode != -signal.SIGKILL:
            agent.exit_reason = None  # it ended on its own before the kill for its frame
        self._agent_to(
            agent, AgentState.STOPPED if expected else AgentState.DEAD,
            "stopped" if expected else f"died ({describe_exitcode(exitcode)})", exitcode,
        )
        held = list(agent.held)
        agent.held.clear()
        if expected:
            # Invariant: an agent told to stop runs nothing more; whatever it
            # still held had not begun, so it goes back to the queue.
            for task in held:
                self._unsend(task, "its agent stopped")
            return
        self.counters.agents_died += 1
        if died_starting:
            # It never sent READY, so it never began what it was sent ahead of
            # time: back to the queue, unless shutdown already cancelled it.
            self.start_failures += 1
            for task in held:
                if self.stopping and task.stream is not None:
                    self._finish_cancelled(task, "the pool stops")
                elif task.state not in ENDED:
                    self._unsend(task, "its agent died starting")
        elif held:
            running, prefetched = held[0], held[1:]
            self._out.append(DiscardResult(running.id))  # a big result it may have been writing
            err = self._death_error(agent, running, exitcode)
            if isinstance(err, MemoryLimitExceeded):
                self.counters.agents_replaced_memory += 1
            elif isinstance(err, TaskTimeout):
                self.counters.agents_replaced_timeout += 1
            running.agent_id = None
            self._retry_or_fail(running, err, agent_killed=True)
            for task in prefetched:
                if task.state not in ENDED:
                    self._unsend(task, "its agent died")
        if self.inline or self.broken is not None:
            return
        verdict = lifecycle.start_verdict(self.start_failures, has_initializer=self._has_initializer)
        if verdict != lifecycle.GO_ON:
            why = (
                f"{self.start_failures} agents in a row died before they were ready "
                f"(last: {describe_exitcode(exitcode)})"
            )
            if verdict == lifecycle.GO_INLINE:
                self._go_inline(why)
            else:
                self._break(postmortem.agents_die_at_start(why))

    def _death_error(self, agent: AgentRecord, task: Task, exitcode: int | None) -> BaseException:
        return postmortem.death_error(agent, task, exitcode, self.settings.limit_bytes, self.now)

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

    # --------------------------------------------------------------- memory

    def _on_memory(self, event: MemorySampled) -> None:
        limit = self.settings.limit_bytes
        for agent_id, reading in event.readings:
            agent = self.agents.get(agent_id)
            if agent is None or reading is None or not agent.ready:
                continue
            private = max(0, reading - agent.baseline_private)
            agent.last_private = private
            agent.peak_private = peak = max(agent.peak_private or 0, private)
            self._note_peak(agent.id, peak)
            if self.trace:
                self._out.append(MemoryNoted(agent.id, private, peak))
            if limit and private > limit and agent.exit_reason is None and agent.held:
                agent.exit_reason = (lifecycle.MEMORY, private)
                self._out.append(SignalAgent(agent.id, signal.SIGKILL, "over its memory limit"))

    def _note_peak(self, agent_id: int, peak: int) -> None:
        peaks = self.counters.peak_private_bytes
        if agent_id in peaks or len(peaks) < PEAKS_KEPT:
            peaks[agent_id] = peak
            return
        low_id, low = min(peaks.items(), key=lambda kv: kv[1])
        if peak > low:
            del peaks[low_id]
            peaks[agent_id] = peak

    # --------------------------------------------------------------- timers

    def _check_timers(self) -> None:
        now = self.now
        grace = self.settings.timeout_grace_s
        if now >= self.next_sample_at:
            busy = [a.id for a in self.agents.values() if a.held and a.ready and a.state is not AgentState.DEAD]
            if busy:
                self.next_sample_at = now + self.settings.sample_interval_s
                self._out.append(SampleMemory(busy))
        for agent in self.agents.values():
            if agent.kill_at is not None and now >= agent.kill_at:
                agent.kill_at = None
                if agent.pipe_closed and agent.exit_reason is None:
                    self._malformed(agent, "its pipe closed while it still ran")
                else:
                    self._out.append(SignalAgent(agent.id, signal.SIGKILL, "did not stop after SIGTERM"))
                continue
            if agent.stop_deadline is not None and now >= agent.stop_deadline:
                agent.stop_deadline = None
                self._out.append(SignalAgent(agent.id, signal.SIGKILL, "did not stop after SHUTDOWN"))
                continue
            if not agent.held or agent.exit_reason is not None:
                continue
            head = agent.held[0]
            due = timers.hard_deadline(head, grace)
            if due is not None and now >= due:
                agent.exit_reason = (lifecycle.TIMEOUT, head.id)
                agent.kill_at = now + timers.KILL_GRACE_S
                self._out.append(SignalAgent(agent.id, signal.SIGTERM, "task past its timeout and grace"))

    # -------------------------------------------------------------- scaling

    def _scale(self) -> None:
        if self.inline or self.broken is not None:
            return
        if self.stopping:
            self.next_scale_check = None
            if self.queue and not any(a.live for a in self.agents.values()):
                self._start_agent("work is left while stopping")
            return
        # Waiting work: the queue plus tasks prefetched behind a running one.
        waiting = len(self.queue) + sum(max(0, len(a.held) - 1) for a in self.agents.values())
        live = [a for a in self.agents.values() if a.live]
        lo, hi = self.settings.min_agents, self.settings.max_agents
        working = self.admission.working_agents
        if working is not None:
            # Agents beyond the working set take nothing new: once idle they stop.
            lo, hi = min(lo, working), min(hi, max(1, working))
            for agent in sorted(live, key=lambda a: a.id)[working:]:
                if agent.state is AgentState.IDLE:
                    self._drain_agent(agent, "outside the working set (admission)")
            live = [a for a in live if a.live]
        view = scaling.PoolView(
            queued=waiting,
            agents=[
                scaling.AgentView(a.id, a.state is AgentState.STARTING, a.idle_since if a.state is AgentState.IDLE else None)
                for a in live
            ],
            min_agents=lo,
            max_agents=hi,
            scale_up_queue_length=self.settings.scale_up_queue_length,
            idle_timeout_s=self.settings.idle_timeout_s,
        )
        plan = scaling.decide(view, self.now)
        starts = plan.start
        if not self.admission.may_start:
            starts = min(starts, 0 if live else 1)  # the first agent still starts: queued work must run
        for _ in range(starts):
            self._start_agent("queue pressure" if live else "min_agents")
        for agent_id in plan.stop:
            self._drain_agent(self.agents[agent_id], "idle past idle_timeout")
        self.next_scale_check = plan.next_check_at

    def _on_admission(self, event: AdmissionChanged) -> None:
        self.admission = event.admission
        self._out.append(Log(logging.INFO, f"admission changed: {event.admission} ({event.reason})"))

    def _on_stop_idle(self, event: StopIdleAgents) -> None:
        live = sum(1 for a in self.agents.values() if a.live)
        for agent in sorted(self.agents.values(), key=lambda a: a.idle_since or 0.0):
            if live <= self.settings.min_agents:
                return
            if agent.state is AgentState.IDLE and not agent.held:
                self._drain_agent(agent, event.reason)
                live -= 1

    # -------------------------------------------------------------- inline

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

    def _on_inline_finished(self, event: InlineFinished) -> None:
        task = event.task
        if task is self.inline_task:
            self.inline_task = None
        self.inline_streams.discard(task)
        if task.state in ENDED:
            return  # cancelled while it ran (shutdown with kill)
        if event.cancelled:
            self._finish_cancelled(task, "its consumer closed the stream")
        elif event.ok:
            self._finish_result(task, event.value)
        else:
            self._finish_error(task, event.value)

    # ------------------------------------------------------------ streaming

    def _on_credit(self, event: CreditGranted) -> None:
        task = event.task
        if task.stream is not None:
            paused_s = task.stream.resume(event.n, self.now)
            if task.started_at is not None:
                task.started_at += paused_s  # time waiting for the consumer is not run time
        if task.agent_id is not None and task.agent_id in self.agents:
            self._out.append(Send(task.agent_id, codec.encode_frame(Kind.CREDIT, task.id, event.n), "credit"))

    def _on_stream_cancelled(self, event: StreamCancelled) -> None:
        self._cancel_stream(event.task)

    def _cancel_stream(self, task: Task) -> None:
        if task.state is TaskState.PENDING:
            self._finish_cancelled(task, "its consumer closed the stream")
            return
        if task.agent_id is not None and task.agent_id in self.agents:
            self._out.append(Send(task.agent_id, codec.encode_frame(Kind.CANCEL, task.id), "cancel"))

    # ------------------------------------------------------------- calls

    def _on_call(self, event: CallRequested) -> None:
        self._out.append(RunCall(event.fn, event.future))

    # ------------------------------------------------------------ retrying

    def _retry_or_fail(self, task: Task, err: BaseException, *, agent_killed: bool) -> None:
        if agent_killed:
            task.agent_kills += 1
        verdict = retry.decide(task, quarantine_after=self.settings.quarantine_after, stopping=self.stopping)
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
        if task.attempts <= task.retries and retry.quarantined(task, self.settings.quarantine_after):
            retry.note_quarantine(err, task)
        self._finish_error(task, err)

    # ------------------------------------------------------------ finishing

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
        self._out.append(Cancel(task, _cancelled(task)))

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

    # ------------------------------------------------------------- stopping

    def _on_shutdown(self, event: ShutdownRequested) -> None:
        self.stopping = True
        self.kill_on_stop = self.kill_on_stop or event.kill
        # A stream's consumer is usually the thread that is shutting down
        # (leaving the with block): waiting for the stream would deadlock, so
        # every stream still running or queued is cancelled.
        for task in list(self.queue):
            if task.stream is not None:
                self._finish_cancelled(task, "the pool stops")
        for agent in self.agents.values():
            for task in list(agent.held):
                if task.stream is not None:
                    self._cancel_stream(task)
        for task in list(self.inline_streams):
            self.inline_streams.discard(task)
            self._finish_cancelled(task, "the pool stops")
        if event.cancel_futures or event.kill:
            for task in list(self.queue.drain()):
                self._finish_cancelled(task, "shutdown(cancel_futures=True)")
        if event.kill:
            self._kill_all()

    def _kill_all(self) -> None:
        for agent in list(self.agents.values()):
            for task in list(agent.held):
                task.agent_id = None
                self._finish_cancelled(task, "the pool stops now")
            agent.held.clear()
            agent.exit_reason = (lifecycle.SHUTDOWN, None)
            if agent.live:
                self._agent_to(agent, AgentState.DRAINING, "killed at shutdown")
            agent.shutdown_sent = True
            agent.stop_deadline = self.now + timers.KILL_GRACE_S
            self._out.append(SignalAgent(agent.id, signal.SIGTERM, "shutdown"))
        if self.inline_task is not None:
            # It cannot be stopped: its caller is told now, its end is ignored.
            self._finish_cancelled(self.inline_task, "the pool stops now")

    def _stop_when_empty(self) -> None:
        """Stopping: once no work is left, every agent is told to stop."""
        if self.queue or self.inline_task is not None:
            return
        if any(a.held for a in self.agents.values()):
            return
        for agent in list(self.agents.values()):
            if agent.live:
                self._drain_agent(agent, "the pool stops")


def _cancelled(task: Task) -> TaskCancelled:
    return TaskCancelled(f"task {task.id} ({task.fn_name}) was cancelled", task_id=task.id, fn=task.fn_name)


def _frame_problem(kind: int, task_id: int, fields: list[Any], agent: AgentRecord) -> str | None:
    """Why a decoded frame from ``agent`` cannot be used, or None if it can.

    Checked before anything reads a field: a short or mistyped frame from a
    broken (or hostile) agent must kill that agent, never raise in the loop.
    """
    if kind not in _FROM_AGENT:
        return f"a {_kind_name(kind)} frame, which agents never send"
    if not agent.ready and kind not in (Kind.READY, Kind.WITHDRAWN) and not (kind == Kind.ERROR and task_id == 0):
        return f"a {_kind_name(kind)} frame before READY"
    n = len(fields)
    if kind == Kind.RESULT:
        return None if n >= 1 else "a RESULT frame without its value"
    if kind == Kind.ERROR:
        if n != 5:
            return f"an ERROR frame with {n} fields instead of 5"
        _exc, tb, type_name, message, flags = fields
        if not (_is_int(flags) and isinstance(type_name, str) and isinstance(message, str) and isinstance(tb, str | None)):
            return "an ERROR frame with fields of the wrong types"
        if task_id == 0 and agent.ready:
            return "an initializer ERROR frame after READY"
        return None
    if kind == Kind.READY:
        if n < 1 or not all(_is_int(f) for f in fields[:2]):
            return "a READY frame without its pid and baseline"
        return None
    if kind == Kind.STATS:
        if n < 1 or not (_is_int(fields[0]) or type(fields[0]) is float):
            return "a STATS frame without its timing"
        return None
    if kind == Kind.CHUNK:
        if n not in (2, 5) or not _is_int(fields[0]) or (n == 5 and not all(_is_int(f) for f in fields[2:])):
            return "a CHUNK frame with the wrong fields"
        return None
    if kind == Kind.END:
        if n < 1 or not _is_int(fields[0]) or (n > 1 and type(fields[1]) is not bool):
            return "an END frame with the wrong fields"
        return None
    return None  # WITHDRAWN: the task id is all it carries


def _is_int(value: object) -> bool:
    return type(value) is int


def _kind_name(kind: int) -> str:
    try:
        return Kind(kind).name
    except ValueError:
        return f"kind {kind}"


__all__ = ["Counters", "Machine", "SupervisorSettings"]
