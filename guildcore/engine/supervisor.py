"""The supervisor: one owner thread that does the pool's I/O.

Data flow::

    caller threads                  owner thread (this module)               agents
    ──────────────                  ──────────────────────────               ──────
    submit() ─> inbox ─wake─>  events ─> Machine.handle_batch ─> actions
                                  ^          (machine: decides)     │
                                  │                                 v
                               frames <── FrameReader <──── RESULT / ERROR / CHUNK
                               exits  <── sentinels                 │
                               memory <── /proc reads   Send ─> FrameWriter ─> TASK frames
    Future <── set_result / set_exception <── Resolve / Fail / Cancel

The loop does I/O only: it waits on every agent's pipe and sentinel plus the
inbox's wake-up pipe (one selector for its whole life), never blocking on any
one of them (pipes are non-blocking: ``wire``), turns what it reads
into events, hands them with the clock reading to the ``Machine``, and
carries out the actions that come back: writing frames, signalling and
starting agents, reading memory, reading results out of shared memory,
resolving futures. Whatever an action learns (an agent started, a
result read, memory sampled) goes back in as the next event. What to do is
never decided here: see ``machine``.

Ownership: the owner thread alone touches the machine, the agents' handles
and the selector. Caller threads only post to the inbox and write one byte
to the wake-up pipe; results reach them through futures. There are no locks
on pool state because no other thread reads or writes it.

Invariant: no exception from user code ends the loop. User code runs here
when a frame's value is decoded (unpickling), when a future's callbacks run,
in a task's completion hook and in ``call``: each is guarded for
``BaseException`` (``SystemExit`` included) and fails only its task. Tasks
that run inline run on the inline runner's thread (``inline``), never here.
If the loop still ends by a bug in guildcore, every task it held fails, and
the Guild refuses new work with ``PoolBroken`` instead of accepting it.

Observers: ``observe(fn)`` adds ``fn(now, action)``, called on the owner
thread for every action the machine returns, in order, with the clock
reading of its batch; that includes the records ``TaskMoved`` (task queued,
sent, begun, done, failed with its error type, retried, split, cancelled,
with the queue's length after), ``AgentMoved`` (started, ready, idle, busy,
draining, stopped, died, each with its reason), ``TaskRan`` (an agent's own
timing of a task) and ``MemoryNoted`` (each agent's private memory at each
sample), which the machine makes only once someone observes. An observer
must be quick and must not block; what it raises is logged and ignored.
Metrics are built on this hook (``recording.RecorderObserver``); the
recorder's periodic ``tick`` runs on this loop's timer.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import selectors
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError

from guildcore import codec, errors  # errors.PoolBroken loads when first raised
from guildcore._records import made_once
from guildcore.codec import Kind
from guildcore.engine import limits
from guildcore.engine.events import (
    Action,
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
    ModeChanged,
    ReadMonitor,
    ReleaseMemory,
    Resolve,
    ResultFetched,
    RunCall,
    RunInline,
    SampleMemory,
    Send,
    SetCaching,
    ShrinkCaches,
    ShutdownRequested,
    SignalAgent,
    StartAgent,
    StreamCancelled,
    Submitted,
    TaskMoved,
    TaskRan,
    Warn,
)
from guildcore.engine.inbox import Inbox
from guildcore.engine.pool import AgentHandle, AgentStarter, StartFailed
from guildcore.engine.recording import RecorderObserver
from guildcore.engine.supsettings import SupervisorSettings
from guildcore.engine.task import Task
from guildcore.engine.wire import FrameReader, FrameTooBig, FrameWriter
from guildcore.errors import (
    GuildError,
    SerializationError,
    ShutdownError,
    TaskCancelled,
)

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.engine.inline import InlineRunner
    from guildcore.engine.machine import Counters, Machine
    from guildcore.engine.monitorio import MonitorIO
    from guildcore.metrics.recorder import RunRecorder

log = logging.getLogger("guildcore.supervisor")

# The longest frame the supervisor reads from an agent, in multiples of the
# agent's hard memory cap: an agent cannot build a frame much bigger than the
# memory it may hold (a forked agent may hold inherited pages too, hence the
# margin). A longer length header is a broken agent: it is killed, before
# anything is allocated for the frame.
_MAX_FRAME_CAPS = 4
# How long teardown waits for the inline runner to end the task it runs.
_INLINE_STOP_S = 2.0

Observer = Callable[[float, Action], None]

__all__ = ["Observer", "Supervisor", "SupervisorSettings"]


class Supervisor:
    """Owns the pool; every public method may be called from any thread."""

    def __init__(
        self,
        settings: SupervisorSettings,
        starter: AgentStarter,
        recorder: RunRecorder | None = None,
        monitor_io: MonitorIO | None = None,
    ) -> None:
        self.settings = settings
        self.recorder = recorder  # metrics; None when monitoring.metrics is off
        if monitor_io is None and settings.monitor is not None:
            from guildcore.engine.monitorio import default_io

            monitor_io = default_io(recorder)
        self.monitor_io = monitor_io  # the memory monitor's I/O; None when monitoring.enabled is off
        self._starter = starter
        self._inbox = Inbox()
        self._ids = itertools.count(1)
        self._closed = False  # no new submissions (caller-visible)
        self._crashed: str | None = None  # why the loop ended by a bug (caller-visible)
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        # Set when the first agent is ready: until then a map runs its items
        # in the caller (the Guild's boot-time inline run).
        self.booted = threading.Event()
        self.observers: list[Observer] = []
        # --- owner-thread state below; nothing else touches it ---
        self._machine: Machine | None = None  # see ``machine``
        self._machine_lock = threading.Lock()
        self._handles: dict[int, AgentHandle] = {}
        self._readers: dict[int, FrameReader] = {}
        self._writers: dict[int, FrameWriter] = {}
        self._runner: InlineRunner | None = None
        self._batch: list[Event] = []  # the events the machine is taking
        self._owner_pid = os.getpid()
        limit = settings.limit_bytes
        self._max_frame = None if limit is None else _MAX_FRAME_CAPS * limits.hard_cap_bytes(limit)
        # One selector for the life of the loop, registered with the wake-up
        # pipe and every agent's pipe and sentinel as they come and go:
        # building one per wait (multiprocessing.connection.wait) cost ~40 µs
        # per loop turn, against ~3 µs for a select on a kept epoll set.
        # Ownership: the owner thread alone registers, selects and closes it.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._inbox.wake_fd, selectors.EVENT_READ, None)
        self._appliers: dict[type, Callable[[Any, list[Event]], None]] = {
            Send: self._send,
            SignalAgent: self._signal,
            StartAgent: self._start_agent,
            SampleMemory: self._sample_memory,
            FetchResult: self._fetch_result,
            DiscardResult: self._discard_result,
            Resolve: self._resolve,
            Fail: self._fail,
            Cancel: self._cancel,
            RunInline: self._run_inline,
            RunCall: self._run_call,
            Warn: self._warn,
            Log: self._log,
            TaskMoved: _record,
            AgentMoved: _record,
            TaskRan: _record,
            MemoryNoted: _record,
        }
        io = self.monitor_io
        if io is not None:
            self._appliers.update({
                ReadMonitor: lambda a, events: events.append(io.read(a, time.monotonic())),
                ShrinkCaches: lambda a, events: io.shrink(a),
                SetCaching: lambda a, events: io.set_caching(a),
                ReleaseMemory: lambda a, events: io.release(a),
                ModeChanged: lambda a, events: io.mode_changed(a),
            })  # fmt: skip
        if recorder is not None:
            self.observe(RecorderObserver(recorder))

    @property
    def machine(self) -> Machine:
        """The state machine, made on first use: when the pool starts (``start``).

        Its rules are the larger part of the engine's imports (~4 ms). Made
        then, right after the template's fork, they load while the template
        forks the first agent on the other core, not before the fork. Not in
        the owner thread: importing there would hold the GIL against the
        caller's thread, which must hand over the first task.
        """

        def make() -> Machine:
            from guildcore.engine.machine import Machine

            machine = Machine(self.settings, new_task_id=self.new_task_id, has_initializer=self._starter.initializer is not None)
            machine.trace = bool(self.observers)  # under the lock ``observe`` takes
            return machine

        return made_once(self, "_machine", self._machine_lock, make)

    @property
    def counters(self) -> Counters:
        return self.machine.counters

    # ------------------------------------------------------------ caller side

    def start(self) -> None:
        self.machine  # noqa: B018 - made now: after the template's fork, before the owner thread (see ``machine``)
        self._thread = threading.Thread(target=self._run, name="guild-supervisor", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            # The tasks posted for its first turn (``Guild._ensure_started``)
            # are let go: their submit raises this, and nothing runs them.
            while self._inbox:
                event = self._inbox.take()[1]
                if isinstance(event, Submitted):
                    for task in event.tasks:
                        _task_done(task)
            raise

    def new_task_id(self) -> int:
        return next(self._ids)

    def check_open(self) -> None:
        """Raise if this supervisor takes no more work: shut down, or its loop is gone."""
        if self._crashed is not None:
            raise errors.PoolBroken(
                f"the supervisor loop stopped ({self._crashed}); this Guild cannot run tasks any more; "
                "create a new Guild (and report this bug in guildcore)"
            )
        if self._closed:
            raise ShutdownError("cannot submit: this Guild is shut down; create a new Guild")

    def submit(self, tasks: list[Task]) -> None:
        """Hand tasks to the owner loop; raises (and lets their holds go) if it takes no more work."""
        try:
            self.check_open()
            if not self._inbox.post("event", Submitted(tasks)):
                self.check_open()  # the loop ended in between: say why
                raise ShutdownError("cannot submit: this Guild's supervisor has stopped; create a new Guild")
        except BaseException:
            for task in tasks:
                _task_done(task)  # a context generation it holds must not stay held
            raise

    def post(self, event: Event) -> bool:
        """Hand the owner loop an event, from any thread; False once the loop has ended.

        For what runs beside the pool and steers it: a memory monitor posts
        ``AdmissionChanged`` (one agent takes new work; no agent may start)
        and ``StopIdleAgents``.
        """
        return self._inbox.post("event", event)

    def observe(self, observer: Observer) -> None:
        """Call ``observer(now, action)`` for every action from now on (see the module docstring)."""
        with self._machine_lock:  # not lost to a machine being made now
            self.observers = [*self.observers, observer]  # copied: the owner thread may be iterating
            if self._machine is not None:
                self._machine.trace = True

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` in the owner thread (to read or change pool state safely).

        Called from the owner thread itself (a future's done-callback runs
        there), ``fn`` runs at once: posting would wait on this very thread.
        """
        fut: Future[Any] = Future()
        if self.on_owner_thread():
            _run_call(fn, fut)
            return fut
        if not self._inbox.post("event", CallRequested(fn, fut)):
            fut.set_exception(ShutdownError("this Guild is shut down"))
        return fut

    def on_owner_thread(self) -> bool:
        """Whether the caller is the owner loop's thread (inside a done-callback)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def grant_credit(self, task: Task, n: int) -> None:
        self._inbox.post("event", CreditGranted(task, n))

    def cancel_stream(self, task: Task) -> None:
        self._inbox.post("event", StreamCancelled(task))

    def shutdown(self, *, wait: bool, cancel_futures: bool, kill: bool = False) -> None:
        self._closed = True
        self._inbox.post("event", ShutdownRequested(cancel_futures, kill))
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def snapshot(self) -> dict[str, Any]:
        """Pool state for stats (call through ``call`` to read it while the loop runs)."""
        return self.machine.snapshot()

    # ------------------------------------------------------------- owner loop

    def _run(self) -> None:
        machine = self.machine
        try:
            first: list[Event] = []
            while self._inbox:  # the pool's first tasks, posted before this thread started
                first.append(self._inbox.take()[1])
            self._feed(first)
            recorder = self.recorder
            while not machine.finished:
                due = machine.next_deadline()
                if recorder is not None and (due is None or recorder.next_tick < due):
                    due = recorder.next_tick
                timeout = None if due is None else max(0.0, due - time.monotonic())
                events = self._wait(0.0 if self._inbox else timeout)
                while self._inbox:
                    events.append(self._inbox.take()[1])
                self._feed(events)
                if recorder is not None and time.monotonic() >= recorder.next_tick:
                    recorder.tick(time.monotonic(), machine.snapshot)  # never raises
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("guildcore supervisor loop crashed")
            self._crashed = f"{type(exc).__name__}: {exc}"
            err = GuildError(f"the supervisor loop crashed ({self._crashed}); this is a bug in guildcore")
            try:
                # Tasks of the batch the machine was taking may not be in it yet.
                batch = [t for ev in self._batch if isinstance(ev, Submitted) for t in ev.tasks]
                for ev in self._batch:
                    if isinstance(ev, CallRequested):
                        _set_exception(ev.future, err, 0)
                self._apply_all(machine.fail_all(err, batch), [])
            except BaseException:
                log.exception("failing the tasks of a crashed supervisor loop failed too")
        finally:
            self._teardown()
            self._finished.set()

    def _feed(self, events: list[Event]) -> None:
        """Events to the machine, actions out, until no action has anything more to say."""
        machine = self.machine
        while True:
            now = time.monotonic()
            self._batch = events
            actions = machine.handle_batch(events, now)
            # Invariant: the loop holds no result while it waits: the events
            # just taken (a result read out of shared memory among them) go
            # now, not at the next turn, so freed memory is free.
            self._batch = []
            events.clear()
            if not actions:
                return
            events = []
            self._apply_all(actions, events)
            if self.observers:
                self._notify(now, actions)
            if not events:
                return

    def _apply_all(self, actions: list[Action], events: list[Event]) -> None:
        appliers = self._appliers
        for action in actions:
            appliers[type(action)](action, events)

    def _notify(self, now: float, actions: list[Action]) -> None:
        for observer in self.observers:
            for action in actions:
                try:
                    observer(now, action)
                except BaseException:
                    log.exception("a supervisor observer failed")

    def _wait(self, timeout: float | None) -> list[Event]:
        events: list[Event] = []
        for key, mask in self._selector.select(timeout):
            data = key.data
            if data is None:  # the inbox's wake-up pipe
                self._inbox.woken()
            elif not data[1]:
                self._agent_exited(data[0], events)
            else:
                if mask & selectors.EVENT_WRITE:
                    self._flush(data[0])
                if mask & selectors.EVENT_READ:
                    self._read_frames(data[0], events)
        return events

    # ---------------------------------------------------------------- frames

    def _read_frames(self, agent_id: int, events: list[Event]) -> None:
        reader = self._readers.get(agent_id)
        if reader is None:
            return  # already handled through its sentinel, in this same turn
        try:
            frames = reader.read()
        except FrameTooBig as exc:
            events.append(FrameBad(agent_id, str(exc)))
            self._unwatch_pipe(agent_id)
            return
        except OSError:
            # ECONNRESET: the agent died with frames of ours unread. As an
            # end of the pipe: its sentinel tells the rest.
            frames, reader.eof = [], True
        for data in frames:
            event = _decode(agent_id, data)
            if type(event) is FrameIn and event.kind == Kind.READY:
                self.booted.set()
            events.append(event)
        if reader.eof:
            self._unwatch_pipe(agent_id)
            handle = self._handles.get(agent_id)
            if handle is not None and _readable(handle.sentinel):
                self._agent_exited(agent_id, events)
            else:
                events.append(AgentPipeClosed(agent_id))

    def _agent_exited(self, agent_id: int, events: list[Event]) -> None:
        handle = self._handles.pop(agent_id, None)
        if handle is None:
            return
        self._writers.pop(agent_id, None)
        reader = self._readers.pop(agent_id, None)
        if reader is not None:
            # Frames it sent before dying are still in the pipe: they count first.
            try:
                frames = reader.drain()
            except (FrameTooBig, OSError):
                frames = []
            events.extend(_decode(agent_id, data) for data in frames)
        self._unwatch(handle)
        handle.process.join(timeout=1.0)
        exitcode = handle.process.exitcode
        handle.close()
        events.append(AgentExited(agent_id, exitcode))

    def _unwatch_pipe(self, agent_id: int) -> None:
        self._readers.pop(agent_id, None)
        writer = self._writers.pop(agent_id, None)
        if writer is not None:
            writer.drop()
        handle = self._handles.get(agent_id)
        if handle is not None:
            try:
                self._selector.unregister(handle.conn.fileno())
            except (KeyError, ValueError, OSError):
                pass

    def _unwatch(self, handle: AgentHandle) -> None:
        # Invariant: unregister before the fds close; a closed fd's number may
        # be reused by the next agent, and epoll would refuse it as known.
        for fd in (handle.conn.fileno(), handle.sentinel):
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    # --------------------------------------------------------------- actions

    def _send(self, action: Send, events: list[Event]) -> None:
        writer = self._writers.get(action.agent_id)
        if writer is None:
            return
        was_waiting = writer.pending
        try:
            waits = writer.send(action.frame)
        except OSError:
            writer.drop()  # dying: its sentinel fires, and what it held is retried or failed there
            return
        if waits and not was_waiting:
            self._watch_writable(action.agent_id, True)

    def _flush(self, agent_id: int) -> None:
        writer = self._writers.get(agent_id)
        if writer is None:
            return
        try:
            waits = writer.flush()
        except OSError:
            writer.drop()
            waits = False
        if not waits:
            self._watch_writable(agent_id, False)

    def _watch_writable(self, agent_id: int, on: bool) -> None:
        """Also wake when the agent's pipe takes more (a frame waits half-written), or stop."""
        handle = self._handles.get(agent_id)
        if handle is None or agent_id not in self._readers:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self._selector.modify(handle.conn.fileno(), events, (agent_id, True))
        except (KeyError, ValueError, OSError):
            pass

    def _signal(self, action: SignalAgent, events: list[Event]) -> None:
        handle = self._handles.get(action.agent_id)
        if handle is None:
            return
        try:
            os.kill(handle.pid, action.signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _start_agent(self, action: StartAgent, events: list[Event]) -> None:
        agent_id = action.agent_id
        try:
            handle = self._starter.start(agent_id)
        except StartFailed as exc:
            events.append(AgentStartFailed(agent_id, str(exc)))
            return
        except Exception as exc:  # out of fds for the pipe, and the like
            events.append(AgentStartFailed(agent_id, f"{type(exc).__name__}: {exc}"))
            return
        self._handles[agent_id] = handle
        fd = handle.conn.fileno()
        os.set_blocking(fd, False)  # Invariant: the loop never waits on one agent's pipe
        self._readers[agent_id] = FrameReader(fd, self._max_frame)
        self._writers[agent_id] = FrameWriter(fd)
        self._selector.register(fd, selectors.EVENT_READ, (agent_id, True))
        self._selector.register(handle.sentinel, selectors.EVENT_READ, (agent_id, False))
        events.append(AgentStarted(agent_id, handle.pid))

    def _sample_memory(self, action: SampleMemory, events: list[Event]) -> None:
        readings: list[tuple[int, int | None]] = []
        for agent_id in action.agent_ids:
            handle = self._handles.get(agent_id)
            if handle is not None:
                readings.append((agent_id, limits.read_private_bytes(handle.pid)))
        events.append(MemorySampled(readings))

    def _fetch_result(self, action: FetchResult, events: list[Event]) -> None:
        # Results too big for a frame only: not on a first result's path.
        from guildcore.engine import shmbuf

        task, fields = action.task, action.fields
        try:
            if len(fields) > 1:
                value = shmbuf.take_result(self._owner_pid, task.id, fields, raw=task.raw_result)
            else:
                value = shmbuf.stream_for(fields[0])
        except BaseException as exc:  # decoding runs the result's own unpickling code
            shmbuf.discard_result(self._owner_pid, task.id)
            err = SerializationError(f"the result of task {task.id} ({task.fn_name}) could not be read: {exc!r}")
            err.__cause__ = exc
            events.append(ResultFetched(task, False, err))
            return
        events.append(ResultFetched(task, True, value))

    def _discard_result(self, action: DiscardResult, events: list[Event]) -> None:
        from guildcore.engine import shmbuf

        shmbuf.discard_result(self._owner_pid, action.task_id)  # Ownership: nobody else will unlink it

    def _resolve(self, action: Resolve, events: list[Event]) -> None:
        task = action.task
        if task.stream is not None:
            task.stream.finish(None)
        future = task.future
        if not future.done():
            try:
                future.set_result(action.value)
            except InvalidStateError:
                pass  # cancelled by its caller in the meantime
            except BaseException:  # a done-callback raised past concurrent.futures' own guard
                log.exception("a done-callback of task %d raised", task.id)
        _task_done(task)

    def _fail(self, action: Fail, events: list[Event]) -> None:
        task = action.task
        if task.stream is not None:
            task.stream.finish(action.error)
        _set_exception(task.future, action.error, task.id)
        _task_done(task)

    def _cancel(self, action: Cancel, events: list[Event]) -> None:
        task = action.task
        if task.stream is not None:
            task.stream.finish(action.error)
        try:
            cancelled = task.future.cancel()
        except BaseException:
            log.exception("a done-callback of task %d raised", task.id)
            cancelled = True
        if not cancelled:
            _set_exception(task.future, action.error, task.id)
        _task_done(task)

    def _run_inline(self, action: RunInline, events: list[Event]) -> None:
        from guildcore.engine import inline  # sequential mode and parallelization off only

        task = action.task
        if task.stream is not None:
            inbox = self._inbox

            def on_end(error: BaseException | None, cancelled: bool) -> None:
                inbox.post("event", InlineFinished(task, error is None, error, cancelled))

            inline.start_stream(task, on_end)
            return
        if self._runner is None:
            inbox = self._inbox

            def done(t: Task, ok: bool, value: Any) -> None:
                inbox.post("event", InlineFinished(t, ok, value))

            self._runner = inline.InlineRunner(done)
        self._runner.run(task)

    def _run_call(self, action: RunCall, events: list[Event]) -> None:
        if action.future.set_running_or_notify_cancel():
            _run_call(action.fn, action.future)

    def _warn(self, action: Warn, events: list[Event]) -> None:
        warnings.warn(action.message, RuntimeWarning, stacklevel=2)

    def _log(self, action: Log, events: list[Event]) -> None:
        log.log(action.level, "%s", action.message)

    # ------------------------------------------------------------ stopping

    def _teardown(self) -> None:
        for handle in list(self._handles.values()):
            try:
                os.kill(handle.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            handle.process.join(timeout=2.0)
            handle.close()
        self._handles.clear()
        self._readers.clear()
        self._writers.clear()
        self._selector.close()
        if self._runner is not None and not self._runner.stop(_INLINE_STOP_S):
            log.warning("an inline task still runs after shutdown; it is left to finish in its thread")
        from guildcore.engine import shmbuf  # an agent may have written one the loop never read

        shmbuf.sweep_results(self._owner_pid)  # Ownership: results of agents killed while stopping
        # Invariant: nothing posted is lost, even what raced with the end.
        for _kind, event in self._inbox.close():
            if isinstance(event, Submitted):
                for task in event.tasks:
                    if self._crashed is not None:
                        _set_exception(task.future, errors.PoolBroken(f"the supervisor loop stopped ({self._crashed})"), task.id)
                    elif not task.future.cancel():
                        err = TaskCancelled(f"task {task.id} ({task.fn_name}) was cancelled", task_id=task.id, fn=task.fn_name)
                        _set_exception(task.future, err, task.id)
                    _task_done(task)
            elif isinstance(event, CallRequested):
                _set_exception(event.future, ShutdownError("this Guild is shut down"), 0)


def _decode(agent_id: int, data: bytes | bytearray) -> Event:
    """One frame's bytes as an event; decoding runs unpickling code of the caller's classes."""
    try:
        kind, task_id, fields = codec.decode_frame(data)
    except BaseException as exc:  # SystemExit from a value's __reduce__ included
        why = f"{type(exc).__name__}: {exc}"
        try:
            kind, task_id = codec.frame_head(data)
        except BaseException:
            return FrameBad(agent_id, why, error=exc)
        return FrameBad(agent_id, why, kind, task_id, exc)
    return FrameIn(agent_id, kind, task_id, fields)


def _readable(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _record(action: Any, events: list[Event]) -> None:
    """A record for observers: nothing to carry out."""


def _run_call(fn: Callable[[], Any], future: Future[Any]) -> None:
    try:
        value = fn()
    except BaseException as exc:
        _set_exception(future, exc, 0)
        return
    try:
        future.set_result(value)
    except BaseException:
        log.exception("a done-callback of a supervisor call raised")


def _task_done(task: Task) -> None:
    task.payload = None  # let big arguments go as soon as possible
    if task.on_done is not None:
        try:
            task.on_done(task)
        except BaseException:
            log.exception("task %d completion hook failed", task.id)


def _set_exception(future: Future[Any], err: BaseException, task_id: int) -> None:
    if future.done():
        return
    try:
        if not future.running() and not future.set_running_or_notify_cancel():
            return
        future.set_exception(err)
    except InvalidStateError:
        pass
    except BaseException:  # a done-callback raised past concurrent.futures' own guard
        log.exception("a done-callback of task %d raised", task_id)

