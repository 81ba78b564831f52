"""The supervisor: one owner thread that runs the agent pool.

Data flow::

    caller threads                      owner thread                     agents
    ──────────────                      ────────────                     ──────
    submit() ─> inbox (deque) ─wake─>   drain inbox ─> queue (heap)
                                        dispatch ──── TASK frame ──────> reader -> run
    Future <─ set_result/exception ──   on frame  <── RESULT / ERROR ─── main thread
                                        on sentinel <── exit ─────────── (death)
                                        timers: memory samples, timeouts, idle agents

Ownership: the owner thread alone touches agents, tasks in flight, the queue
and scaling state. Caller threads only append to the inbox and write one
byte to the wake-up pipe; results reach them through futures. There are no
locks on pool state because no other thread reads or writes it.

Invariant: an agent runs the tasks it was sent strictly in order, so the task
it is running is always the head of its ``held`` deque; a RESULT or ERROR
frame always finishes that head.

Invariant: every task ends DONE, FAILED (with its cause) or CANCELLED: a
task lost with its agent is retried or failed with ``AgentDied``; shutdown
cancels what it does not run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from guildcore import codec
from guildcore.codec import Kind
from guildcore.engine import dispatch, limits, postmortem, scaling, shmbuf
from guildcore.engine.agent import FLAG_MEMORY, FLAG_TIMEOUT, MODE_STREAM
from guildcore.engine.inbox import Inbox
from guildcore.engine.pool import AgentHandle, AgentStarter, StartFailed
from guildcore.engine.states import AgentState, TaskState
from guildcore.engine.task import ENDED, Task, budget
from guildcore.errors import (
    GuildError,
    MemoryLimitExceeded,
    PoolBroken,
    SerializationError,
    ShutdownError,
    TaskCancelled,
    TaskTimeout,
    describe_exitcode,
)
from guildcore.metrics.recorder import RunRecorder, error_name, exit_reason

log = logging.getLogger("guildcore.supervisor")

# After SIGTERM, how long an agent gets before SIGKILL.
_KILL_GRACE_S = 1.0
# Consecutive agents that die before READY before the pool gives up on
# agents and runs tasks inline (sequential fallback).
_MAX_START_FAILURES = 3
# How long shutdown waits for an agent to exit after SHUTDOWN before killing it.
_STOP_DEADLINE_S = 5.0


@dataclass(frozen=True)
class SupervisorSettings:
    """The parts of Config the owner loop reads, resolved to plain values."""

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


@dataclass
class _Counters:
    submitted: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    agents_started: int = 0
    agents_died: int = 0
    agents_replaced_memory: int = 0
    agents_replaced_timeout: int = 0
    peak_private_bytes: dict[int, int] = field(default_factory=dict)


class Supervisor:
    """Owns the pool; every public method may be called from any thread."""

    def __init__(self, settings: SupervisorSettings, starter: AgentStarter, recorder: RunRecorder | None = None) -> None:
        self.settings = settings
        self.recorder = recorder  # metrics; None when monitoring.metrics is off
        self._starter = starter
        self._inbox = Inbox()
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._front_seq = itertools.count(-1, -1)
        self._closed = False  # no new submissions (caller-visible)
        self._thread: threading.Thread | None = None
        # --- owner-thread state below; nothing else touches it ---
        self._queue: list[tuple[int, int, Task]] = []
        self._agents: dict[int, AgentHandle] = {}
        self._agent_ids = itertools.count(1)
        self._last_rr = -1
        self._stopping = False
        self._kill_on_stop = False
        self._broken: PoolBroken | None = None
        self._inline = not settings.parallel
        self._inline_warned = not settings.parallel  # the Guild warned already
        self._start_failures = 0
        self._next_sample = 0.0
        self._next_scale_check: float | None = None
        self.counters = _Counters()
        self._finished = threading.Event()
        # Set when the first agent is ready: until then a map runs its items
        # in the caller (the Guild's boot-time inline run).
        self.booted = threading.Event()
        # One selector for the life of the loop, registered with the wake-up
        # pipe and every agent's pipe and sentinel as they come and go:
        # building one per wait (multiprocessing.connection.wait) cost ~40 µs
        # per loop turn, against ~3 µs for a select on a kept epoll set.
        # Ownership: the owner thread alone registers, selects and closes it.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._inbox.wake_fd, selectors.EVENT_READ, None)

    # ------------------------------------------------------------ caller side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="guild-supervisor", daemon=True)
        self._thread.start()

    def new_task_id(self) -> int:
        return next(self._ids)

    def submit(self, tasks: list[Task]) -> None:
        if self._closed:
            raise ShutdownError("cannot submit: this Guild is shut down; create a new Guild")
        self._post("submit", tasks)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` in the owner thread (to read or change pool state safely).

        Called from the owner thread itself (a future's done-callback runs
        there), ``fn`` runs at once: posting would wait on this very thread.
        """
        fut: Future[Any] = Future()
        if self.on_owner_thread():
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
            return fut
        self._post("call", (fn, fut))
        return fut

    def on_owner_thread(self) -> bool:
        """Whether the caller is the owner loop's thread (inside a done-callback)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def grant_credit(self, task: Task, n: int) -> None:
        self._post("credit", (task, n))

    def cancel_stream(self, task: Task) -> None:
        self._post("cancel", task)

    def shutdown(self, *, wait: bool, cancel_futures: bool, kill: bool = False) -> None:
        self._closed = True
        self._post("shutdown", (cancel_futures, kill))
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def _post(self, kind: str, payload: Any) -> None:
        if not self._inbox.post(kind, payload) and kind == "call":
            payload[1].set_exception(ShutdownError("this Guild is shut down"))

    # ------------------------------------------------------------- owner loop

    def _run(self) -> None:
        try:
            self._scale(time.monotonic())
            while True:
                self._drain_inbox()
                now = time.monotonic()
                self._dispatch(now)
                self._check_timers(now)
                self._scale(now)
                # Checked after the work of this turn: an inline batch may
                # just have emptied the queue, and nothing would wake the wait.
                if self._stopping and self._ready_to_exit():
                    break
                self._wait(self._next_deadline(time.monotonic()))
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("guildcore supervisor loop crashed")
            self._fail_everything(GuildError(f"the supervisor loop crashed ({type(exc).__name__}: {exc}); this is a bug in guildcore"))
        finally:
            self._teardown()
            self._finished.set()

    def _wait(self, timeout: float | None) -> None:
        for key, _events in self._selector.select(timeout):
            if key.data is None:  # the inbox's wake-up pipe
                self._inbox.woken()
                continue
            agent, is_conn = key.data
            if agent.state in (AgentState.DEAD, AgentState.STOPPED):
                continue  # already handled through its other waitable
            if is_conn:
                self._read_frames(agent)
            else:
                self._on_agent_exit(agent)

    def _drain_inbox(self) -> None:
        while self._inbox:
            kind, payload = self._inbox.take()
            if kind == "submit":
                for task in payload:
                    self._enqueue(task)
            elif kind == "call":
                fn, fut = payload
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:
                        fut.set_exception(exc)
            elif kind == "credit":
                task, n = payload
                self._send_credit(task, n)
            elif kind == "cancel":
                self._cancel_stream(payload)
            elif kind == "shutdown":
                cancel_futures, kill = payload
                self._begin_stop(cancel_futures, kill)

    # ------------------------------------------------------------------ queue

    def _enqueue(self, task: Task) -> None:
        if self._broken is not None:
            self._finish_error(task, self._broken)
            return
        if self._stopping and self._kill_on_stop:
            self._finish_cancelled(task)
            return
        self.counters.submitted += 1
        if self.recorder is not None:
            self.recorder.task_queued(task.id, task.fn_name, task.n_items, time.monotonic())
        heapq.heappush(self._queue, (task.priority, next(self._seq), task))

    def _pop_task(self) -> Task | None:
        while self._queue:
            _prio, _seq, task = heapq.heappop(self._queue)
            if task.state in ENDED:
                continue  # cancelled while it waited
            if not task.future_started:
                # The caller may have cancelled the future while it waited.
                if not task.future.set_running_or_notify_cancel():
                    task.set_state(TaskState.CANCELLED)
                    self.counters.cancelled += 1
                    self._task_done(task)
                    continue
                task.future_started = True
            return task
        return None

    def _peek_is_stream(self) -> bool:
        return bool(self._queue) and self._queue[0][2].mode == MODE_STREAM

    # --------------------------------------------------------------- dispatch

    def _slots(self) -> list[dispatch.Slot]:
        return [
            dispatch.Slot(a.id, len(a.held), streaming=any(t.mode == MODE_STREAM for t in a.held))
            for a in self._agents.values()
            if a.state in (AgentState.STARTING, AgentState.IDLE, AgentState.BUSY)
        ]

    def _dispatch(self, now: float) -> None:
        if self._inline:
            self._run_inline_batch()
            return
        capacity = 1 + self.settings.prefetch
        while self._queue:
            slots = self._slots()
            if not slots:
                return
            agent_id = dispatch.choose(
                slots,
                capacity=capacity,
                strategy=self.settings.balancing,
                last_id=self._last_rr,
                for_stream=self._peek_is_stream(),
            )
            if agent_id is None:
                return
            task = self._pop_task()
            if task is None:
                return
            self._last_rr = agent_id
            self._send_task(self._agents[agent_id], task, now)
        self._steal_for_idle()

    def _steal_for_idle(self) -> None:
        """An agent idles while another holds tasks sent ahead: ask for one back.

        Prefetch keeps agents from waiting between tasks, but a task sent
        ahead would otherwise wait behind its agent's current one however
        long that runs. The holder gives the task back only if it has not
        begun it (WITHDRAWN); the next dispatch sends it to the idle agent.
        """
        if self._queue or self._stopping:
            return
        idle = sum(1 for a in self._agents.values() if a.state is AgentState.IDLE and not a.held)
        for agent in self._agents.values():
            if idle <= 0:
                return
            if agent.state is not AgentState.BUSY or len(agent.held) < 2:
                continue
            task = agent.held[-1]
            if task.withdrawing or task.stream is not None:
                continue
            task.withdrawing = True
            _send(agent, codec.encode_frame(Kind.WITHDRAW, task.id))
            idle -= 1

    def _send_task(self, agent: AgentHandle, task: Task, now: float) -> None:
        task.set_state(TaskState.RUNNING)
        task.attempts += 1
        try:
            payload = task.payload
            if task.stream is not None and task.stream.ring is not None:
                payload = [*payload, task.stream.ring.describe()]  # the agent's shm ring for big chunks
            frame = codec.encode_frame(Kind.TASK, task.id, task.mode, task.spec, payload, task.timeout_s, task.ctx_ref)
        except SerializationError as exc:
            msg = f"task {task.id} ({task.fn_name}) cannot be sent to an agent: {exc}"
            self._finish_error(task, SerializationError.because(msg, exc, stage="arguments"))
            return
        limit = self.settings.limit_bytes
        if limit is not None and len(frame) > limit:
            # The agent could not even hold the arguments under its limit:
            # fail now, not after wedging its pipe or killing it.
            self._finish_error(task, postmortem.arguments_too_big(task, len(frame), limit))
            return
        if not agent.held:
            task.started_at = now
        agent.held.append(task)
        if self.recorder is not None:
            self.recorder.task_sent(task.id, agent.id, now)
        if agent.state is AgentState.IDLE:
            agent.set_state(AgentState.BUSY)
        if _send(agent, frame) and task.stream is not None:
            _send(agent, codec.encode_frame(Kind.CREDIT, task.id, task.stream.window))

    # ----------------------------------------------------------- agent frames

    def _read_frames(self, agent: AgentHandle) -> None:
        conn = agent.conn
        try:
            while True:
                data = conn.recv_bytes()
                self._on_frame(agent, data)
                if agent.state in (AgentState.DEAD, AgentState.STOPPED) or not conn.poll():
                    return
        except (EOFError, OSError):
            if agent.state not in (AgentState.DEAD, AgentState.STOPPED):
                self._on_agent_exit(agent)

    def _on_frame(self, agent: AgentHandle, data: bytes) -> None:
        try:
            kind, task_id, fields = codec.decode_frame(data)
        except SerializationError as exc:
            log.error("agent %d sent a malformed frame (%s); replacing it", agent.id, exc)
            agent.exit_reason = ("malformed", str(exc))
            self._kill(agent)
            return
        if kind == Kind.READY:
            agent.baseline_private = int(fields[1]) if len(fields) > 1 else 0
            self._start_failures = 0
            self.booted.set()
            if self.recorder is not None:
                self.recorder.agent_ready(agent.id, time.monotonic())
            if agent.state is AgentState.STARTING:
                agent.set_state(AgentState.BUSY if agent.held else AgentState.IDLE)
                agent.idle_since = time.monotonic()
            return
        if kind == Kind.ERROR and task_id == 0:
            self._on_initializer_failed(agent, fields)
            return
        if kind == Kind.WITHDRAWN:
            withdrawn = agent.find(task_id)
            if withdrawn is not None:  # else it finished first: its result came before this
                self._pop_held(agent, withdrawn, ran=False)
                withdrawn.withdrawing = False
                self._unsend(withdrawn)
            return
        task = agent.find(task_id)
        if task is None:
            if kind == Kind.RESULT and len(fields) > 1:
                shmbuf.discard_result(os.getpid(), task_id)  # Ownership: nobody else will unlink it
            return  # a late frame for a task already failed or cancelled
        if kind == Kind.RESULT and (len(fields) > 1 or task.raw_result):
            self._pop_held(agent, task)
            self._on_big_result(task, fields)
        elif kind == Kind.RESULT:
            self._pop_held(agent, task)
            self._finish_result(task, fields[0])
        elif kind == Kind.ERROR:
            self._pop_held(agent, task)
            self._on_task_error(agent, task, fields)
        elif kind == Kind.STATS:
            task.compute_s = float(fields[0])
            if self.recorder is not None:
                self.recorder.task_ran(task.id, agent.id, fields, time.monotonic())
        elif kind == Kind.CHUNK:
            if task.stream is not None:
                task.stream.put_chunk(fields[0], fields[1], fields[2:], now=time.monotonic())
        elif kind == Kind.END:
            self._pop_held(agent, task)
            cancelled = bool(fields[1]) if len(fields) > 1 else False
            if cancelled:
                self._finish_cancelled(task)
            else:
                self._finish_result(task, None)

    def _on_big_result(self, task: Task, fields: list[Any]) -> None:
        """A RESULT through shared memory, or any result the caller wants as a stream."""
        try:
            if len(fields) > 1:
                value = shmbuf.take_result(os.getpid(), task.id, fields, raw=task.raw_result)
            else:
                value = shmbuf.stream_for(fields[0])
        except (SerializationError, OSError) as exc:
            self._finish_error(task, SerializationError(f"the result of task {task.id} ({task.fn_name}) could not be read: {exc}"))
            return
        self._finish_result(task, value)

    def _pop_held(self, agent: AgentHandle, task: Task, *, ran: bool = True) -> None:
        now = time.monotonic()
        if agent.held and agent.held[0] is task:
            agent.held.popleft()
        else:
            agent.held.remove(task)
        if ran:
            agent.tasks_done += 1
        if agent.held:
            agent.held[0].started_at = now
        elif agent.state is AgentState.BUSY:
            agent.set_state(AgentState.IDLE)
            agent.idle_since = now
        limit = self.settings.max_tasks_per_agent
        if limit and agent.tasks_done >= limit and agent.state in (AgentState.IDLE, AgentState.BUSY):
            self._drain_agent(agent)  # recycle: no new tasks; SHUTDOWN once empty
        if agent.state is AgentState.DRAINING and not agent.held:
            self._send_shutdown(agent)

    def _on_task_error(self, agent: AgentHandle, task: Task, fields: list[Any]) -> None:
        flags = fields[4]
        err = postmortem.reported_error(agent, task, fields, self.settings.limit_bytes)
        if flags & FLAG_MEMORY:
            # The agent exits by itself after this report (its heap is at the
            # cap): send it nothing more; what it holds goes back to the queue.
            agent.exit_reason = ("memory-reported", None)
            self.counters.agents_replaced_memory += 1
            if agent.state in (AgentState.STARTING, AgentState.IDLE, AgentState.BUSY):
                agent.set_state(AgentState.DRAINING)
            agent.shutdown_sent = True
            agent.stop_deadline = time.monotonic() + _STOP_DEADLINE_S
            self._retry_or_fail(task, err, agent_killed=True)
            return
        if flags & FLAG_TIMEOUT:
            self._retry_or_fail(task, err, agent_killed=False)
            return
        self._finish_error(task, err)

    def _on_initializer_failed(self, agent: AgentHandle, fields: list[Any]) -> None:
        agent.exit_reason = ("initializer", None)
        self._break(postmortem.initializer_failed(fields))

    def _break(self, broken: PoolBroken) -> None:
        """Agents cannot start: every pending and later task fails with ``broken``."""
        self._broken = broken
        self._fail_everything(broken)

    # ------------------------------------------------------------ agent exits

    def _on_agent_exit(self, agent: AgentHandle) -> None:
        """The agent's process ended: account for every task it held."""
        # Results it sent before dying are still in the pipe: take them first.
        try:
            while agent.conn.poll():
                self._on_frame(agent, agent.conn.recv_bytes())
        except (EOFError, OSError):
            pass
        agent.process.join(timeout=1.0)
        exitcode = agent.process.exitcode
        expected = agent.state is AgentState.DRAINING and agent.shutdown_sent
        died_starting = agent.state is AgentState.STARTING
        agent.set_state(AgentState.STOPPED if expected else AgentState.DEAD)
        if self.recorder is not None:
            why = exit_reason(expected, died_starting, agent.exit_reason, exitcode)
            self.recorder.agent_exited(agent.id, why, time.monotonic())
        self._unwatch(agent)
        agent.close()
        del self._agents[agent.id]
        if expected:
            # Invariant: an agent told to stop runs nothing more; whatever it
            # still held had not started, so it goes back to the queue.
            for task in list(agent.held):
                self._unsend(task)
            agent.held.clear()
            return
        self.counters.agents_died += 1
        if died_starting:
            self._start_failures += 1
        held = list(agent.held)
        agent.held.clear()
        if died_starting:
            # It never sent READY, so it never ran what it was sent ahead of
            # time: back to the queue, unless shutdown already cancelled it.
            for task in held:
                if self._stopping and task.stream is not None:
                    self._finish_cancelled(task)
                else:
                    self._unsend(task)
        elif held:
            running, prefetched = held[0], held[1:]
            shmbuf.discard_result(os.getpid(), running.id)  # a big result it may have been writing
            err = postmortem.death_error(agent, running, exitcode, self.settings.limit_bytes, time.monotonic())
            if isinstance(err, MemoryLimitExceeded):
                self.counters.agents_replaced_memory += 1
            elif isinstance(err, TaskTimeout):
                self.counters.agents_replaced_timeout += 1
            self._retry_or_fail(running, err, agent_killed=True)
            for task in prefetched:
                self._unsend(task)
        if self._start_failures >= _MAX_START_FAILURES and not self._inline and self._broken is None:
            why = f"{self._start_failures} agents in a row died before they were ready (last: {describe_exitcode(exitcode)})"
            if self._starter.initializer is None:
                self._go_inline(why)
            else:
                # Inline tasks would run without the initializer's state, and
                # the initializer is the likely killer: break, as when it raises.
                self._break(postmortem.agents_die_at_start(why))

    def _unsend(self, task: Task) -> None:
        """A task sent to an agent that never started it: back to the queue, no attempt counted."""
        task.attempts -= 1
        task.set_state(TaskState.PENDING)
        self._requeue(task)

    def _retry_or_fail(self, task: Task, err: BaseException, *, agent_killed: bool) -> None:
        if agent_killed:
            task.agent_kills += 1
        quarantined = task.agent_kills >= self.settings.quarantine_after
        if task.attempts <= task.retries and not quarantined and not self._stopping and task.stream is None:
            self.counters.retried += 1
            if self.recorder is not None:
                self.recorder.task_retried(task.id, type(err).__name__, time.monotonic())
            task.set_state(TaskState.RETRYING)
            self._requeue(task)
            return
        if quarantined and task.attempts <= task.retries and isinstance(err, GuildError):
            err.args = (
                f"{err.args[0]}; task {task.id} was quarantined after killing agents {task.agent_kills} times "
                "(pool.quarantine_after) and is not retried again",
            )
        self._finish_error(task, err)

    def _requeue(self, task: Task) -> None:
        if self._stopping and self._kill_on_stop:
            self._finish_cancelled(task)
            return
        heapq.heappush(self._queue, (task.priority, next(self._front_seq), task))

    # ------------------------------------------------------------------ timers

    def _check_timers(self, now: float) -> None:
        if self.recorder is not None and now >= self.recorder.next_tick:
            self.recorder.tick(now, self.snapshot)
        busy = [a for a in self._agents.values() if a.held and a.state is not AgentState.DEAD]
        if now >= self._next_sample:
            self._next_sample = now + self.settings.sample_interval_s
            limit = self.settings.limit_bytes
            for agent in busy:
                if agent.state is AgentState.STARTING:
                    continue  # its baseline arrives with READY; nothing of a task runs yet
                private = limits.read_private_bytes(agent.pid)
                if private is None:
                    continue
                private = max(0, private - agent.baseline_private)
                agent.last_private = private
                if self.recorder is not None:
                    self.recorder.memory_sample(agent.id, private, now)
                agent.peak_private = max(agent.peak_private or 0, private)
                self.counters.peak_private_bytes[agent.id] = agent.peak_private
                if limit and private > limit and agent.exit_reason is None:
                    agent.exit_reason = ("memory", private)
                    self._kill(agent)
        for agent in busy:
            head = agent.held[0]
            if agent.kill_at is not None and now >= agent.kill_at:
                agent.kill_at = None
                self._signal(agent, signal.SIGKILL)
                continue
            if head.timeout_s is None or head.started_at is None or agent.exit_reason is not None:
                continue
            if head.stream is not None and head.stream.paused_since is not None:
                continue  # paused by backpressure, not running: resume() moves started_at on
            if now >= head.started_at + budget(head) + self.settings.timeout_grace_s + _paused_s(head):
                agent.exit_reason = ("timeout", head.id)
                self._signal(agent, signal.SIGTERM)
                agent.kill_at = now + _KILL_GRACE_S
        for agent in self._agents.values():
            if agent.state is AgentState.DRAINING and agent.stop_deadline is not None and now >= agent.stop_deadline:
                agent.stop_deadline = None
                self._signal(agent, signal.SIGKILL)

    def _next_deadline(self, now: float) -> float | None:
        deadlines: list[float] = []
        if self._inbox:
            return 0.0
        if self._inline and self._queue:
            return 0.0
        for agent in self._agents.values():
            if agent.held:
                deadlines.append(self._next_sample)
                head = agent.held[0]
                paused = head.stream is not None and head.stream.paused_since is not None
                if head.timeout_s is not None and head.started_at is not None and not paused:
                    deadlines.append(head.started_at + budget(head) + self.settings.timeout_grace_s + _paused_s(head))
            if agent.kill_at is not None:
                deadlines.append(agent.kill_at)
            if agent.stop_deadline is not None:
                deadlines.append(agent.stop_deadline)
        if self._next_scale_check is not None:
            deadlines.append(self._next_scale_check)
        if self.recorder is not None:
            deadlines.append(self.recorder.next_tick)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    # ----------------------------------------------------------------- scaling

    def _scale(self, now: float) -> None:
        if self._inline or self._broken is not None:
            return
        if self._stopping:
            self._next_scale_check = None
            if not self._queue and not any(a.held for a in self._agents.values()):
                for agent in list(self._agents.values()):
                    if agent.state in (AgentState.STARTING, AgentState.IDLE, AgentState.BUSY):
                        self._drain_agent(agent)
            elif self._queue and not self._live_agents():
                self._start_agent()  # pending work still needs somewhere to run
            return
        # Waiting work: the queue plus tasks prefetched behind a running one.
        waiting = len(self._queue) + sum(max(0, len(a.held) - 1) for a in self._agents.values())
        view = scaling.PoolView(
            queued=waiting,
            agents=[
                scaling.AgentView(a.id, a.state is AgentState.STARTING, a.idle_since if a.state is AgentState.IDLE else None)
                for a in self._live_agents()
            ],
            min_agents=self.settings.min_agents,
            max_agents=self.settings.max_agents,
            scale_up_queue_length=self.settings.scale_up_queue_length,
            idle_timeout_s=self.settings.idle_timeout_s,
        )
        plan = scaling.decide(view, now)
        for _ in range(plan.start):
            if not self._start_agent():
                break
        for agent_id in plan.stop:
            self._drain_agent(self._agents[agent_id])
        self._next_scale_check = plan.next_check_at

    def _live_agents(self) -> list[AgentHandle]:
        return [a for a in self._agents.values() if a.state in (AgentState.STARTING, AgentState.IDLE, AgentState.BUSY)]

    def _start_agent(self) -> bool:
        agent_id = next(self._agent_ids)
        try:
            agent = self._starter.start(agent_id)
        except StartFailed as exc:
            self._start_failures += 1
            log.warning("agent %d could not start: %s", agent_id, exc)
            if self._start_failures >= _MAX_START_FAILURES or not self._agents:
                self._go_inline(str(exc))
            return False
        self._agents[agent.id] = agent
        self._selector.register(agent.conn.fileno(), selectors.EVENT_READ, (agent, True))
        self._selector.register(agent.sentinel, selectors.EVENT_READ, (agent, False))
        self.counters.agents_started += 1
        if self.recorder is not None:
            self.recorder.agent_started(agent.id, agent.pid, time.monotonic())
        return True

    def _unwatch(self, agent: AgentHandle) -> None:
        # Invariant: unregister before the fds close; a closed fd's number may
        # be reused by the next agent, and epoll would refuse it as known.
        for fd in (agent.conn.fileno(), agent.sentinel):
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _drain_agent(self, agent: AgentHandle) -> None:
        agent.set_state(AgentState.DRAINING)
        if not agent.held:
            self._send_shutdown(agent)

    def _send_shutdown(self, agent: AgentHandle) -> None:
        if agent.shutdown_sent:
            return
        agent.shutdown_sent = True
        agent.stop_deadline = time.monotonic() + _STOP_DEADLINE_S
        _send(agent, codec.encode_frame(Kind.SHUTDOWN, 0))

    def _kill(self, agent: AgentHandle) -> None:
        self._signal(agent, signal.SIGKILL)

    def _signal(self, agent: AgentHandle, sig: int) -> None:
        try:
            os.kill(agent.pid, sig)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------- inline fallback

    def _go_inline(self, why: str) -> None:
        self._inline = True
        if not self._inline_warned:
            self._inline_warned = True
            warnings.warn(
                f"guildcore could not start agents ({why}); running tasks inline in the supervisor "
                "(sequential fallback). Check pool.start_method and the host's process limits.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _run_inline_batch(self) -> None:
        """Run queued tasks in this thread, a few at a time so the inbox stays served."""
        from guildcore.engine.inline import run_inline

        for _ in range(16):
            task = self._pop_task()
            if task is None:
                return
            task.set_state(TaskState.RUNNING)
            task.attempts += 1
            ok, value = run_inline(task)
            if task.stream is not None:
                continue  # the consumer drives an inline stream itself
            if ok:
                self._finish_result(task, value)
            else:
                self._finish_error(task, value)

    # ------------------------------------------------------------ streaming

    def _send_credit(self, task: Task, n: int) -> None:
        if task.stream is not None:
            paused_s = task.stream.resume(n, time.monotonic())
            if task.started_at is not None:
                task.started_at += paused_s  # time waiting for the consumer is not run time
        agent = self._holder(task)
        if agent is not None:
            _send(agent, codec.encode_frame(Kind.CREDIT, task.id, n))

    def _cancel_stream(self, task: Task) -> None:
        if task.state is TaskState.PENDING:
            self._finish_cancelled(task)
            return
        agent = self._holder(task)
        if agent is not None:
            _send(agent, codec.encode_frame(Kind.CANCEL, task.id))

    def _holder(self, task: Task) -> AgentHandle | None:
        """The agent that holds ``task``, if any."""
        for agent in self._agents.values():
            if task in agent.held:
                return agent
        return None

    # ------------------------------------------------------------ finishing

    def _finish_result(self, task: Task, value: Any) -> None:
        task.set_state(TaskState.DONE)
        self.counters.done += 1
        if task.stream is not None:
            task.stream.finish(None)
        if not task.future.done():
            task.future.set_result(value)
        self._task_done(task)

    def _finish_error(self, task: Task, err: BaseException) -> None:
        if task.state in ENDED:
            return
        task.set_state(TaskState.FAILED)
        self.counters.failed += 1
        if task.stream is not None:
            task.stream.finish(err)
        _set_exception(task.future, err)
        self._task_done(task)

    def _finish_cancelled(self, task: Task) -> None:
        if task.state in ENDED:
            return
        task.set_state(TaskState.CANCELLED)
        self.counters.cancelled += 1
        err = TaskCancelled(f"task {task.id} ({task.fn_name}) was cancelled", task_id=task.id, fn=task.fn_name)
        if task.stream is not None:
            task.stream.finish(err)
        if not task.future.cancel():
            _set_exception(task.future, err)
        self._task_done(task)

    def _task_done(self, task: Task) -> None:
        task.payload = None  # let big arguments go as soon as possible
        if self.recorder is not None:
            failed = error_name(task.future) if task.state is TaskState.FAILED else None
            self.recorder.task_finished(task.id, task.state.name.lower(), failed, time.monotonic())
        if task.on_done is not None:
            try:
                task.on_done(task)
            except Exception:
                log.exception("task %d completion hook failed", task.id)

    def _fail_everything(self, err: BaseException) -> None:
        while self._queue:
            _p, _s, task = heapq.heappop(self._queue)
            self._finish_error(task, err)
        for agent in list(self._agents.values()):
            for task in list(agent.held):
                self._finish_error(task, err)
            agent.held.clear()

    # ------------------------------------------------------------ stopping

    def _begin_stop(self, cancel_futures: bool, kill: bool) -> None:
        self._stopping = True
        self._kill_on_stop = self._kill_on_stop or kill
        # A stream's consumer is usually the thread that is shutting down
        # (leaving the with block): waiting for the stream would deadlock, so
        # every stream still running or queued is cancelled.
        for _p, _s, task in self._queue:
            if task.stream is not None:
                self._finish_cancelled(task)
        for agent in self._agents.values():
            for task in list(agent.held):
                if task.stream is not None:
                    self._cancel_stream(task)
        if cancel_futures or kill:
            while self._queue:
                _p, _s, task = heapq.heappop(self._queue)
                self._finish_cancelled(task)
        if kill:
            for agent in list(self._agents.values()):
                for task in list(agent.held):
                    self._finish_cancelled(task)
                agent.held.clear()
                agent.exit_reason = ("shutdown", None)
                if agent.state in (AgentState.STARTING, AgentState.IDLE, AgentState.BUSY):
                    agent.set_state(AgentState.DRAINING)
                agent.shutdown_sent = True
                self._signal(agent, signal.SIGTERM)
                agent.stop_deadline = time.monotonic() + _KILL_GRACE_S

    def _ready_to_exit(self) -> bool:
        if self._queue or self._inbox:
            return False
        if any(a.held for a in self._agents.values()):
            return False
        if self._agents:
            for agent in list(self._agents.values()):
                if agent.state in (AgentState.STARTING, AgentState.IDLE, AgentState.BUSY):
                    self._drain_agent(agent)
            return False
        return True

    def _teardown(self) -> None:
        self._selector.close()
        for agent in list(self._agents.values()):
            self._signal(agent, signal.SIGKILL)
            agent.process.join(timeout=2.0)
            agent.close()
        self._agents.clear()
        shmbuf.sweep_results(os.getpid())  # Ownership: results of agents killed while stopping
        # Invariant: nothing posted is lost, even what raced with the end.
        for kind, payload in self._inbox.close():
            if kind == "submit":
                for task in payload:
                    self._finish_cancelled(task)
            elif kind == "call":
                payload[1].set_exception(ShutdownError("this Guild is shut down"))

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """Pool state for stats (call through ``call`` to read it safely)."""
        return {
            "agents": [a.describe() for a in self._agents.values()],
            "queued": len(self._queue),
            "inline": self._inline,
            "counters": {
                k: v for k, v in vars(self.counters).items() if k != "peak_private_bytes"
            },
            "peak_private_bytes": dict(self.counters.peak_private_bytes),
        }


def _paused_s(task: Task) -> float:
    """Time a stream's agent spent waiting for its consumer, as its ring reports it: not run time."""
    return task.stream.paused_total_s if task.stream is not None else 0.0


def _set_exception(future: Future[Any], err: BaseException) -> None:
    if future.done():
        return
    if not future.running() and not future.set_running_or_notify_cancel():
        return
    try:
        future.set_exception(err)
    except Exception:
        pass


def _send(agent: AgentHandle, frame: bytes) -> bool:
    """Send one frame; False if the agent is dying (its sentinel will fire,
    and what it held is retried or failed there)."""
    try:
        agent.conn.send_bytes(frame)
    except OSError:
        return False
    return True
