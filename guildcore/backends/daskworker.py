"""The worker side of the Dask backend: one guildcore task inside a Dask worker.

Data flow::

    caller: DaskPool (owner thread)                 a Dask worker (one of its task threads)
    ───────────────────────────────                 ───────────────────────────────────────
    TASK frame (codec) ── client.submit(run_task) ──> run_task: decode, resolve the function,
      + the context's bytes (backend dask)            enter the context, arm the watchdog, run
    record <───────────── the task's result ──────── [OK, value, compute_s, facts] or
                                                      [ERROR, exc, traceback, type, message, flags, facts]
    streams: chunk queue <── [CHUNK, i, blob] ... [END, n, cancelled] ── (Dask queues, on the scheduler)
             credit queue ──> n, or CANCEL ────────> checked before each chunk is sent

The task travels as the same codec frame the local agents read, and comes
back as codec bytes, so arguments and results keep their types exactly as
with local agents, and a value that cannot travel fails that task with a
``SerializationError`` naming it, not a Dask error about pickling.

Timeouts and memory: a per-process watchdog thread raises ``TaskTimeout``
(past the task's timeout; per item for a map chunk, as agents do) or
``MemoryLimitExceeded`` (private memory grown past ``limits.per_agent``
since the task began) inside the task's thread, between two Python
bytecodes; ``finally`` blocks run and the worker lives on. Python cannot
raise into a thread blocked in C (``time.sleep``, a lock): such a task is
the caller's to end (``DaskPool`` restarts its worker after
``limits.timeout_grace``).

This module does not cover the caller's side (``dask``) nor starting
clusters (``daskcluster``). It imports Dask only inside stream tasks.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from guildcore import codec
from guildcore._errors import MemoryLimitExceeded, SerializationError, TaskTimeout
from guildcore.engine import limits
from guildcore.engine.agent import (
    FLAG_MEMORY,
    FLAG_TIMEOUT,
    MODE_CALL,
    MODE_MAP,
    MODE_STARMAP,
    MODE_STREAM,
)
from guildcore.engine.functions import FunctionCache

# Result records: the first field says which.
OK = 0
ERROR = 1
# Stream queue items: [CHUNK, index, codec bytes] ... then [END, chunks sent, cancelled].
CHUNK = 0
END = 1
# On the credit queue: stop the stream (a number is that many credits).
CANCEL = -1

# A stream waiting for credits looks this often whether its caller is gone
# (its task released by the scheduler): a caller that dies cannot send
# CANCEL, and the worker thread must not wait forever.
_LOST_CALLER_CHECK_S = 5.0


class _TimeoutInterrupt(TaskTimeout):
    """Raised into a task thread by the watchdog; ``run_task`` words the real error."""

    def __init__(self, *args: object) -> None:
        super().__init__("the task ran past its timeout")


class _MemoryInterrupt(MemoryLimitExceeded):
    """Raised into a task thread by the watchdog; ``run_task`` words the real error."""

    def __init__(self, *args: object) -> None:
        super().__init__("the worker's private memory grew past limits.per_agent")


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exc_type`` at its next bytecode (None clears a pending one)."""
    arg = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), arg)


class _Watch:
    """One running task as the watchdog sees it."""

    __slots__ = ("baseline", "deadline", "fired", "limit_bytes", "peak", "progress", "results", "seen", "thread_id", "timeout_s")

    def __init__(self, thread_id: int, timeout_s: float | None, limit_bytes: int | None, baseline: int) -> None:
        self.thread_id = thread_id
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.limit_bytes = limit_bytes
        self.baseline = baseline
        self.peak = 0
        self.fired: str | None = None  # "timeout" or "memory", once
        # A map chunk's result list: items completed so far (per-item timeouts).
        self.results: list[Any] | None = None
        self.progress = 0
        self.seen = 0


class Watchdog:
    """Deadlines and memory samples of the tasks running in this worker process.

    One daemon thread per process, started with the first watched task. It
    sleeps until the next deadline or sample; ``watch()`` wakes it.
    """

    def __init__(self, sample_interval_s: float = 0.1) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, _Watch] = {}
        self._thread: threading.Thread | None = None
        self.sample_interval_s = sample_interval_s

    def start(self, timeout_s: float | None, limit_bytes: int | None) -> _Watch:
        tid = threading.get_ident()
        baseline = (limits.read_private_bytes(os.getpid()) or 0) if limit_bytes else 0
        watch = _Watch(tid, timeout_s, limit_bytes, baseline)
        if timeout_s is None and not limit_bytes:
            return watch  # nothing to enforce
        with self._cond:
            self._running[tid] = watch
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="guild-dask-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def stop(self, watch: _Watch) -> None:
        """The task's run is over; no interrupt reaches its thread after this returns.

        Invariant: the watchdog fires only under the lock and only at a
        registered watch, so once unregistered here (and any interrupt not yet
        delivered cleared) the thread is safe. An interrupt delivered while
        this very method runs is caught and the unregistering retried.
        """
        if watch.limit_bytes and watch.fired is None:
            private = limits.read_private_bytes(os.getpid())
            if private is not None:
                watch.peak = max(watch.peak, private - watch.baseline)
        pending: BaseException | None = None
        while True:
            try:
                with self._cond:
                    self._running.pop(watch.thread_id, None)
                    if watch.fired is not None:
                        _raise_in(watch.thread_id, None)
                break
            except (_TimeoutInterrupt, _MemoryInterrupt) as exc:
                pending = exc
        if pending is not None:
            raise pending

    def _run(self) -> None:
        next_sample = 0.0
        with self._cond:
            while True:
                now = time.monotonic()
                private = None
                if now >= next_sample:
                    next_sample = now + self.sample_interval_s
                    private = limits.read_private_bytes(os.getpid())
                wake: list[float] = []
                for watch in list(self._running.values()):
                    if watch.fired is None:
                        self._check(watch, now, private)
                    if watch.fired is None:
                        if watch.limit_bytes:
                            wake.append(next_sample)
                        if watch.deadline is not None:
                            wake.append(watch.deadline)
                self._cond.wait(max(0.0, min(wake) - time.monotonic()) if wake else None)

    def _check(self, watch: _Watch, now: float, private: int | None) -> None:
        if watch.limit_bytes and private is not None:
            watch.peak = max(watch.peak, private - watch.baseline)
            if watch.peak > watch.limit_bytes:
                self._fire(watch, "memory", _MemoryInterrupt)
                return
        if watch.deadline is None or now < watch.deadline or watch.timeout_s is None:
            return
        done = watch.progress if watch.results is None else len(watch.results)
        if done != watch.seen:  # items completed since the last deadline: the next item's turn
            watch.seen = done
            watch.deadline = now + watch.timeout_s
            return
        self._fire(watch, "timeout", _TimeoutInterrupt)

    def _fire(self, watch: _Watch, why: str, exc_type: type[BaseException]) -> None:
        watch.fired = why
        _raise_in(watch.thread_id, exc_type)


class _WorkerSide:
    """This worker process's guildcore state: its function cache and watchdog."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.functions = FunctionCache()
        self.watchdog = Watchdog()


_side: _WorkerSide | None = None


def _worker_side() -> _WorkerSide:
    global _side
    # Fork-safety: a worker forked from another keeps none of its threads.
    if _side is None or _side.pid != os.getpid():
        _side = _WorkerSide()
    return _side


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _error_record(exc: BaseException, fn_name: str, flags: int = 0, **facts: Any) -> bytes:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    facts = {"address": _worker_address(), "pid": os.getpid(), **facts}
    try:
        return codec.encode([ERROR, exc, tb, type_name, str(exc), flags, facts])
    except Exception:
        # The exception cannot travel (unpicklable attributes): its text does.
        return codec.encode([ERROR, None, tb, type_name, str(exc), flags, facts])


def run_task(frame: bytes, ctx_data: bytes | None = None, stream: tuple[str, str, int] | None = None) -> bytes:
    """Run one guildcore task (the TASK frame ``frame``); returns its record, never raises.

    ``ctx_data`` is the task's context segment, copied over the network
    (backend ``dask``); without it the task maps the segment by name, as
    agents do (``dask-local``: same host). ``stream`` names the chunk and
    credit queues of a streaming task and its credit window.
    """
    side = _worker_side()
    try:
        _kind, task_id, fields = codec.decode_frame(frame)
        mode, spec, payload, timeout_s, ctx_ref, limit_bytes, sample_interval_s, fn_name = fields
    except (SerializationError, ValueError) as exc:
        err = SerializationError(f"the arguments of a task cannot be decoded in the Dask worker: {exc}")
        return _error_record(err, "?")
    del frame
    side.watchdog.sample_interval_s = sample_interval_s
    try:
        fn = side.functions.get(spec)
    except SerializationError as exc:
        return _error_record(exc, fn_name)
    token = None
    watch = None
    try:
        if ctx_ref is not None:
            from guildcore.context import enter_task_context

            if ctx_data is not None:
                from guildcore.context.view import install

                install(ctx_ref, ctx_data)
            token = enter_task_context(ctx_ref)
        if mode == MODE_STREAM:
            assert stream is not None
            return _run_stream(side, task_id, fn, fn_name, payload, timeout_s, limit_bytes, stream)
        watch = side.watchdog.start(timeout_s, limit_bytes)
        try:
            t0 = time.perf_counter()
            result = _apply(fn, mode, payload, watch)
            compute_s = time.perf_counter() - t0
        finally:
            side.watchdog.stop(watch)
    except _TimeoutInterrupt:
        timed_out = TaskTimeout(
            f"task {task_id} ({fn_name}) timed out after {timeout_s or 0:.1f} s (limits.timeout); "
            "raise the timeout or split the work",
            task_id=task_id, fn=fn_name, timeout_s=timeout_s,
        )  # fmt: skip
        return _error_record(timed_out, fn_name, FLAG_TIMEOUT)
    except (_MemoryInterrupt, MemoryError) as exc:
        peak = watch.peak if watch is not None else None
        interrupted = isinstance(exc, _MemoryInterrupt)
        return _error_record(exc, fn_name, FLAG_MEMORY, peak=peak, interrupted=interrupted)
    except BaseException as exc:  # SystemExit in a task fails the task, not the worker
        return _error_record(exc, fn_name)
    finally:
        if token is not None:
            from guildcore.context import exit_task_context

            exit_task_context(token)
    facts = {"address": _worker_address(), "pid": os.getpid(), "peak": watch.peak if watch is not None else None, "run_s": compute_s}
    try:
        return codec.encode([OK, result, compute_s if mode != MODE_CALL else None, facts])
    except SerializationError as exc:
        err = SerializationError(f"the result of task {task_id} ({fn_name}) cannot be sent back: {exc}")
        return _error_record(err, fn_name)


def _apply(fn: Callable[..., Any], mode: int, payload: Any, watch: Any) -> Any:
    if mode == MODE_CALL:
        args, kwargs = payload
        return fn(*args, **kwargs)
    if mode in (MODE_MAP, MODE_STARMAP):
        items = map(fn, payload) if mode == MODE_MAP else itertools.starmap(fn, payload)
        # list.extend appends one item at a time: the watchdog reads the
        # chunk's progress from len(out) (per-item timeouts, as in agents).
        out: list[Any] = []
        watch.results = out
        out.extend(items)
        return out
    raise SerializationError(f"unknown task mode {mode!r}")


def _run_stream(
    side: _WorkerSide,
    task_id: int,
    fn: Callable[..., Any],
    fn_name: str,
    payload: list[Any],
    timeout_s: float | None,
    limit_bytes: int | None,
    stream: tuple[str, str, int],
) -> bytes:
    """Send what generator ``fn`` yields through the chunk queue, within the credit window.

    As in an agent: the generator computes a value, then the task waits for
    a credit, then sends it; the timeout budgets production only.
    """
    from distributed import Queue, get_client

    chunks_name, credits_name, window = stream
    client = get_client()
    chunks, credits = Queue(chunks_name, client=client), Queue(credits_name, client=client)
    args, kwargs = payload[0], payload[1]
    have, index, cancelled = window, 0, False
    budget_s = timeout_s
    gen: Iterator[Any] | None = None
    try:
        gen = iter(fn(*args, **kwargs))
        while True:
            t0 = time.monotonic()
            watch = side.watchdog.start(budget_s, limit_bytes)
            try:
                value = next(gen)
            except StopIteration:
                break
            finally:
                side.watchdog.stop(watch)
            if budget_s is not None:
                budget_s = max(1e-3, budget_s - (time.monotonic() - t0))
            granted = _take_credits(credits, wait=have == 0)
            if granted is None:
                cancelled = True
                break
            have += granted - 1
            try:
                blob = codec.encode(value)
            except SerializationError as exc:
                raise SerializationError(f"chunk {index} of stream task {task_id} ({fn_name}) cannot be encoded: {exc}") from exc
            chunks.put([CHUNK, index, blob])
            del value, blob
            index += 1
    except _TimeoutInterrupt:
        err = TaskTimeout(
            f"stream task {task_id} ({fn_name}) timed out after {timeout_s or 0:.1f} s of production "
            "(limits.timeout; time spent waiting for the consumer does not count); raise the timeout or split the work",
            task_id=task_id, fn=fn_name, timeout_s=timeout_s,
        )  # fmt: skip
        return _end(chunks, credits, index, False, _error_record(err, fn_name, FLAG_TIMEOUT))
    except BaseException as exc:
        return _end(chunks, credits, index, False, _error_record(exc, fn_name))
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    return _end(chunks, credits, index, cancelled, codec.encode([OK, None, None, {"address": _worker_address(), "pid": os.getpid()}]))


def _take_credits(credits: Any, *, wait: bool) -> int | None:
    """Credits the consumer granted since the last look; None if it cancelled.

    Without ``wait`` this only collects what is there (the stream has a
    credit in hand; a CANCEL must still stop it before its next chunk).
    """
    while True:
        got = list(credits.get(batch=True))
        if CANCEL in got:
            return None
        if got or not wait:
            return int(sum(got))
        try:
            got = [credits.get(timeout=_LOST_CALLER_CHECK_S)]
        except TimeoutError:
            if _released():
                return None
            continue
        if CANCEL in got:
            return None
        return int(sum(got))


def _released() -> bool:
    """Whether the scheduler has let go of the running task (its caller is gone)."""
    try:
        from distributed import get_worker
        from distributed.worker import thread_state

        ts = get_worker().state.tasks.get(getattr(thread_state, "key", None))
    except (ImportError, ValueError):
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _end(chunks: Any, credits: Any, index: int, cancelled: bool, record: bytes) -> bytes:
    """The END item (after every chunk), then the task's record."""
    try:
        chunks.put([END, index, cancelled])
    finally:
        chunks.close()
        credits.close()
    return record

