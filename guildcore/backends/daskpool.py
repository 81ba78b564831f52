"""``DaskPool``: the owner loop that runs a Guild's tasks on Dask.

Data flow::

    caller threads                 owner thread ("guild-dask")               Dask
    ──────────────                 ───────────────────────────               ────
    submit(tasks) ─> inbox ─wake─> queue (daskqueue.TaskBook)
                                   dispatch while in flight < threads ──────> client.submit(run_task, frame)
                                                                              (daskworker.run_task)
    Future <─ set_result/exception ─ record <── gather, on Dask's event loop <── done
                                   KilledWorker -> AgentDied, retried or failed
                                   timers: a task past timeout + grace -> its worker restarted
    streams: chunks and credits through the owner thread (see ``daskstreams``)

Ownership: as in the supervisor, the owner thread alone touches the queue,
the tasks in flight and the counters; callers only post to the inbox, and
Dask's event loop only posts events (a future done, a chunk, a stream's end)
to it.

Invariant: at most as many tasks are in flight as the cluster has worker
threads, so every task Dask holds is running: a worker that dies takes only
the task it was running, never tasks queued behind it (those stay here, in
priority order, as with local agents).

Invariant: every task ends DONE, FAILED (with its cause) or CANCELLED.

It does not cover the worker side (``daskworker``), reaching the cluster
(``daskcluster``), the errors' wording (``daskerrors``), nor opening a pool
(``dask``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from guildcore import codec
from guildcore.backends.daskqueue import TaskBook
from guildcore.codec import Kind
from guildcore.engine import postmortem, shmbuf
from guildcore.engine.functions import resolve_reference
from guildcore.engine.states import TaskState
from guildcore.engine.supervisor import SupervisorSettings
from guildcore.engine.task import Task, budget
from guildcore.errors import GuildError, PoolBroken, SerializationError, ShutdownError
from guildcore.metrics.recorder import exit_reason

if TYPE_CHECKING:
    from guildcore.backends.daskcluster import ClusterLink
    from guildcore.backends.daskstreams import StreamLink
    from guildcore.config import Config
    from guildcore.metrics.recorder import RunRecorder

log = logging.getLogger("guildcore.dask")

# On a cluster someone else runs, how often the pool re-reads its thread
# count while work waits (workers come and go).
_CAPACITY_REFRESH_S = 2.0


class _Running:
    """One task handed to Dask, until its record is in (owner thread only)."""

    __slots__ = ("cancelled", "deadline", "dfut", "ended", "key", "record", "stream", "task")

    def __init__(self, task: Task, key: str, dfut: Any, deadline: float | None, stream: StreamLink | None) -> None:
        self.task = task
        self.key = key
        self.dfut = dfut
        self.deadline = deadline  # the hard timeout: budget + grace from dispatch
        self.stream = stream
        self.record: BaseException | list[Any] | None = None  # a stream's outcome, once known
        self.ended = False  # a stream's END item was read
        self.cancelled = False  # ... and said the worker closed the generator on CANCEL


class DaskPool(TaskBook):
    """Runs a Guild's tasks on Dask; the same face to ``Guild`` as the local ``Supervisor``."""

    def __init__(
        self,
        link: ClusterLink | None,
        settings: SupervisorSettings,
        config: Config,
        recorder: RunRecorder | None = None,
        *,
        opener: Callable[[], tuple[ClusterLink, PoolBroken | None]] | None = None,
    ) -> None:
        """``link`` is a cluster reached; or None, and ``opener`` starts one when the pool starts."""
        super().__init__(config.pool.quarantine_after, recorder, fifo=config.pool.queue_strategy == "fifo")
        self._link_or_none = link
        self._opener = opener
        self._config = config
        # A cluster reached has a size; dask-local's is the workers it will start.
        self._capacity = max(1, link.threads()) if link is not None else settings.max_agents
        if config.parallelization.max_parallel is not None:
            self._capacity = min(self._capacity, config.parallelization.max_parallel)
        # Chunk sizes and imap windows follow the threads Dask offers; nothing
        # is sent ahead of a free thread (see the invariant above), which the
        # Guild's guided chunks take into account: fewer, larger chunks.
        self.settings = settings.replace(
            max_agents=self._capacity, min_agents=min(settings.min_agents, self._capacity), prefetch=0
        )
        if link is not None:
            self.counters.agents_started = len(link.workers())
        self._token = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self._limit_bytes = config.limits.per_agent
        self._closed = False
        self._crashed: str | None = None  # why the owner loop ended early (a bug), if it did
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake = threading.Condition()
        self._inbox_closed = False
        self._finished = threading.Event()
        self.booted = threading.Event()  # the Guild runs maps here until it is set: workers are up
        if link is not None:
            self.booted.set()
        self._local = config.parallelization.backend == "dask-local"  # workers on this host
        # --- owner-thread state below ---
        self._inflight: dict[str, _Running] = {}
        self._streams: dict[int, StreamLink] = {}  # task id -> its link; read by consumer threads too
        self._to_gather: list[str] = []
        self._contexts: dict[str, Any] = {}  # context segment name -> its scattered bytes (backend dask)
        self._by_value: dict[str, bytes] = {}  # "__main__:fn" -> the function pickled by value
        self._agent_ids: dict[str, int] = {}  # worker address -> its id in stats and metrics
        self._pids: dict[str, int] = {}  # worker address -> its pid, as it reported it
        self._tasks_done: dict[str, int] = {}  # worker address -> tasks it finished
        self._peaks: dict[str, int] = {}  # worker address -> most private memory a task added
        self._next_refresh = time.monotonic() + _CAPACITY_REFRESH_S
        self._thread = threading.Thread(target=self._run, name="guild-dask", daemon=True)

    # ------------------------------------------------------------ caller side

    @property
    def _link(self) -> ClusterLink:
        link = self._link_or_none
        assert link is not None, "the Dask pool is used before it started"
        return link

    @property
    def _client(self) -> Any:
        return self._link.client

    def start(self) -> None:
        """Start the owner loop; the Guild calls it once, on first need."""
        self._thread.start()

    def _open(self) -> None:
        """Start dask-local's cluster, in the owner thread: the Guild runs maps here meanwhile.

        Until the workers are up ``booted`` is unset, and the Guild's maps
        run in the caller's thread, as while agents start; tasks submitted
        meanwhile wait in the queue. A cluster that cannot start breaks the
        pool: every task fails with PoolBroken, saying why.
        """
        if self._link_or_none is None and self._opener is not None:
            try:
                self._link_or_none, self._broken = self._opener()
                self.counters.agents_started = self._capacity
            except Exception as exc:
                log.exception("dask-local could not start its cluster")
                self._broken = PoolBroken(
                    f"dask-local could not start its cluster of {self._capacity} workers ({type(exc).__name__}: "
                    f"{exc}); check the host's process limits, or use backend local"
                )
                self._fail_everything(self._broken)
        self.booted.set()

    def new_task_id(self) -> int:
        return next(self._ids)

    def check_open(self) -> None:
        """Raise if this pool takes no more work: shut down, or its loop is gone."""
        if self._crashed is not None:
            raise PoolBroken(
                f"the Dask pool loop stopped ({self._crashed}); this Guild cannot run tasks any more; "
                "create a new Guild (and report this bug in guildcore)"
            )
        if self._closed:
            raise ShutdownError("cannot submit: this Guild is shut down; create a new Guild")

    def submit(self, tasks: list[Task]) -> None:
        self.check_open()
        self._post("submit", tasks)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` in the owner thread (at once if called from it)."""
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
        return threading.current_thread() is self._thread

    def grant_credit(self, task: Task, n: int) -> None:
        self._post("credit", (task, n))

    def cancel_stream(self, task: Task) -> None:
        self._post("cancel", task)

    def shutdown(self, *, wait: bool, cancel_futures: bool, kill: bool = False) -> None:
        self._closed = True
        if self._thread.ident is None:  # never started (the Guild needed no pool): nothing runs
            with self._wake:
                if self._finished.is_set():
                    return
                self._stopping = True
            self._teardown()
            self._finished.set()
            return
        self._post("shutdown", (cancel_futures, kill))
        if wait and not self.on_owner_thread():
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def _post(self, kind: str, payload: Any) -> None:
        with self._wake:
            if self._inbox_closed:
                # Race: a late caller (a dropped stream, a stats() call, Dask's
                # loop reporting a future) after the loop ended.
                if kind == "call":
                    payload[1].set_exception(ShutdownError("this Guild is shut down"))
                return
            self._inbox.append((kind, payload))
            self._wake.notify()

    def _on_dask_done(self, key: str, _dfut: Any) -> None:
        """Dask's event loop: the future of ``key`` finished, erred or was cancelled."""
        self._post("done", key)

    # ------------------------------------------------------------- owner loop

    def _run(self) -> None:
        try:
            self._open()
            while True:
                self._drain_inbox()
                now = time.monotonic()
                self._gather()
                self._dispatch(now)
                self._check_timers(now)
                if self._stopping and self._ready_to_exit():
                    break
                self._wait(self._next_deadline(now))
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("guildcore Dask pool loop crashed")
            self._crashed = f"{type(exc).__name__}: {exc}"
            self._fail_everything(GuildError(f"the Dask pool loop crashed ({type(exc).__name__}: {exc}); this is a bug in guildcore"))
        finally:
            self._teardown()
            self._finished.set()

    def _wait(self, timeout: float | None) -> None:
        with self._wake:
            if not self._inbox:
                self._wake.wait(timeout)

    def _drain_inbox(self) -> None:
        while True:
            with self._wake:
                if not self._inbox:
                    return
                kind, payload = self._inbox.popleft()
            if kind == "submit":
                for task in payload:
                    self._enqueue(task)
            elif kind == "done":
                self._on_done(payload)
            elif kind == "gathered":
                self._on_gathered(*payload)
            elif kind == "chunk":
                self._on_chunk(*payload)
            elif kind == "credit":
                self._send_credit(*payload)
            elif kind == "stream-end":
                self._on_stream_end(*payload)
            elif kind == "call":
                fn, fut = payload
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:
                        fut.set_exception(exc)
            elif kind == "cancel":
                self._cancel_stream(payload)
            elif kind == "shutdown":
                self._begin_stop(*payload)

    # --------------------------------------------------------------- dispatch

    def _dispatch(self, now: float) -> None:
        while self._queue and len(self._inflight) < self._capacity:
            task = self._pop_task()
            if task is None:
                return
            self._send(task, now)

    def _send(self, task: Task, now: float) -> None:
        from guildcore.backends.daskworker import run_task

        task.set_state(TaskState.RUNNING)
        task.attempts += 1
        limit = self._limit_bytes
        try:
            frame = codec.encode_frame(
                Kind.TASK, task.id, task.mode, self._spec(task), task.payload, task.timeout_s, task.ctx_ref,
                limit, self._config.limits.sample_interval, task.fn_name,
            )  # fmt: skip
        except SerializationError as exc:
            self._finish_error(task, SerializationError(f"task {task.id} ({task.fn_name}) cannot be sent to a Dask worker: {exc}"))
            return
        if limit is not None and len(frame) > limit:
            self._finish_error(task, postmortem.arguments_too_big(task, len(frame), limit))
            return
        key = f"guild-{self._token}-{task.id}-{task.attempts}"
        stream = None
        if task.stream is not None:
            from guildcore.backends.daskstreams import StreamLink

            on_chunk = functools.partial(self._post_chunk, key)
            on_end = functools.partial(self._post_stream_end, key)
            stream = StreamLink(self._client, f"{key}-{uuid.uuid4().hex[:6]}", task.stream, on_chunk, on_end)
            self._streams[task.id] = stream
        dfut = self._client.submit(
            run_task, frame, self._context_data(task), stream.describe() if stream else None,
            key=key, priority=-self._rank(task), pure=False,
        )  # fmt: skip
        deadline = None
        if task.timeout_s is not None:  # a stream's moves on while it waits for the consumer
            deadline = now + budget(task) + self._config.limits.timeout_grace
        task.started_at = now
        self._inflight[key] = _Running(task, key, dfut, deadline, stream)
        if self.recorder is not None:
            self.recorder.task_sent(task.id, 0, now)  # which worker runs it, its record says
        if stream is not None:
            stream.start()
        from distributed.client import done_callback

        self._client.loop.add_callback(done_callback, dfut, functools.partial(self._on_dask_done, key))

    def _spec(self, task: Task) -> str | bytes:
        """The function as the worker gets it: by reference, or by value when it lives in ``__main__``.

        A worker cannot import the caller's script (it may not even be on
        its host), so script functions travel pickled, as lambdas do.
        """
        spec = task.spec
        if not (isinstance(spec, str) and spec.startswith("__main__:")):
            return spec
        blob = self._by_value.get(spec)
        if blob is None:
            import cloudpickle

            blob = self._by_value[spec] = cloudpickle.dumps(resolve_reference(spec))
        return blob

    def _context_data(self, task: Task) -> Any:
        """The task's context as Dask data: scattered once to every worker (backend dask).

        dask-local workers share this host, so they map the segment by name
        instead, as agents do: nothing is copied.
        """
        ref = task.ctx_ref
        if ref is None or self._local:
            return None
        data = self._contexts.get(ref.name)
        if data is None or data.status != "finished":
            with open(os.path.join("/dev/shm", ref.name), "rb") as f:
                blob = f.read()
            data = self._contexts[ref.name] = self._client.scatter(blob, broadcast=True, hash=False)
        return data

    def _release_contexts(self) -> None:
        """Let go of scattered contexts no task in flight holds but the newest."""
        if len(self._contexts) < 2:
            return
        held = {run.task.ctx_ref.name for run in self._inflight.values() if run.task.ctx_ref is not None}
        newest = next(reversed(self._contexts))
        for name in [n for n in self._contexts if n not in held and n != newest]:
            self._contexts.pop(name).release()

    # ---------------------------------------------------------- completions

    def _on_done(self, key: str) -> None:
        run = self._inflight.get(key)
        if run is None or run.record is not None:
            return  # a task already ended here (cancelled, timed out), or a stream whose end is known
        status = run.dfut.status
        if status == "finished":
            self._to_gather.append(key)
        elif status == "error":
            self._on_dask_error(run, run.dfut.exception())
        elif status == "cancelled":
            self._on_dask_error(run, GuildError(f"the Dask scheduler at {self._link.where} dropped the task"))
        else:  # pending again: its result was lost with a worker and is being recomputed
            from distributed.client import done_callback

            self._client.loop.add_callback(done_callback, run.dfut, functools.partial(self._on_dask_done, key))

    def _gather(self) -> None:
        """Fetch the records of every finished task at once, without blocking this thread."""
        if not self._to_gather:
            return
        keys, self._to_gather = self._to_gather, []
        dfuts = [self._inflight[k].dfut for k in keys]
        coro = self._client.gather(dfuts, asynchronous=True)
        fut = asyncio.run_coroutine_threadsafe(coro, self._client.loop.asyncio_loop)
        fut.add_done_callback(functools.partial(self._post_gathered, keys))

    def _on_gathered(self, keys: list[str], fut: Future[list[bytes]]) -> None:
        try:
            blobs = fut.result()
        except BaseException as exc:
            self._gather_failed(keys, exc)
            return
        for key, blob in zip(keys, blobs, strict=True):
            run = self._inflight.get(key)
            if run is not None:
                self._on_record(run, blob)

    def _gather_failed(self, keys: list[str], exc: BaseException) -> None:
        """Records that could not be fetched: a worker died after finishing its task.

        Each is looked at again, alone: Dask recomputes what was lost (the
        future is pending again, and ``_on_done`` waits for it anew). One
        that still cannot be fetched alone fails its task.
        """
        for key in keys:
            run = self._inflight.get(key)
            if run is None:
                continue
            if run.dfut.status != "finished":
                self._on_done(key)
            elif len(keys) > 1:
                coro = self._client.gather([run.dfut], asynchronous=True)
                fut = asyncio.run_coroutine_threadsafe(coro, self._client.loop.asyncio_loop)
                fut.add_done_callback(functools.partial(self._post_gathered, [key]))
            else:
                self._on_dask_error(run, exc)

    def _post_gathered(self, keys: list[str], fut: Future[list[bytes]]) -> None:
        self._post("gathered", (keys, fut))

    def _on_record(self, run: _Running, blob: bytes) -> None:
        from guildcore.backends import daskerrors
        from guildcore.backends.daskworker import OK

        run.dfut.release()
        try:
            record = codec.decode(blob)
        except SerializationError as exc:
            record = exc
        if run.stream is not None:
            run.record = record
            if run.ended:
                self._end_stream(run)
            return
        del self._inflight[run.key]
        task = run.task
        if isinstance(record, BaseException):
            self._finish_error(task, SerializationError(f"the result of task {task.id} ({task.fn_name}) could not be read: {record}"))
        elif record[0] == OK:
            task.compute_s = record[2]
            self._count_worker(task, record[3])
            value = shmbuf.stream_for(record[1]) if task.raw_result else record[1]
            self._finish_result(task, value)
        else:
            self._on_reported(task, daskerrors.reported(task, record, self._limit_bytes), record)

    def _count_worker(self, task: Task, facts: dict[str, Any]) -> None:
        """What the worker said of itself: which one ran the task, for how long, its memory growth."""
        address = facts.get("address")
        if address is None:
            return
        self._tasks_done[address] = self._tasks_done.get(address, 0) + 1
        agent_id = self._agent_id(address, facts.get("pid"))
        if self.recorder is not None and facts.get("run_s") is not None:
            self.recorder.task_ran(task.id, agent_id, [facts["run_s"]], time.monotonic())
        peak = facts.get("peak")
        if peak is not None:
            self._peaks[address] = max(self._peaks.get(address, 0), int(peak))

    def _on_reported(self, task: Task, err: BaseException, record: list[Any]) -> None:
        from guildcore.engine.agent import FLAG_MEMORY, FLAG_TIMEOUT

        flags = record[5]
        if flags & (FLAG_MEMORY | FLAG_TIMEOUT):
            self._retry_or_fail(task, err, agent_killed=False)
        else:
            self._finish_error(task, err)

    def _on_dask_error(self, run: _Running, exc: BaseException) -> None:
        """Dask failed the task itself: a lost worker, or it could not run it at all."""
        from distributed.scheduler import KilledWorker

        from guildcore.backends import daskerrors

        task = run.task
        err: BaseException
        if isinstance(exc, KilledWorker):
            worker = exc.last_worker
            address, pid = str(worker.address), getattr(worker, "pid", None)
            self.counters.agents_died += 1
            if self._local:
                self.counters.agents_started += 1  # its nanny starts a new one
            nanny = getattr(worker, "nanny", None)
            exitcode, rss = self._link.lost(address, None if nanny is None else str(nanny))
            lost_id = self._agent_id(address, pid)
            if self.recorder is not None:
                why = exit_reason(False, False, ("memory", rss) if rss is not None else None, exitcode)
                self.recorder.agent_exited(lost_id, why, time.monotonic())
            if rss is not None:
                self.counters.agents_replaced_memory += 1
                err = daskerrors.memory_restart(
                    task, address, pid, rss, self._limit_bytes, getattr(worker, "memory_limit", None), local=self._local
                )
            else:
                err = daskerrors.worker_died(task, address, pid, exitcode)
            killed = True
        else:
            err, killed = daskerrors.not_run(task, exc), False
        run.dfut.release()
        if run.stream is not None:
            run.record = err
            run.stream.end_now()  # after the chunks the worker sent
            return
        del self._inflight[run.key]
        if killed:
            self._retry_or_fail(task, err, agent_killed=True)
        else:
            self._finish_error(task, err)

    # ------------------------------------------------------------ streaming

    def _post_chunk(self, key: str, index: int, value: object) -> None:
        self._post("chunk", (key, index, value))

    def _post_stream_end(self, key: str, item: object) -> None:
        self._post("stream-end", (key, item))

    def _on_chunk(self, key: str, index: int, value: object) -> None:
        run = self._inflight.get(key)
        if run is not None and run.task.stream is not None:
            run.task.stream.put_chunk(index, value, now=time.monotonic())

    def _send_credit(self, task: Task, n: int) -> None:
        """The consumer took ``n`` chunks: forward the credits; a pause does not count as run time."""
        if task.stream is None:
            return
        paused_s = task.stream.resume(n, time.monotonic())
        link = self._streams.get(task.id)
        if link is None:
            return
        link.grant(n)
        for run in self._inflight.values():
            if run.task is task and run.deadline is not None:
                run.deadline += paused_s

    def _on_stream_end(self, key: str, item: object) -> None:
        run = self._inflight.get(key)
        if run is None:
            return
        run.ended = True
        if isinstance(item, BaseException):
            run.record = run.record or GuildError(f"the chunk queue of stream task {run.task.id} failed: {item}")
        elif isinstance(item, list | tuple) and item[2]:  # the worker closed the generator on CANCEL
            run.cancelled = True
        if run.record is not None:
            self._end_stream(run)

    def _end_stream(self, run: _Running) -> None:
        from guildcore.backends import daskerrors
        from guildcore.backends.daskworker import OK

        del self._inflight[run.key]
        assert run.stream is not None
        run.stream.close()
        self._streams.pop(run.task.id, None)
        record, task = run.record, run.task
        if run.cancelled and not isinstance(record, BaseException):
            self._finish_cancelled(task)
        elif isinstance(record, BaseException):
            self._finish_error(task, record)
        elif isinstance(record, list) and record[0] == OK:
            self._count_worker(task, record[3])
            self._finish_result(task, None)
        elif isinstance(record, list):
            self._finish_error(task, daskerrors.reported(task, record, self._limit_bytes))

    def _cancel_stream(self, task: Task) -> None:
        if task.state is TaskState.PENDING:
            self._finish_cancelled(task)
            return
        link = self._streams.get(task.id)
        if link is not None:
            link.cancel()

    # ------------------------------------------------------------------ timers

    def _check_timers(self, now: float) -> None:
        if self.recorder is not None and now >= self.recorder.next_tick:
            self.recorder.tick(now, self.snapshot)
        for run in [r for r in self._inflight.values() if r.deadline is not None and now >= r.deadline]:
            if run.task.stream is not None and run.task.stream.paused_since is not None:
                continue  # waiting for the consumer, not running: resuming moves the deadline on
            self._hard_timeout(run)
        if not self._local and self._queue and now >= self._next_refresh:
            self._next_refresh = now + _CAPACITY_REFRESH_S
            limit = self._config.parallelization.max_parallel
            self._capacity = max(1, min(self._link.threads(), limit or 2**31))

    def _hard_timeout(self, run: _Running) -> None:
        """A task ran past its timeout and grace: it ignores the interrupt (blocked in C)."""
        from guildcore.backends import daskerrors

        address = self._link.worker_of(run.key)
        run.dfut.cancel()
        restarted = address is not None and self._link.restart(address)
        if restarted:
            self.counters.agents_replaced_timeout += 1
            self.counters.agents_started += 1
        err = daskerrors.timed_out_stuck(run.task, address, restarted)
        if run.stream is not None:
            run.deadline = None
            run.record = err
            run.stream.end_now()  # after the chunks the worker sent
            return
        del self._inflight[run.key]
        self._retry_or_fail(run.task, err, agent_killed=restarted)

    def _next_deadline(self, now: float) -> float | None:
        deadlines = [r.deadline for r in self._inflight.values() if r.deadline is not None]
        if not self._local and self._queue:
            deadlines.append(self._next_refresh)
        if self.recorder is not None:
            deadlines.append(self.recorder.next_tick)
        if self._to_gather:
            return 0.0
        return max(0.0, min(deadlines) - now) if deadlines else None

    # ------------------------------------------------------------ finishing

    def _task_ended(self, task: Task) -> None:
        self._release_contexts()

    def _fail_everything(self, err: BaseException) -> None:
        while self._queue:
            _p, _s, task = heapq.heappop(self._queue)
            self._finish_error(task, err)
        for run in list(self._inflight.values()):
            if run.stream is not None:
                run.stream.close()
            self._finish_error(run.task, err)
        self._inflight.clear()

    # ------------------------------------------------------------ stopping

    def _begin_stop(self, cancel_futures: bool, kill: bool) -> None:
        self._stopping = True
        self._kill_on_stop = self._kill_on_stop or kill
        # A stream's consumer is usually the thread shutting down (leaving the
        # with block): waiting for it would deadlock, so streams are cancelled.
        self._cancel_queued(streams_only=True)
        for link in self._streams.values():
            link.cancel()
        if cancel_futures or kill:
            self._cancel_queued()
        if kill:
            runs = list(self._inflight.values())
            self._inflight.clear()
            if runs:
                self._client.cancel([r.dfut for r in runs], force=True)
            for run in runs:
                if run.stream is not None:
                    run.stream.close()
                self._finish_cancelled(run.task)

    def _ready_to_exit(self) -> bool:
        with self._wake:
            if self._inbox:
                return False
        return not self._queue and not self._inflight and not self._to_gather

    def _teardown(self) -> None:
        with self._wake:
            self._inbox_closed = True
            left = list(self._inbox)
            self._inbox.clear()
        # Invariant: nothing posted is lost, even what raced with the end.
        for kind, payload in left:
            if kind == "submit":
                for task in payload:
                    self._finish_cancelled(task)
            elif kind == "call":
                payload[1].set_exception(ShutdownError("this Guild is shut down"))
        for link in self._streams.values():
            link.close()
        self._streams.clear()
        if self._link_or_none is None:
            return
        try:
            self._link.close()
        except Exception as exc:
            log.warning("closing the Dask client failed: %s", exc)

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """Pool state for stats and metrics (call through ``call`` while the loop runs).

        Agents are the cluster's workers, each with a small id of this pool's
        (its address beside it) and the tasks it runs now.
        """
        agents: list[dict[str, Any]] = []
        if not self._finished.is_set() and self._link_or_none is not None:
            for address, keys in self._link.processing().items():
                held = [self._inflight[k].task.id for k in keys if k in self._inflight]
                agents.append({
                    "id": self._agent_id(address),
                    "address": address,
                    "pid": self._pids.get(address),
                    "state": "BUSY" if held else "IDLE",
                    "held": held,
                    "tasks_done": self._tasks_done.get(address, 0),
                    "private_bytes": None,
                    "peak_private_bytes": self._peaks.get(address),
                })  # fmt: skip
        return {
            "backend": self._config.parallelization.backend,
            "scheduler": self._link.where if self._link_or_none is not None else None,
            "agents": agents,
            "queued": len(self._queue),
            "in_flight": len(self._inflight),
            "inline": False,
            "counters": dataclasses.asdict(self.counters),
            "peak_private_bytes": {self._agent_id(a): peak for a, peak in self._peaks.items()},
        }

    def _agent_id(self, address: str, pid: int | None = None) -> int:
        """A worker's id in this pool's stats and metrics: 1, 2, ... in the order first seen.

        The run's metrics hear of a worker once its pid is known (it comes
        with the first result the worker sends, or with its death).
        """
        agent_id = self._agent_ids.get(address)
        if agent_id is None:
            agent_id = self._agent_ids[address] = len(self._agent_ids) + 1
        if pid is not None and address not in self._pids:
            self._pids[address] = pid
            if self.recorder is not None:
                now = time.monotonic()
                self.recorder.agent_started(agent_id, pid, now)
                self.recorder.agent_ready(agent_id, now)
        return agent_id
