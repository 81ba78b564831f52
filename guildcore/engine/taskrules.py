"""The state machine's rules for tasks: queue, dispatch, frames, streams, stopping.

This module covers ``TaskRules``: what the machine does with submitted
tasks (queue them, claim their futures, send them to agents or run them
inline, take back one sent ahead for an idle agent), with every frame an
agent sends about them (results, errors, chunks, timings, a task given
back; frames that break the protocol kill their agent), with a stream's
credits and cancellation, and with a shutdown. It does not cover agents'
own lives (``agentrules``).

Invariant: an agent runs what it holds in order, so a RESULT, ERROR, END,
CHUNK or STATS frame is about the head of its ``held`` (``_is_head``).
"""

from __future__ import annotations

import itertools
import signal

from guildcore import codec
from guildcore.codec import Kind
from guildcore.engine import dispatch, lifecycle, timers
from guildcore.engine.agent import FLAG_MEMORY, FLAG_TIMEOUT, MODE_STREAM
from guildcore.engine.agentrules import AgentRules
from guildcore.engine.events import (
    CallRequested,
    Cancel,
    CreditGranted,
    DiscardResult,
    FetchResult,
    FrameBad,
    FrameIn,
    InlineFinished,
    ResultFetched,
    RunCall,
    RunInline,
    Send,
    ShutdownRequested,
    SignalAgent,
    StreamCancelled,
    Submitted,
    TaskMoved,
    TaskRan,
)
from guildcore.engine.frames import frame_problem, kind_name
from guildcore.engine.lifecycle import AgentRecord
from guildcore.engine.poolstate import cancelled
from guildcore.engine.states import AgentState, TaskState
from guildcore.engine.task import ENDED, Task
from guildcore.errors import SerializationError

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any


class TaskRules(AgentRules):
    """Task events, dispatch and stopping (see the module docstring)."""

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
                    self._out.append(Cancel(task, cancelled(task)))
                    continue
                task.future_started = True
            return task
        return None

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
        # A stream is alone on its agent (dispatch sends it only to an empty
        # one, and nothing after it), so the head says whether one runs.
        return [dispatch.Slot(a.id, len(a.held), streaming=bool(a.held) and a.held[0].mode == MODE_STREAM) for a in live]

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
            from guildcore.engine import postmortem

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

    def _on_frame(self, event: FrameIn) -> None:
        agent = self.agents.get(event.agent_id)
        if agent is None or agent.state in (AgentState.DEAD, AgentState.STOPPED):
            return
        if agent.exit_reason is not None and agent.exit_reason[0] == lifecycle.MALFORMED:
            return  # being killed: nothing it says counts any more
        kind, task_id, fields = event.kind, event.task_id, event.fields
        problem = frame_problem(kind, task_id, fields, agent)
        if problem is not None:
            self._malformed(agent, problem)
            return
        if kind == Kind.READY:
            self._on_ready(agent, fields)
            return
        if kind == Kind.ERROR and task_id == 0:
            agent.exit_reason = (lifecycle.INITIALIZER, None)
            from guildcore.engine import postmortem

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
            self._malformed(agent, f"a {kind_name(kind)} frame for task {task_id}, which it had not begun")
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

    def _on_task_error(self, agent: AgentRecord, task: Task, fields: list[Any]) -> None:
        from guildcore.engine import postmortem  # errors only: not on a first result's path

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

    def _on_call(self, event: CallRequested) -> None:
        self._out.append(RunCall(event.fn, event.future))

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
