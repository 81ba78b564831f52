"""``Guild``: guildcore's own API over the supervisor.

This module covers ``Guild`` (submit, map, starmap, imap, stream, share,
stats, shutdown): checking the caller's arguments, choosing chunk sizes,
building ``Task`` records and handing them to the ``Supervisor``, which owns
everything else; plus resolving a ``Config`` into ``SupervisorSettings`` and
stopping live Guilds at interpreter exit.

It does not cover the ``concurrent.futures`` face (``futures.GuildExecutor``),
the iterators a caller holds while work runs (``iterators``), nor anything
after submission (``supervisor``).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from guildcore.config import Config, agent_cache_env, load_config
from guildcore.context import ContextRef, ContextRegistry, sweep_stale, task_scope
from guildcore.engine.agent import MODE_CALL, MODE_MAP, MODE_STARMAP, MODE_STREAM
from guildcore.engine.batching import DuplicateCounter, group_by_key, spread
from guildcore.engine.functions import describe, spec_for
from guildcore.engine.iterators import MAX_AUTO_CHUNK, ImapRun, StreamIterator
from guildcore.engine.lazymain import check_not_importing_main
from guildcore.engine.pool import AgentStarter
from guildcore.engine.progress import Progress
from guildcore.engine.routing import MAX_INLINE_BATCH_S, Route, Router, decide
from guildcore.engine.shmbuf import Ring
from guildcore.engine.stream import StreamState
from guildcore.engine.supervisor import Supervisor, SupervisorSettings
from guildcore.engine.task import Task
from guildcore.engine.taskgroup import current_group
from guildcore.errors import ConfigError, ShutdownError

if TYPE_CHECKING:
    from guildcore.engine.resultcache import ResultCache
    from guildcore.metrics import Alert, Run, RunRecorder
    from guildcore.process import Process, ProcessRun

T = TypeVar("T")
R = TypeVar("R")

_DEFAULT: Any = object()  # "use the configured value" (None means "none")

# Chunks per agent that map(chunksize='auto') aims for: enough that the last
# chunk's tail is short (load balance), few enough that per-chunk overhead
# (a frame each way, ~50 µs) stays far below the work.
_CHUNKS_PER_AGENT = 16
# map(chunksize='auto') chunks are guided: each takes 1/(agents * held * this)
# of the items still unchunked, never fewer than the auto size, where held is
# what one agent may hold (1 + pool.prefetch). Few, large chunks keep
# per-chunk costs low; the last chunks stay small so that agents finish
# together on uneven work. Dividing by held too matters: an agent is sent its
# prefetched chunks at once, and no other agent can take them back, so big
# prefetched chunks would fix half the batch to agents before any finished.
_GUIDED_SHARE = 2

# An inline batch may run this long whatever its prediction: below it,
# timing noise is not a reason to give up the inline path.
_INLINE_SLACK_S = 0.05

_live: weakref.WeakSet[Guild] = weakref.WeakSet()
# Set when interpreter exit begins: from then on every submit raises, as the
# stdlib executors do (an atexit handler runs after this point).
_interpreter_exiting = threading.Event()


def _shutdown_all_at_exit() -> None:
    """At interpreter exit, finish the work of every Guild still running.

    As with ``ProcessPoolExecutor``, work submitted and never waited for
    runs to completion before the interpreter goes, unless it was
    cancelled: a script may end right after its last ``submit``. Nothing
    submitted is silently lost. A task that hangs holds exit up to its
    timeout (``limits.timeout``; none by default for ``GuildExecutor``, as in
    the stdlib).
    """
    _interpreter_exiting.set()
    for guild in list(_live):
        try:
            guild.shutdown(wait=True)
        except Exception:
            pass


try:  # runs before non-daemon threads are joined, like concurrent.futures
    threading._register_atexit(_shutdown_all_at_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - other Pythons
    import atexit

    atexit.register(_shutdown_all_at_exit)

# Fork-safety: a child forked while a Guild is live (a fork-context pool of
# another library, a bare os.fork) inherits _live but not the supervisor
# threads, so at its exit _shutdown_all_at_exit would wait for them forever.
# Those Guilds belong to the parent.
os.register_at_fork(after_in_child=_live.clear)


def _codec_cost_per_item(items: list[Any], sample: int = 256) -> float:
    """The supervisor's codec work per item (encode + decode) on a sample of ``items``."""
    from guildcore import codec

    part = items[:sample]
    t0 = time.perf_counter()
    codec.decode(codec.encode(part))
    return (time.perf_counter() - t0) / len(part)


def _settings_from(config: Config) -> SupervisorSettings:
    pool, lim = config.pool, config.limits
    parallel = config.parallelization.enabled and config.parallelization.strategy != "sequential"
    max_agents = pool.max_agents
    if config.parallelization.max_parallel is not None:
        max_agents = min(max_agents, config.parallelization.max_parallel)
    if parallel and config.parallelization.strategy == "adaptive":
        max_agents = _adaptive_agents(config, max_agents)
    return SupervisorSettings(
        min_agents=min(pool.min_agents, max_agents),
        max_agents=max_agents,
        idle_timeout_s=pool.idle_timeout,
        scale_up_queue_length=pool.scale_up_queue_length,
        balancing=pool.balancing,
        prefetch=pool.prefetch,
        max_tasks_per_agent=pool.max_tasks_per_agent,
        quarantine_after=pool.quarantine_after,
        limit_bytes=lim.per_agent,
        sample_interval_s=lim.sample_interval,
        timeout_grace_s=lim.timeout_grace,
        stream_window=config.streaming.window,
        parallel=parallel,
    )


def _adaptive_agents(config: Config, max_agents: int) -> int:
    """``strategy: adaptive``: as many agents as the host's load and memory leave room for, at start."""
    from guildcore import monitor
    from guildcore.engine import limits

    bounds = monitor.MonitorLimits.from_config(config, max_agents=max_agents)
    readings = monitor.Probe(limits.read_private_bytes).read((), time.monotonic())
    return monitor.adaptive_plan(readings, monitor.Mode.NORMAL, bounds).agents


class Guild:
    """A supervised pool of agents. Use as ``with Guild(max_agents=4) as g:``.

    Keyword arguments override configuration by section
    (``pool={"max_agents": 4}``) or by shortcut (``max_agents=4``,
    ``per_agent="200MB"``, ``timeout=None``). ``initializer(*initargs)`` runs
    once in every agent before its first task. ``on_alert(alert)`` receives
    each ``guildcore.Alert`` as it is raised (on the supervisor's thread:
    keep it quick).
    """

    def __init__(
        self,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        config: Config | None = None,
        on_alert: Callable[[Alert], object] | None = None,
        **overrides: Any,
    ) -> None:
        check_not_importing_main()
        self.config = config if config is not None else load_config(overrides or None)
        if config is not None and overrides:
            raise ConfigError("pass either config= or keyword overrides to Guild, not both", key="config")
        self._settings = _settings_from(self.config)
        self._starter = starter = AgentStarter(
            start_method=self.config.pool.start_method,
            limit_bytes=self.config.limits.per_agent,
            initializer=initializer,
            initargs=tuple(initargs),
            preload=preload,
            result_threshold=_result_threshold(self.config),
            # @cached inside a task: the same store and caching settings as this Guild.
            cache_env=agent_cache_env(self.config),
            report_stats=self._recorder is not None,
        )
        self._results: ResultCache | None = None
        self._final_cache_stats: dict[str, Any] | None = None
        self._results_lock = threading.Lock()
        self._contexts = ContextRegistry()
        self._router = Router()
        self._routing = self._settings.parallel and self.config.parallelization.strategy in ("auto", "adaptive")
        self._context_digest: bytes | None = None
        self._duplicates = DuplicateCounter()  # identical items of cached maps, run once
        # Segments of supervisors that died without cleaning up (SIGKILL).
        sweep_stale()
        if not self._settings.parallel:
            warnings.warn(
                "parallelization is disabled (parallelization.enabled: false or strategy: sequential); "
                "tasks run inline in the supervisor (sequential fallback), one at a time",
                RuntimeWarning,
                stacklevel=2,
            )
        self._supervisor = Supervisor(self._settings, starter, self._recorder)
        self._shutdown_lock = threading.Lock()
        self._is_shutdown = False
        self._supervisor.start()
        _live.add(self)

    # ----------------------------------------------------------- submitting

    def _timeout(self, timeout: Any) -> float | None:
        if timeout is _DEFAULT:
            return self.config.limits.timeout
        if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0):
            raise ConfigError(f"timeout must be a positive number of seconds or None, not {timeout!r}", key="timeout", value=timeout)
        return None if timeout is None else float(timeout)

    def _retries(self, retries: Any) -> int:
        if retries is None or retries is _DEFAULT:
            return self.config.pool.retries
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"retries must be a whole number >= 0, not {retries!r}", key="retries", value=retries)
        return retries

    def _make_task(
        self,
        fn: Callable[..., Any],
        mode: int,
        payload: Any,
        *,
        priority: int = 0,
        timeout: Any = _DEFAULT,
        retries: Any = _DEFAULT,
        n_items: int = 1,
        future_type: type[Future[Any]] = Future,
    ) -> Task:
        task_id = self._supervisor.new_task_id()
        # The task holds the context generation current at submit time.
        ctx_ref = self._contexts.acquire(task_id) if self._contexts.current is not None else None
        task = Task(
            id=task_id,
            ctx_ref=ctx_ref,
            on_done=self._release_context if ctx_ref is not None else None,
            fn_name=describe(fn),
            spec=spec_for(fn),
            mode=mode,
            payload=payload,
            future=future_type(),
            priority=priority,
            timeout_s=self._timeout(timeout),
            retries=self._retries(retries),
            n_items=n_items,
        )
        group = current_group()  # a process step's tasks, cancelled together on fail_fast
        if group is not None:
            group.add(task.future, n_items)
        return task

    def _release_context(self, task: Task) -> None:
        self._contexts.release(task.id)

    # ---------------------------------------------------------- context

    def share(self, mapping: Mapping[Any, Any]) -> ContextRef:
        """Write ``mapping`` once into shared memory for every agent to read.

        Returns a small reference that may be passed as a task argument;
        inside a task ``guildcore.context()`` returns the context current
        when the task was submitted. Calling ``share`` again makes a new
        generation: tasks submitted afterwards see it, tasks in flight keep
        theirs, and the old segment goes once no task holds it.
        """
        self._check_open()
        handle = self._contexts.share(mapping)
        self._context_digest = handle.digest
        return handle.ref

    # ----------------------------------------------------------- caching

    def _result_cache(self) -> ResultCache:
        with self._results_lock:
            if self._results is None:
                # Imported on first use: the cache stores (lmdb, xxhash) cost
                # ~60 ms of import, which a Guild that never caches skips.
                from guildcore.cache import TieredCache
                from guildcore.engine.resultcache import ResultCache

                self._results = ResultCache(TieredCache.from_config(self.config))
            return self._results

    def _check_open(self, after_shutdown: str = "cannot submit: this Guild is shut down; create a new Guild") -> None:
        if _interpreter_exiting.is_set():
            raise ShutdownError("cannot schedule new futures after interpreter shutdown")
        if self._is_shutdown:
            raise ShutdownError(after_shutdown)

    def submit(
        self,
        fn: Callable[..., R],
        /,
        *args: Any,
        priority: int = 0,
        timeout: float | None = _DEFAULT,
        retries: int | None = None,
        cache: bool = False,
        stream_result: bool = False,
        **kwargs: Any,
    ) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` in an agent; lower ``priority`` runs first.

        With ``stream_result=True`` the future's result is a readable binary
        stream (``io.RawIOBase``) instead of the value: the raw bytes of a
        ``bytes``/``bytearray`` result, the codec encoding of anything else.
        A result bigger than ``streaming.stream_threshold`` is then read
        straight out of shared memory; close the stream to release it.

        With ``cache=True`` a result cached for the same function code,
        arguments and context is returned without running anything.
        """
        self._check_open()
        if stream_result and cache:
            # Refused up front, hit or miss: a cached value is not a stream.
            raise ConfigError("stream_result=True cannot be combined with cache=True; cache the value instead", key="stream_result")
        payload = [args, kwargs]
        item_keys: list[bytes | None] = []
        if cache:
            rc = self._result_cache()
            item_keys = rc.keys_for(fn, MODE_CALL, [payload], self._context_digest)
            found = rc.lookup(item_keys)
            hit = found[0]
            self._record_lookup(fn, item_keys, found)
            from guildcore.engine.resultcache import MISS

            if hit is not MISS:
                done: Future[R] = Future()
                done.set_result(hit)
                return done
        task = self._make_task(fn, MODE_CALL, payload, priority=priority, timeout=timeout, retries=retries)
        task.raw_result = stream_result
        if cache:
            self._result_cache().store_when_done(task.future, item_keys, single=True)
        self._supervisor.submit([task])
        return task.future

    def _auto_chunksize(self, n: int) -> int:
        agents = max(1, self._settings.max_agents)
        return max(1, min(MAX_AUTO_CHUNK * 4, math.ceil(n / (agents * _CHUNKS_PER_AGENT))))

    def _chunk_tasks(
        self, fn: Callable[..., Any], items: list[Any], chunksize: int, mode: int, *, guided: bool = False, **opts: Any
    ) -> list[Task]:
        """Chunks of ``chunksize`` items; ``guided``: larger first, down to ``chunksize`` at the end."""
        tasks = []
        n = len(items)
        share = max(1, self._settings.max_agents) * (1 + self._settings.prefetch) * _GUIDED_SHARE
        start = 0
        while start < n:
            size = max(chunksize, -(-(n - start) // share)) if guided else chunksize
            chunk = items[start : start + size]
            tasks.append(self._make_task(fn, mode, chunk, n_items=len(chunk), **opts))
            start += size
        return tasks

    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        chunksize: int | str = "auto",
        progress: bool = False,
        priority: int = 0,
        timeout: float | None = _DEFAULT,
        retries: int | None = None,
        cache: bool = False,
    ) -> list[R]:
        """``[fn(x) for x in iterable]`` across the agents, in input order.

        ``chunksize='auto'`` sends items in batches so per-item overhead stays
        small; ``timeout`` applies to each item. The first failing item's
        exception is raised; Ctrl-C cancels the rest of the batch. With
        ``cache=True`` items already computed (by this or an earlier run) are
        not dispatched, and each finished chunk is stored at once, so an
        interrupted batch resumes where it stopped.
        """
        return self._map(fn, iterable, MODE_MAP, chunksize, progress, priority, timeout, retries, cache)

    def starmap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        *,
        chunksize: int | str = "auto",
        progress: bool = False,
        priority: int = 0,
        timeout: float | None = _DEFAULT,
        retries: int | None = None,
        cache: bool = False,
    ) -> list[R]:
        """``[fn(*args) for args in iterable]`` across the agents, in input order."""
        items = [tuple(a) for a in iterable]
        return self._map(fn, items, MODE_STARMAP, chunksize, progress, priority, timeout, retries, cache)

    def _map(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        mode: int,
        chunksize: int | str,
        progress: bool,
        priority: int,
        timeout: Any,
        retries: Any,
        cache: bool = False,
    ) -> list[Any]:
        self._check_open()
        items = iterable if isinstance(iterable, list) else list(iterable)
        if not items:
            return []
        if cache:
            return self._map_cached(fn, items, mode, chunksize, progress, priority, timeout, retries)
        # Routing applies to defaults only: an explicit chunksize, timeout or
        # retries asks for the pool's machinery.
        routable = chunksize == "auto" and timeout is _DEFAULT and retries in (None, _DEFAULT)
        done: list[Any] = []
        if routable and self._routing and self._route(fn, items).inline:
            done = self._map_inline(fn, items, mode)
            if len(done) == len(items):
                return done
            items = items[len(done) :]  # items far slower than measured: the rest go to the pool
            self._router.sent_back(len(items))
        size = self._resolve_chunksize(chunksize, len(items))
        tasks = self._chunk_tasks(
            fn, items, size, mode, guided=chunksize == "auto", priority=priority, timeout=timeout, retries=retries
        )
        rest = self._gather(tasks, Progress(len(items), enabled=progress, label=describe(fn), status=self._live))
        return done + rest if done else rest

    def _gather(self, tasks: list[Task], bar: Progress) -> list[Any]:
        """Submit chunk tasks and concatenate their results in order."""
        if bar.enabled:
            for task in tasks:
                task.future.add_done_callback(_advance_by(bar, task.n_items))
        self._supervisor.submit(tasks)
        out: list[Any] = []
        try:
            for task in tasks:
                out.extend(task.future.result())
        except BaseException:
            for task in tasks:
                task.future.cancel()
            raise
        finally:
            bar.close()
        for task in tasks:
            if task.compute_s is not None and isinstance(task.spec, str):
                self._router.observe(task.spec, task.n_items, task.compute_s)
        return out

    def _route(self, fn: Callable[..., Any], items: list[Any]) -> Route:
        """Inline or pool for this batch, from the agents' last measurement of ``fn``."""
        spec = spec_for(fn)
        item_s = self._router.item_s(spec) if isinstance(spec, str) else None
        route = decide(item_s=item_s, ipc_s=_codec_cost_per_item(items), n_items=len(items), agents=self._settings.max_agents)
        self._router.count(route, len(items))
        return route

    def _map_inline(self, fn: Callable[..., Any], items: list[Any], mode: int) -> list[Any]:
        """Run a batch of tiny items here: shipping them would cost more than computing them.

        Items run in slices that double in size, with the clock read between
        slices (a read per item would cost as much as ``x + 1``). Items can be
        far slower than the measurement that sent them here (the same
        function, bigger arguments): once the batch runs 10x over its
        prediction, or past ``MAX_INLINE_BATCH_S``, what is done is returned
        and the caller sends the rest to the pool; the new timing is recorded,
        so the next batch of this function goes to the pool at once.
        """
        spec = spec_for(fn)
        predicted = self._router.item_s(spec) if isinstance(spec, str) else None
        apply = map if mode == MODE_MAP else itertools.starmap
        out: list[Any] = []
        current = self._contexts.current
        start = time.perf_counter()
        began = time.monotonic()
        step = 1
        pending = iter(items)  # islice over one iterator: no copy of the list per slice
        with task_scope(current.ref if current is not None else None):
            while len(out) < len(items):
                out.extend(apply(fn, itertools.islice(pending, step)))
                step *= 2
                elapsed = time.perf_counter() - start
                budget = max(_INLINE_SLACK_S, 10 * (predicted or 0.0) * len(out))
                if len(out) < len(items) and (elapsed > budget or elapsed > MAX_INLINE_BATCH_S):
                    if isinstance(spec, str):
                        self._router.observe(spec, len(out), elapsed)
                    break
        if self._recorder is not None:
            self._recorder.inline_batch(describe(fn), len(out), began, time.monotonic())
        return out

    def _map_cached(
        self,
        fn: Callable[..., Any],
        items: list[Any],
        mode: int,
        chunksize: int | str,
        progress: bool,
        priority: int,
        timeout: Any,
        retries: Any,
    ) -> list[Any]:
        rc = self._result_cache()
        item_keys = rc.keys_for(fn, mode, items, self._context_digest)
        out = rc.lookup(item_keys)
        hits = self._record_lookup(fn, item_keys, out)
        from guildcore.engine.resultcache import MISS

        missed = [i for i, value in enumerate(out) if value is MISS]
        if not missed:
            return out
        # cache=True promises that equal items give equal results: each key
        # runs once (see engine.batching for why plain maps do not do this).
        run, source = group_by_key([item_keys[i] for i in missed])
        todo = [missed[r] for r in run]
        self._duplicates.add(len(missed) - len(todo))
        size = self._resolve_chunksize(chunksize, len(todo))
        tasks: list[Task] = []
        for start in range(0, len(todo), size):
            index = todo[start : start + size]
            task = self._make_task(
                fn, mode, [items[i] for i in index], n_items=len(index),
                priority=priority, timeout=timeout, retries=retries,
            )
            rc.store_when_done(task.future, [item_keys[i] for i in index], single=False)
            tasks.append(task)
        bar = Progress(len(todo), enabled=progress, label=describe(fn), status=self._live, cache_hits=hits)
        computed = self._gather(tasks, bar)
        for i, value in zip(missed, spread(computed, source), strict=True):
            out[i] = value
        return out

    def _resolve_chunksize(self, chunksize: int | str, n: int) -> int:
        if chunksize == "auto":
            return self._auto_chunksize(n)
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ConfigError(f"chunksize must be 'auto' or a whole number >= 1, not {chunksize!r}", key="chunksize", value=chunksize)
        return chunksize

    def imap(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        chunksize: int | str = "auto",
        window: int | None = None,
        priority: int = 0,
        timeout: float | None = _DEFAULT,
        retries: int | None = None,
    ) -> Iterator[R]:
        """Results in input order as they complete; the input is read lazily.

        At most ``window`` chunks are in flight (default: four per agent), so
        a ten-million-item generator is never materialized.
        """
        return self._imap(fn, iterable, chunksize, window, priority, timeout, retries, ordered=True)

    def imap_unordered(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        chunksize: int | str = "auto",
        window: int | None = None,
        priority: int = 0,
        timeout: float | None = _DEFAULT,
        retries: int | None = None,
    ) -> Iterator[R]:
        """Results in completion order; the input is read lazily."""
        return self._imap(fn, iterable, chunksize, window, priority, timeout, retries, ordered=False)

    def _imap(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | str,
        window: int | None,
        priority: int,
        timeout: Any,
        retries: Any,
        *,
        ordered: bool,
    ) -> Iterator[Any]:
        self._check_open()
        limit = window or max(2, 4 * self._settings.max_agents)
        fixed = None if chunksize == "auto" else self._resolve_chunksize(chunksize, 1)
        sized = len(iterable) if hasattr(iterable, "__len__") and fixed is None else None  # type: ignore[arg-type]
        if sized is not None:
            fixed = self._auto_chunksize(sized)
        opts = {"priority": priority, "timeout": timeout, "retries": retries}
        return ImapRun(
            iter(iterable),
            make_task=lambda chunk: self._make_task(fn, MODE_MAP, chunk, n_items=len(chunk), **opts),
            submit=self._supervisor.submit,
            chunksize=fixed,
            limit=limit,
            max_agents=self._settings.max_agents,
            ordered=ordered,
        )

    def stream(self, fn: Callable[..., Iterable[R]], /, *args: Any, timeout: float | None = _DEFAULT, **kwargs: Any) -> StreamIterator[R]:
        """Iterate what generator ``fn(*args, **kwargs)`` yields, as it yields it.

        Backpressure: at most ``streaming.window`` chunks are in flight (the
        agent pauses, and its pause does not count against ``timeout``); close
        the iterator (or leave a ``with`` block) to cancel the task and free
        the agent: the generator's ``finally`` runs when it next yields.
        Dropping the iterator cancels too, and so does shutting the Guild down.
        Chunks that are ``bytes``/``bytearray``/``memoryview`` of 64 KiB up to
        ``streaming.chunk_size`` travel through a shared-memory ring and each
        arrives as a new ``bytes`` (``bytearray`` for a bytearray).
        """
        self._check_open()
        if not self.config.streaming.enabled:  # one plain task; its list arrives at once
            from guildcore.engine.collect import CollectedStream, run_to_list

            task = self._make_task(run_to_list, MODE_CALL, [(spec_for(fn), args, kwargs), {}], timeout=timeout, retries=0)
            task.fn_name = describe(fn)
            self._supervisor.submit([task])
            return CollectedStream(task.future)
        task = self._make_task(fn, MODE_STREAM, [args, kwargs], timeout=timeout, retries=0)
        sup = self._supervisor
        window = self._settings.stream_window
        ring = None
        if self._settings.parallel:
            ring = Ring.create(os.getpid(), task.id, window, self.config.streaming.chunk_size)
        task.stream = StreamState(
            window,
            grant=lambda n: sup.grant_credit(task, n),
            cancel=lambda: sup.cancel_stream(task),
            ring=ring,
        )
        sup.submit([task])
        return StreamIterator(task.stream, task.future)

    # ------------------------------------------------------------ processes

    def run_process(self, process: str | Process, /, **inputs: Any) -> ProcessRun:
        """Run a process: ``.guild/processes/NAME.yaml``, a YAML path, or a ``Process``.

        Each step starts as soon as the steps it needs have finished, and each
        step (each item of a map step) is cached. Returns the step outputs as
        a mapping (``run["total"]``) with the step timeline; raises
        ``ProcessFailed`` (holding the partial run) if a step failed.
        """
        self._check_open()
        from guildcore.process.runner import run  # the workflow layer, on this Guild's API

        return run(self, process, inputs)

    # -------------------------------------------------------------- lifecycle

    def stats(self) -> dict[str, Any]:
        """Pool counters, agents, per-agent peak private memory, cache and context.

        After shutdown it still answers, with the final counters and
        ``"closed": True``: summaries are usually printed after the ``with``.
        """
        snap: dict[str, Any]
        if self._supervisor.join(0):
            # The owner loop has ended: its state no longer changes, so it is read here.
            snap = self._supervisor.snapshot()
            snap["closed"] = True
            snap["cache"] = self._final_cache_stats
        else:
            snap = self._supervisor.call(self._supervisor.snapshot).result(timeout=10)
            snap["closed"] = False
            snap["cache"] = self._results.stats() if self._results is not None else None
        snap["routing"] = self._router.stats()
        snap["start_method"] = self._starter.method
        current = self._contexts.current
        snap["context"] = {
            "generation": self._contexts.generation,
            "bytes": current.size if current is not None else 0,
            "live_generations": self._contexts.live_generations(),
        }
        return snap

    def metrics(self) -> dict[str, Any] | None:
        """The full record of this Guild's run: every task, agent, series and alert.

        Its layout is described in ``guildcore.metrics.summary``; after
        shutdown it is the record saved to the run history. None when
        ``monitoring.metrics`` is off.
        """
        run, rec = self._run, self._recorder
        if run is None or rec is None:
            return None
        if run.record is not None:
            return run.record
        if self._supervisor.join(0):
            rec.drain()
            return run.build()

        def build() -> dict[str, Any]:
            rec.drain()
            return run.build()

        record: dict[str, Any] = self._supervisor.call(build).result(timeout=30)
        return record

    def _metrics_summary(self) -> dict[str, Any] | None:
        record = self.metrics()
        if record is None:
            return None
        summary = dict(record["summary"])
        summary["run_id"] = record["id"]
        summary["alerts_raised"] = [a for g in record["guilds"] for a in g["alerts"]]
        summary["agents"] = {
            a["key"]: {k: a[k] for k in ("tasks", "busy_fraction", "peak_private_bytes", "reason")}
            for g in record["guilds"] for a in g["agents"]
        }  # fmt: skip
        return summary

    def _live(self) -> dict[str, Any] | None:
        return self._recorder.live if self._recorder is not None else None

    def _record_lookup(self, fn: Callable[..., Any], item_keys: list[bytes | None], found: list[Any]) -> int:
        """Tell the recorder about one batch lookup of the result cache; return its hits."""
        from guildcore.engine.resultcache import MISS, NAMESPACE

        hits = sum(1 for v in found if v is not MISS)
        if self._recorder is not None:
            from guildcore.keys import fingerprint

            try:
                fp: str | None = fingerprint(fn)
            except Exception:
                fp = None
            self._recorder.cache_lookup(describe(fn), fp, NAMESPACE, item_keys, hits, time.monotonic())
        return hits

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, _kill: bool = False) -> None:
        """Stop taking work; finish (or cancel) what is queued; stop the agents.

        With ``wait=False`` the queued work still runs, and interpreter exit
        waits for it, as with the stdlib executors. A later call may still
        cancel what is queued (``cancel_futures=True``) or wait.
        """
        with self._shutdown_lock:
            first = not self._is_shutdown
            self._is_shutdown = True
        if first or _kill or cancel_futures:
            self._supervisor.shutdown(wait=False, cancel_futures=cancel_futures, kill=_kill)
        if not wait:
            if first:  # resources go when the owner loop ends, not before: tasks still run
                threading.Thread(target=self._close_after_join, name="guild-closer", daemon=True).start()
            return
        if self._supervisor.on_owner_thread():
            raise ShutdownError(
                "cannot wait for this Guild to shut down from one of its done-callbacks: they run on "
                "its supervisor thread, which the wait would block; call shutdown(wait=False) there"
            )
        self._supervisor.join()
        self._close_resources()
        _live.discard(self)

    def _close_after_join(self) -> None:
        self._supervisor.join()
        self._close_resources()
        _live.discard(self)

    def _close_resources(self) -> None:
        with self._results_lock:
            results, self._results = self._results, None
        if results is not None:
            self._final_cache_stats = results.stats()
            results.close()
        self._contexts.close()
        self._starter.close()  # after the owner loop has reaped every agent

    def __enter__(self) -> Guild:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Leaving on an exception (Ctrl-C included) stops work at once; a
        # clean exit lets submitted work finish, like the stdlib executors.
        failed = exc_type is not None
        self.shutdown(wait=True, cancel_futures=failed, _kill=failed)

    def __repr__(self) -> str:
        state = "shut down" if self._is_shutdown else "running"
        return f"<Guild {state} agents={self._settings.min_agents}..{self._settings.max_agents}>"


def _result_threshold(config: Config) -> int | None:
    """Results bigger than this go through shared memory (None: always the pipe)."""
    if not (config.streaming.enabled and config.optimization.streaming):
        return None
    return config.streaming.stream_threshold


def _advance_by(bar: Progress, n: int) -> Callable[[Future[Any]], None]:
    def advance(_future: Future[Any]) -> None:
        bar.advance(n)

    return advance
