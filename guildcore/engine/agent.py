"""The agent: the main function of one worker OS process.

Data flow inside an agent::

    supervisor pipe ──> reader thread ──> inbox (SimpleQueue) ──> main thread
                          │  CANCEL / CREDIT update shared flags    │ runs tasks in order
                          │                                         v
    supervisor pipe <─────────────── RESULT / ERROR / CHUNK / END ──┘

The reader thread drains the pipe at all times, so the supervisor's writes
never block behind a long task (which would deadlock against the agent's own
result write). The main thread runs tasks strictly in the order they arrive:
the supervisor relies on that order to know which task is running.

Timeouts: ``SIGALRM`` raises ``TaskTimeout`` inside the task (``finally``
blocks run and the agent survives); if the task does not return, the
supervisor escalates to SIGTERM and SIGKILL. ``MemoryError`` under the
``RLIMIT_DATA`` cap is reported as a memory-limit failure and the agent
exits, since its heap is at the cap.

The agent never unlinks shared memory and never opens LMDB before it starts
(Fork-safety: nothing of that kind is inherited from the supervisor).

Under memory pressure the supervisor's monitor sends an idle agent TRIM
(cut its ``@cached`` tiers, collect garbage, ``malloc_trim``) and every agent
CACHING (cache writes on or off, the in-process budget): both run on the
main thread between tasks, never inside one.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from guildcore import codec
from guildcore._errors import SerializationError, TaskTimeout
from guildcore.codec import Kind
from guildcore.engine import lazymain, limits
from guildcore.engine.functions import FnSpec, FunctionCache

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    # Imported where used: only big results and streams need shared memory.
    from guildcore.engine.ring import RingWriter

# Task modes: how the payload of a TASK frame is applied to the function.
MODE_CALL = 0  # payload = [args, kwargs]          -> fn(*args, **kwargs)
MODE_MAP = 1  # payload = [item, item, ...]        -> [fn(item), ...]
MODE_STARMAP = 2  # payload = [args, args, ...]    -> [fn(*args), ...]
MODE_STREAM = 3  # payload = [args, kwargs], fn is a generator -> CHUNK*, END

# A call shorter than this sends no STATS frame even with metrics on: the
# frame costs ~10 us of the supervisor's time, 10% of a tiny call's round
# trip, and the supervisor's own view of such a task is close enough.
STATS_MIN_CALL_S = 0.001

# Exit code of an agent whose reader could not allocate a frame under the cap.
EXIT_NO_MEMORY = 86

# ERROR frame flags.
FLAG_MEMORY = 1  # MemoryError under the hard cap: the agent exits after reporting
FLAG_TIMEOUT = 2  # TaskTimeout raised inside the task
FLAG_CANCELLED = 4  # a stream was cancelled by the supervisor


class AgentSettings:
    """What an agent needs at start; pickled once into the new process.

    A plain slotted class: a dataclass would import ``inspect``, ``ast`` and
    ``tokenize`` (~2.5 MB of private memory in every agent) and a NamedTuple
    ``typing`` (~0.45 MB), for this one record.
    """

    __slots__ = (
        "agent_id",
        "cache_env",
        "forked",
        "initargs",
        "initializer",
        "limit_bytes",
        "main",
        "preload",
        "report_stats",
        "result_threshold",
        "supervisor_pid",
    )

    def __init__(
        self,
        agent_id: int,
        *,
        limit_bytes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        preload: tuple[str, ...] = (),
        cache_env: Mapping[str, str] | None = None,
        forked: bool = False,
        result_threshold: int | None = None,
        supervisor_pid: int = 0,
        report_stats: bool = False,
        main: tuple[str, str] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.limit_bytes = limit_bytes
        self.initializer = initializer
        self.initargs = initargs
        self.preload = preload
        self.cache_env = cache_env
        # Started with the fork method: memory inherited from the supervisor.
        self.forked = forked
        # Results encoding to more than this many bytes travel through a
        # shared-memory segment named after the supervisor (shmbuf.result_name).
        self.result_threshold = result_threshold
        self.supervisor_pid = supervisor_pid
        # Send STATS after every task, not only map chunks (metrics are on).
        self.report_stats = report_stats
        # How the caller's script was started (``lazymain.caller_main``), for
        # agents that do not inherit its ``__main__``.
        self.main = main


class _Control:
    """State the reader thread shares with the main thread (under one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.cancelled: set[int] = set()
        self.credits: dict[int, int] = {}
        # A task is begun once the main thread takes it; until then the
        # supervisor may withdraw it (to give an idle agent). One lock decides.
        self.begun: set[int] = set()
        self.withdrawn: set[int] = set()
        # Written on CANCEL: a stream waiting on its ring's credit FIFO
        # watches it too (ring.RingWriter.wait_credit).
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def begin(self, task_id: int) -> bool:
        """The main thread takes ``task_id``; False if it was withdrawn first."""
        with self.lock:
            if task_id in self.withdrawn:
                self.withdrawn.discard(task_id)
                return False
            self.begun.add(task_id)
            return True

    def end(self, task_id: int) -> None:
        with self.lock:
            self.begun.discard(task_id)

    def withdraw(self, task_id: int) -> bool:
        """The reader gives ``task_id`` back unless the main thread has begun it."""
        with self.lock:
            if task_id in self.begun:
                return False
            self.withdrawn.add(task_id)
            return True


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this agent when its parent dies.

    With forkserver the parent is the forkserver, which itself exits when the
    supervisor dies, so no agent outlives a SIGKILLed supervisor. Agents
    forked by the template do not need it: the template kills them itself.
    """
    prctl = libc_prctl()
    if prctl is not None:
        try:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:
            pass


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def libc_prctl() -> Callable[..., object] | None:
    """The C library's ``prctl`` (None off Linux, or if it cannot be had).

    Only agents a server starts (forkserver, spawn) need it, once. Through
    ``_ctypes``, the layer ``ctypes`` is built on, with the same calls
    ``ctypes.CDLL(None).prctl`` makes: ``ctypes`` itself costs 3-5 ms to
    import in a process just forked, and the first agent of every script
    would wait for it. Any surprise there falls back to ``ctypes``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import _ctypes

        class _CFunction(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = None  # void: the result is not read

        return _CFunction(_ctypes.dlsym(_ctypes.dlopen(None, os.RTLD_LOCAL), "prctl"))  # type: ignore[arg-type]
    except (ImportError, AttributeError, OSError, TypeError):
        pass
    try:
        import ctypes

        prctl: Callable[..., object] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (ImportError, AttributeError, OSError):
        return None


def _reader(
    conn: Any, inbox: queue.SimpleQueue[Any], control: _Control, reply: Callable[[int, int], None]
) -> None:
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            inbox.put(None)  # the supervisor is gone: stop
            return
        except MemoryError:
            # A frame too big for the hard cap: its bytes are still in the pipe,
            # so nothing after it can be read. Exiting closes the pipe, which
            # unblocks the supervisor's write; it reports the agent's death.
            os._exit(EXIT_NO_MEMORY)
        try:
            kind, task_id = codec.frame_head(data)
            if kind == Kind.TASK:
                # Decoded by the main thread, where a failure fails the task:
                # its fields may unpickle a class of the caller's script, and
                # the script must run there (signal handlers, one load).
                inbox.put((kind, task_id, data))
                continue
            kind, task_id, fields = codec.decode_frame(data)
        except SerializationError:
            inbox.put(None)  # a broken channel cannot be trusted further
            return
        if kind == Kind.CANCEL:
            with control.lock:
                control.cancelled.add(task_id)
                control.lock.notify_all()
            try:
                os.write(control.wake_w, b"x")
            except BlockingIOError:
                pass  # already full of wake-ups
            continue
        if kind == Kind.WITHDRAW:
            if control.withdraw(task_id):
                reply(Kind.WITHDRAWN, task_id)
            continue
        if kind == Kind.CREDIT:
            with control.lock:
                control.credits[task_id] = control.credits.get(task_id, 0) + int(fields[0])
                control.lock.notify_all()
            continue
        inbox.put((kind, task_id, fields))
        if kind == Kind.SHUTDOWN:
            return


class _Timer:
    """A per-item soft timeout driven by SIGALRM ticks.

    For a chunk of many items the timer is armed once per ``timeout_s`` and
    re-armed at each tick while items keep completing; an item that spans two
    ticks is timed out (so it ran between ``timeout_s`` and twice that). This
    costs nothing per item, where re-arming the itimer would cost a syscall.
    """

    def __init__(self) -> None:
        self.timeout_s: float | None = None
        self.progress = 0
        # The list a map chunk is filling: its length is the chunk's progress,
        # so items run through C-level map with no per-item bookkeeping.
        self.results: list[Any] | None = None
        self._seen = 0
        self.task_id = 0
        self.fn_name = ""

    def arm(self, task_id: int, fn_name: str, timeout_s: float | None) -> None:
        self.task_id, self.fn_name, self.timeout_s = task_id, fn_name, timeout_s
        self.progress, self._seen, self.results = 0, 0, None
        if timeout_s:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)

    def disarm(self) -> None:
        if self.timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.timeout_s = None
        self.results = None

    def on_alarm(self, signum: int, frame: object) -> None:
        if self.timeout_s is None:
            return
        progress = self.progress if self.results is None else len(self.results)
        if progress != self._seen:  # items completed since the last tick
            self._seen = progress
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
            return
        timeout_s = self.timeout_s
        self.timeout_s = None
        raise TaskTimeout(
            f"task {self.task_id} ({self.fn_name}) timed out after {timeout_s:.1f} s (limits.timeout); "
            "raise the timeout or split the work",
            task_id=self.task_id,
            fn=self.fn_name,
            timeout_s=timeout_s,
        )


class Agent:
    """One agent's main loop; built and run only inside the agent process."""

    def __init__(self, conn: Any, settings: AgentSettings) -> None:
        self.conn = conn
        self.settings = settings
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.control = _Control()
        self.functions = FunctionCache()
        self.timer = _Timer()
        self.write_lock = threading.Lock()
        # Caching the supervisor set (CACHING) before @cached was imported
        # here: applied once it is, after a task.
        self.caching_pending: tuple[bool, float] | None = None

    def send(self, kind: int, task_id: int, *fields: object) -> None:
        frame = codec.encode_frame(kind, task_id, *fields)
        with self.write_lock:
            self.conn.send_bytes(frame)

    def run(self) -> None:
        signal.signal(signal.SIGALRM, self.timer.on_alarm)
        # The supervisor sends tasks ahead to an agent still starting, and asks
        # for them back (WITHDRAW) once another agent idles: while an
        # initializer or preloads run, the reader must be there to answer.
        # Without them READY follows at once, and the reader starts after it:
        # its start (~0.4 ms) then overlaps the supervisor's answer to READY.
        slow_start = self.settings.initializer is not None or bool(self.settings.preload)
        if slow_start:
            self._start_reader()
        if not self._initialize():
            return
        # A forked agent starts with the supervisor's private pages (shared
        # copy-on-write, yet counted in RssAnon): its limit applies above them.
        baseline = limits.inherited_private_bytes() if self.settings.forked else 0
        self.send(Kind.READY, 0, os.getpid(), baseline)
        if not slow_start:
            self._start_reader()
        while True:
            item = self.inbox.get()
            if item is None:
                return
            kind, task_id, fields = item
            if kind == Kind.SHUTDOWN:
                return
            if kind == Kind.TASK:
                if not self.control.begin(task_id):
                    continue  # withdrawn: the supervisor sent it to another agent
                try:
                    go_on = self._run_task(task_id, fields)
                finally:
                    self.control.end(task_id)
                if not go_on:
                    return
                if self.caching_pending is not None:
                    self._set_caching(*self.caching_pending)
            elif kind == Kind.TRIM:
                _trim(float(fields[0]) if fields else 1.0)
            elif kind == Kind.CACHING and len(fields) >= 2:
                self._set_caching(bool(fields[0]), float(fields[1]))

    def _start_reader(self) -> None:
        reader = threading.Thread(
            target=_reader,
            args=(self.conn, self.inbox, self.control, self.send),
            name="guild-agent-reader",
            daemon=True,
        )
        reader.start()

    def _set_caching(self, writes: bool, budget: float) -> None:
        """The memory monitor's caching for ``@cached`` here; kept for later if it is not imported yet."""
        cached = sys.modules.get("guildcore.cache.cached")
        if cached is None:  # importing the cache (lmdb, ~60 ms) for this would defeat the purpose
            self.caching_pending = None if (writes, budget) == (True, 1.0) else (writes, budget)
            return
        self.caching_pending = None
        try:
            cached.set_default_caching(writes=writes, budget=budget)
        except Exception:
            pass  # a cache problem never stops an agent

    def _initialize(self) -> bool:
        for module in self.settings.preload:
            try:
                __import__(module)
            except Exception:
                pass  # preloading is an optimization; the task's own import reports errors
        init = self.settings.initializer
        if init is None:
            return True
        try:
            init(*self.settings.initargs)
        except BaseException as exc:
            self._send_error(0, exc, "initializer", flags=0)
            return False
        return True

    def _is_cancelled(self, task_id: int) -> bool:
        with self.control.lock:
            if task_id in self.control.cancelled:
                self.control.cancelled.discard(task_id)
                return True
        return False

    def _run_task(self, task_id: int, data: bytes) -> bool:
        """Run one task from its TASK frame; False when the agent must exit afterwards."""
        if self._is_cancelled(task_id):
            self.send(Kind.END, task_id, 0, True)
            return True
        try:
            mode, spec, payload, timeout_s, ctx_ref = codec.decode_frame(data)[2]
        except MemoryError as exc:
            del data
            no_room = MemoryError(f"the arguments of task {task_id} do not fit under this agent's memory cap: {exc}")
            self._send_error(task_id, no_room, "?", flags=FLAG_MEMORY)
            return False
        except SerializationError as exc:
            msg = f"the arguments of task {task_id} cannot be decoded in the agent: {exc}"
            self._send_error(task_id, SerializationError.because(msg, exc, stage="arguments", decoding=True), "?", flags=0)
            return True
        del data
        fn_name = spec if isinstance(spec, str) else "<function sent by value>"
        try:
            fn = self.functions.get(spec)
        except SerializationError as exc:
            self._send_error(task_id, exc, fn_name, flags=0)
            return True
        token = _enter_context(ctx_ref)
        try:
            if mode == MODE_STREAM:
                return self._run_stream(task_id, fn, fn_name, payload, timeout_s)
            self.timer.arm(task_id, fn_name, timeout_s)
            try:
                c0 = time.process_time()
                t0 = time.perf_counter()
                result = _apply(fn, mode, payload, self.timer)
                compute_s = time.perf_counter() - t0
                cpu_s = time.process_time() - c0
            finally:
                self.timer.disarm()
        except MemoryError as exc:
            self._send_error(task_id, exc, fn_name, flags=FLAG_MEMORY)
            return False
        except TaskTimeout as exc:
            self._send_error(task_id, exc, fn_name, flags=FLAG_TIMEOUT)
            return True
        except BaseException as exc:  # SystemExit in a task fails the task, not the agent
            self._send_error(task_id, exc, fn_name, flags=0)
            return True
        finally:
            _exit_context(token)
        if mode != MODE_CALL or (self.settings.report_stats and compute_s >= STATS_MIN_CALL_S):
            # The router's measurement (this chunk's compute time, without
            # IPC), then for metrics its CPU time and when it began.
            # Invariant: perf_counter is CLOCK_MONOTONIC, the supervisor's clock.
            self.send(Kind.STATS, task_id, compute_s, cpu_s, t0)
        threshold = self.settings.result_threshold
        raw = threshold is not None and type(result) in (bytes, bytearray) and len(result) > threshold
        if raw and self._send_big_result(task_id, result, None):
            return True
        try:
            frame = codec.encode_frame(Kind.RESULT, task_id, result)
        except SerializationError as exc:
            self._send_error(task_id, _unsendable_result(task_id, fn_name, result, exc), fn_name, flags=0)
            return True
        if threshold is not None and len(frame) > threshold and self._send_big_result(task_id, result, frame):
            return True
        del result
        with self.write_lock:
            self.conn.send_bytes(frame)
        return True

    def _send_big_result(self, task_id: int, result: Any, frame: bytes | None) -> bool:
        """Send a big result through shared memory; False to fall back to the pipe."""
        from guildcore.engine import shmbuf

        fields = shmbuf.write_result(self.settings.supervisor_pid, task_id, result, frame)
        if fields is None:
            return False
        self.send(Kind.RESULT, task_id, *fields)
        return True

    def _run_stream(
        self, task_id: int, fn: Callable[..., Any], fn_name: str, payload: list[Any], timeout_s: float | None
    ) -> bool:
        # payload = [args, kwargs] or [args, kwargs, ring]: the supervisor adds
        # the stream's ring (ring.py), through which chunks go straight to the
        # consumer; without one every chunk is a CHUNK frame.
        args, kwargs = payload[0], payload[1]
        ring = None
        if len(payload) > 2 and payload[2]:
            from guildcore.engine.ring import RingWriter

            ring = RingWriter(payload[2])
            if not ring.open():
                self.send(Kind.END, task_id, 0, True)  # the consumer left before we started
                return True
        index = 0
        gen: Iterator[Any] | None = None
        # The timeout budgets production only: the timer runs while the
        # generator computes a value, and stops while the agent waits for a
        # credit (a slow consumer does not time the task out).
        budget_s = timeout_s
        try:
            try:
                gen = iter(fn(*args, **kwargs))
                while True:
                    t0 = time.monotonic()
                    self.timer.arm(task_id, fn_name, budget_s)
                    try:
                        value = next(gen)
                    except StopIteration:
                        break
                    finally:
                        self.timer.disarm()
                    if budget_s is not None:
                        budget_s = max(1e-3, budget_s - (time.monotonic() - t0))
                    sent = self._send_chunk(task_id, fn_name, index, value, ring)
                    del value
                    if not sent:
                        gen_close = getattr(gen, "close", None)
                        if gen_close is not None:
                            gen_close()
                        self.send(Kind.END, task_id, index, True)
                        return True
                    index += 1
            finally:
                self.timer.disarm()
                if ring is not None:
                    ring.close()
        except MemoryError as exc:
            self._send_error(task_id, exc, fn_name, flags=FLAG_MEMORY)
            return False
        except TaskTimeout:
            err = TaskTimeout(
                f"stream task {task_id} ({fn_name}) timed out after {timeout_s or 0:.1f} s of production "
                "(limits.timeout; time spent waiting for the consumer does not count); "
                "raise the timeout or split the work",
                task_id=task_id,
                fn=fn_name,
                timeout_s=timeout_s,
            )
            self._send_error(task_id, err, fn_name, flags=FLAG_TIMEOUT)
            return True
        except Exception as exc:
            self._send_error(task_id, exc, fn_name, flags=0)
            return True
        finally:
            with self.control.lock:
                self.control.credits.pop(task_id, None)
                self.control.cancelled.discard(task_id)
        self.send(Kind.END, task_id, index, False)
        return True

    def _send_chunk(self, task_id: int, fn_name: str, index: int, value: Any, ring: RingWriter | None) -> bool:
        """Send one chunk once a credit allows it; False if the stream was cancelled."""
        if ring is None:
            if not self._wait_credit(task_id):
                return False
            frame = self._chunk_frame(task_id, fn_name, index, value)
            with self.write_lock:
                self.conn.send_bytes(frame)
            return True
        control = self.control
        if not ring.wait_credit(control.wake_r, lambda: task_id in control.cancelled):
            return False
        try:
            record = ring.record_for(index, value)
        except SerializationError as exc:
            raise SerializationError(f"chunk {index} of stream task {task_id} ({fn_name}) cannot be encoded: {exc}") from exc
        if record is None:  # too big for a slot: through the supervisor, then say so in order
            frame = self._chunk_frame(task_id, fn_name, index, value)
            with self.write_lock:
                self.conn.send_bytes(frame)
            record = ring.queued(index)
        return ring.send(record)

    def _chunk_frame(self, task_id: int, fn_name: str, index: int, value: Any) -> bytes:
        try:
            return codec.encode_frame(Kind.CHUNK, task_id, index, value)
        except SerializationError as exc:
            raise SerializationError(
                f"chunk {index} of stream task {task_id} ({fn_name}) cannot be encoded: {exc}"
            ) from exc

    def _wait_credit(self, task_id: int) -> bool:
        """Block until the consumer grants a credit; False if the stream was cancelled."""
        with self.control.lock:
            while True:
                if task_id in self.control.cancelled:
                    return False
                if self.control.credits.get(task_id, 0) > 0:
                    self.control.credits[task_id] -= 1
                    return True
                self.control.lock.wait()

    def _send_error(self, task_id: int, exc: BaseException, fn_name: str, *, flags: int) -> None:
        import traceback  # only on failures: agents that never fail never load it

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__traceback__ = None
        type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        try:
            frame = codec.encode_frame(Kind.ERROR, task_id, exc, tb, type_name, str(exc), flags)
        except Exception:
            # The exception itself cannot travel (unpicklable attributes):
            # send its text; the supervisor raises a TaskError quoting it.
            frame = codec.encode_frame(Kind.ERROR, task_id, None, tb, type_name, str(exc), flags)
        with self.write_lock:
            self.conn.send_bytes(frame)


def _trim(keep: float) -> None:
    """The memory monitor's cleanup in an idle agent: its ``@cached`` tiers cut to ``keep``, then
    garbage collected and free heap pages given back."""
    cached = sys.modules.get("guildcore.cache.cached")
    cache = cached.default_cache_if_made() if cached is not None else None
    try:
        if cache is not None and keep < 1.0:
            if keep <= 0:
                cache.evict_memory()
            else:
                cache.shrink_memory(keep)
        from guildcore.monitor import release_memory

        release_memory()
    except Exception:
        pass  # cleanup is best effort: never a reason for an agent to fail


def _unsendable_result(task_id: int, fn_name: str, result: object, exc: SerializationError) -> SerializationError:
    """The error of a result the codec cannot encode; a generator is told about streams."""
    what = f"the result of task {task_id} ({fn_name}) cannot be sent back: {exc}"
    if type(result).__name__ in ("generator", "async_generator"):
        what = (
            f"task {task_id} ({fn_name}) returned a {type(result).__name__}, which cannot be sent back; "
            "to receive what it yields as it yields it, run it with g.stream(fn, *args) "
            "(Guild.stream), or return a list"
        )
    return SerializationError.because(what, exc, stage="result")


def _apply(fn: Callable[..., Any], mode: int, payload: Any, timer: _Timer) -> Any:
    if mode == MODE_CALL:
        args, kwargs = payload
        return fn(*args, **kwargs)
    if mode in (MODE_MAP, MODE_STARMAP):
        items = map(fn, payload) if mode == MODE_MAP else itertools.starmap(fn, payload)
        if timer.timeout_s is None:
            return list(items)
        # list.extend appends one item at a time, so the timer reads progress
        # from len(out) while the loop itself stays in C (twice as fast for
        # tiny items as a Python loop counting them).
        out: list[Any] = []
        timer.results = out
        out.extend(items)
        return out
    raise SerializationError(f"unknown task mode {mode!r}")


def _enter_context(ctx_ref: Any) -> Any:
    """Make ``guildcore.context()`` return the task's context (if any)."""
    if ctx_ref is None:
        return None
    from guildcore.context import enter_task_context

    return enter_task_context(ctx_ref)


def _exit_context(token: Any) -> None:
    if token is None:
        return
    from guildcore.context import exit_task_context

    exit_task_context(token)


def drop_forkserver_alive_fd() -> None:
    """Close the forkserver's liveness pipe that multiprocessing hands every child.

    The forkserver exits when every holder of that pipe's write end is gone;
    an agent holding it keeps the forkserver alive after the supervisor is
    SIGKILLed, and the forkserver alive keeps the agent from its parent-death
    signal: both would outlive the supervisor. Agents do not start processes
    through the supervisor's forkserver, so they let go of it.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return  # never imported in this process: it holds no such pipe (and importing costs ms)
    own = sys.modules.get("guildcore.engine.ownserver")  # guildcore's own server (a forked caller's copy)
    for server in (getattr(forkserver, "_forkserver", None), getattr(own, "_server", None)):
        try:
            fd = getattr(server, "_forkserver_alive_fd", None)
            if fd is not None:
                setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 - a private attribute of the stdlib
                os.close(fd)
        except (AttributeError, OSError):
            pass


def agent_main(conn: Any, settings: AgentSettings) -> None:
    """Entry point of an agent process (the target of ``Process``)."""
    drop_forkserver_alive_fd()
    # The supervisor decides when agents stop; Ctrl-C in the terminal reaches
    # the whole process group, and an agent must not die with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not settings.forked:  # a template's agents: it kills them if the caller dies (template._kill_all)
        _set_parent_death_signal()
    lazymain.ensure_main(settings.main)
    limits.apply_hard_cap(settings.limit_bytes)
    for key, value in (settings.cache_env or {}).items():
        os.environ[key] = value
    agent = Agent(conn, settings)
    try:
        agent.run()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the supervisor let go of this agent, or is gone: there is no one to tell
    finally:
        try:
            conn.close()
        except OSError:
            pass
    # Fast exit: skip atexit handlers and the interpreter's teardown, which
    # cost tens of milliseconds and may touch state the parent owns.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


__all__ = ["MODE_CALL", "MODE_MAP", "MODE_STARMAP", "MODE_STREAM", "AgentSettings", "FnSpec", "agent_main"]
