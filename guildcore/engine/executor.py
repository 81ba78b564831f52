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

import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future

from guildcore._records import made_once
from guildcore.config import Config, agent_cache_env, load_config
from guildcore.context import task_scope
from guildcore.engine.agent import MODE_CALL, MODE_MAP, MODE_STARMAP, MODE_STREAM
from guildcore.engine.functions import describe, spec_for
from guildcore.engine.lazymain import check_not_importing_main
from guildcore.engine.pool import AgentStarter
from guildcore.engine.supervisor import Supervisor, SupervisorSettings
from guildcore.engine.task import Task
from guildcore.errors import ConfigError, ShutdownError

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from guildcore.cache import TieredCache
    from guildcore.context import ContextRef, ContextRegistry
    from guildcore.engine.backend import Pool
    from guildcore.engine.batching import DuplicateCounter
    from guildcore.engine.iterators import StreamIterator
    from guildcore.engine.monitorio import MonitorIO
    from guildcore.engine.progress import Progress
    from guildcore.engine.resultcache import ResultCache
    from guildcore.engine.routing import Decision, Pattern, Router, RoutingStore
    from guildcore.metrics import Alert, Run, RunRecorder
    from guildcore.monitor import Probe
    from guildcore.process import Process, ProcessRun

    T = TypeVar("T")
    R = TypeVar("R")

_DEFAULT: Any = object()  # "use the configured value" (None means "none")

# An inline batch may run this long whatever its prediction: below it,
# timing noise is not a reason to give up the inline path.
_INLINE_SLACK_S = 0.05
# An inline run judges items cheaper or dearer than shipping them only once
# it has run this long: a few items' time is mostly the first call's cost.
_MEASURE_S = 0.001
# About how long agents take to start (a template fork and a fork of it, the
# owner loop's thread, READY): a batch done here sooner than this is not
# worth starting them for, whatever its items cost.
_BOOT_S = 0.02
# Slices an inline run measures before it starts agents for items worth
# them, unless one item alone outlasts _BOOT_S: the first slice often pays
# for a first call (200 tasks reading a shared context measured 1 ms for the
# first, which maps the segment, and 10 us for the others).
_SLICES_BEFORE_START = 3
# A slice that ran this long times its items well enough (the clock's own
# cost and jitter are far below it).
_TIMEABLE_S = 50e-6
# Items run here in slices of about this long at most, so that an inline run
# notices soon that an agent is ready or that items got slow.
_SLICE_S = 0.002

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


def _settings_from(config: Config) -> SupervisorSettings:
    pool, lim = config.pool, config.limits
    parallel = config.parallelization.enabled and config.parallelization.strategy != "sequential"
    max_agents = pool.max_agents
    if config.parallelization.max_parallel is not None:
        max_agents = min(max_agents, config.parallelization.max_parallel)
    adaptive = parallel and config.parallelization.strategy == "adaptive"
    # The monitor watches local agents; on Dask, Dask's worker memory manager
    # does (the backend refuses the monitor's own settings changed).
    monitored = config.monitoring.enabled and config.parallelization.backend == "local"
    if adaptive and not monitored:
        max_agents = _adaptive_agents(config, max_agents)  # no readings while it runs: sized once, now
    monitor_limits = None
    if monitored:
        from guildcore.monitorlimits import MonitorLimits

        monitor_limits = MonitorLimits.from_config(config, max_agents=max_agents).replace(
            min_agents=min(pool.min_agents, max_agents)
        )
        if max_agents > 1 and lim.per_agent > lim.total_system:
            _warn_one_agent(lim.per_agent, lim.total_system, max_agents)
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
        queue_strategy=pool.queue_strategy,
        monitor=monitor_limits,
        adaptive=adaptive and monitor_limits is not None,
    )


def _warn_one_agent(per_agent: int, total_system: int, max_agents: int) -> None:
    """Say why a pool will hold one agent: the monitor starts one only while a whole ``per_agent`` fits.

    Raising ``per_agent`` alone (a task needs more memory) is common, and the
    budget it then contradicts is easy to miss: without this warning the pool
    would quietly run on one agent, the reason only in ``stats()["monitor"]``.
    """
    from guildcore._errors import format_bytes

    warnings.warn(
        f"limits.per_agent ({format_bytes(per_agent)}) is more than limits.total_system "
        f"({format_bytes(total_system)}): the memory monitor starts an agent only while one more "
        f"per_agent fits under total_system, so this Guild will run 1 agent, not up to {max_agents}; "
        f"raise limits.total_system (to {format_bytes(per_agent * max_agents)} for {max_agents} agents) "
        "or set monitoring.enabled: false",
        RuntimeWarning,
        stacklevel=4,
    )


def _adaptive_agents(config: Config, max_agents: int) -> int:
    """``strategy: adaptive`` without the monitor: as many agents as the host's load and memory leave room for, at start."""
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
        self._run: Run | None = None
        self._recorder: RunRecorder | None = None
        if self.config.monitoring.metrics:
            from guildcore.engine.limits import read_private_bytes
            from guildcore.metrics.run import guild_recorder

            self._run, self._recorder = guild_recorder(
                self.config,
                max_agents=self._settings.max_agents,
                min_agents=self._settings.min_agents,
                memory_probe=read_private_bytes,
                on_alert=on_alert,
            )
        preload = self.config.optimization.preload_modules()
        if self.config.optimization.preload is True or any(m.startswith("process:") for m in preload):
            # The modules of named processes, or of those this project ran last.
            from guildcore.process.preload import expand_preload

            preload = expand_preload(self.config)
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
        self._cache: TieredCache | None = None
        self._results: ResultCache | None = None
        self._final_cache_stats: dict[str, Any] | None = None
        self._results_lock = threading.Lock()
        # Made on first use (``share``; a map): the shared context's and
        # routing's modules are a tenth of what a Guild imports, and neither
        # is needed for a submit.
        self._contexts_made: ContextRegistry | None = None
        self._router_made: Router | None = None
        # Its own lock, not _results_lock: a make() that opens the cache tiers (which take that lock) must not deadlock.
        self._made_lock = threading.Lock()
        self._routing = self._settings.parallel and self.config.parallelization.strategy in ("auto", "adaptive")
        self._context_digest: bytes | None = None
        self._duplicates: DuplicateCounter | None = None  # identical items of cached maps, run once
        # Segments of supervisors that died without cleaning up (SIGKILL).
        from guildcore.shm import sweep_dead

        sweep_dead()
        if not self._settings.parallel:
            warnings.warn(
                "parallelization is disabled (parallelization.enabled: false or strategy: sequential); "
                "tasks run inline in the supervisor (sequential fallback), one at a time",
                RuntimeWarning,
                stacklevel=2,
            )
        self._supervisor: Pool
        self._monitor_io: MonitorIO | None = None
        if self.config.parallelization.backend == "local" or not self._settings.parallel:
            if self._settings.monitor is not None:
                self._monitor_io = self._make_monitor_io(on_alert)
            self._supervisor = Supervisor(self._settings, starter, self._recorder, self._monitor_io)
        else:  # a backend above the engine runs the tasks; it knows how many run at once
            from guildcore.engine.backend import open_backend  # not on the local path

            self._supervisor = open_backend(self.config, self._settings, starter, self._recorder)
            self._settings = self._supervisor.settings
        self._shutdown_lock = threading.Lock()
        self._is_shutdown = False
        # The pool (template, owner loop, agents) starts on first need: a
        # script whose maps all run here never forks, and a fork made now
        # would make this process copy every page it writes afterwards.
        self._started = False
        self._start_lock = threading.Lock()
        _live.add(self)

    def _make_monitor_io(self, on_alert: Callable[[Alert], object] | None) -> MonitorIO:
        """The monitor's probe and levers: this process above its memory now, its agents, its caches."""
        from guildcore.engine import limits
        from guildcore.engine.monitorio import MonitorIO

        baseline = limits.read_private_bytes(os.getpid()) or 0  # now: what the caller held before its Guild

        def make_probe() -> Probe:
            from guildcore.monitor import Probe

            return Probe(
                lambda pid: limits.read_private_bytes(pid),  # through the seam tests replace
                cache_bytes=lambda: sum(c.memory_bytes() for c in self._memory_caches()),
                supervisor_baseline=baseline,
            )

        return MonitorIO(make_probe, self._memory_caches, recorder=self._recorder, on_alert=on_alert)

    def _memory_caches(self) -> list[TieredCache]:
        """The in-process caches of this process the monitor counts and cuts: this Guild's, ``@cached``'s."""
        out = [] if self._cache is None else [self._cache]
        cached = sys.modules.get("guildcore.cache.cached")
        default = cached.default_cache_if_made() if cached is not None else None
        if default is not None and default is not self._cache:
            out.append(default)
        return out

    def _ensure_started(self, first: list[Task] | None = None) -> bool:
        """Start the pool now if it has not started: the template (if safe), the owner loop, agents.

        ``first``: tasks to hand over as the pool starts; True if they were.
        They are posted before the owner thread starts, so its first turn
        sends them to the first agent with its start. Posted after, they
        waited for this thread to have the GIL back from that turn.
        """
        if self._started:
            return False
        with self._start_lock:
            if self._started or self._is_shutdown:
                return False
            local = isinstance(self._supervisor, Supervisor)  # a backend's workers are not agents: no template
            if local:
                # The first agent is asked for now, to fork while the owner loop starts.
                self._starter.prepare(first_agent=self._settings.parallel and self._settings.max_agents > 0)
                if first is not None:
                    self._supervisor.submit(first)
            self._supervisor.start()
            self._started = True
            return local and first is not None

    def _submit(self, tasks: list[Task]) -> None:
        """Hand tasks to the supervisor, starting the pool first if needed."""
        if not self._ensure_started(tasks):
            self._supervisor.submit(tasks)

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
        task = Task(
            id=self._supervisor.new_task_id(),
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
        # The task holds the context generation current at submit time; taken
        # last, once nothing above can raise and leave the hold behind.
        contexts = self._contexts_made
        if contexts is not None and contexts.current is not None:
            task.ctx_ref = contexts.acquire(task.id)
            if task.ctx_ref is not None:
                task.on_done = self._release_context
        # A process step's tasks, cancelled together on fail_fast. No group can
        # be entered before its module is imported: a Guild does not import it.
        groups = sys.modules.get("guildcore.engine.taskgroup")
        group = groups.current_group() if groups is not None else None
        if group is not None:
            group.add(task.future, n_items)
        return task

    def _release_context(self, task: Task) -> None:
        self._contexts.release(task.id)

    @property
    def _contexts(self) -> ContextRegistry:
        """This Guild's shared contexts, made at the first ``share`` (or a read of them)."""

        def make() -> ContextRegistry:
            from guildcore.context.registry import ContextRegistry

            return ContextRegistry()

        return made_once(self, "_contexts_made", self._made_lock, make)

    @property
    def _router(self) -> Router:
        """Routing for maps, made at the first map (or a read of its stats)."""

        def make() -> Router:
            from guildcore.engine.routing import Router

            agent_set = f"{self._settings.max_agents}/{self._starter.method}/{self.config.limits.per_agent}"
            return Router(agents=self._settings.max_agents, agent_set=agent_set, store=self._routing_store())

        return made_once(self, "_router_made", self._made_lock, make)

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

    def _tiers(self) -> TieredCache:
        """The Guild's one handle on the cache store (results and routing), opened on first use."""
        with self._results_lock:
            if self._cache is None:
                # Imported on first use: the cache stores (lmdb, xxhash) cost
                # ~60 ms of import, which a Guild that never caches skips.
                from guildcore.cache import TieredCache

                cache = TieredCache.from_config(self.config)
                if self._monitor_io is not None:
                    self._monitor_io.adopt(cache)  # made under memory pressure: it starts with its levers set
                self._cache = cache
            return self._cache

    def _result_cache(self) -> ResultCache:
        cache = self._tiers()
        with self._results_lock:
            if self._results is None:
                from guildcore.engine.resultcache import ResultCache

                self._results = ResultCache(cache)
            return self._results

    def _routing_store(self) -> RoutingStore | None:
        """Where routing decisions persist: the store's ``routing`` namespace (None: caching off)."""
        caching = self.config.caching
        if not caching.enabled:
            return None
        path = self.config.cache_path()
        policy = caching.namespaces.get("routing")
        from guildcore.engine.routing import RoutingStore

        return RoutingStore(
            path,
            ttl_s=policy.ttl if policy is not None else None,
            open_cache=self._tiers,
            # Opening the store costs imports; a folder without one has nothing to read.
            exists=lambda: os.path.exists(os.path.join(path, "data.mdb")),
        )

    def _check_open(self, after_shutdown: str = "cannot submit: this Guild is shut down; create a new Guild") -> None:
        if _interpreter_exiting.is_set():
            raise ShutdownError("cannot schedule new futures after interpreter shutdown")
        if self._is_shutdown:
            raise ShutdownError(after_shutdown)
        self._supervisor.check_open()  # its loop may be gone (a bug): refuse, never hang

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
        self._submit([task])
        return task.future

    def _auto_chunksize(self, n: int) -> int:
        from guildcore.engine import chunking  # maps only, as progress, batching and routing

        return chunking.auto_size(n, self._settings.max_agents)

    def _chunk_tasks(
        self, fn: Callable[..., Any], items: list[Any], chunksize: int, mode: int, *, guided: bool = False, **opts: Any
    ) -> list[Task]:
        """Chunks of ``chunksize`` items; ``guided``: larger first, down to ``chunksize`` at the end."""
        if guided:
            from guildcore.engine import chunking

            sizes = chunking.guided_sizes(
                len(items), chunksize, agents=self._settings.max_agents, held=1 + self._settings.prefetch
            )
        else:
            sizes = [chunksize] * -(-len(items) // chunksize)
        tasks = []
        start = 0
        for size in sizes:
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
        from guildcore.engine.progress import Progress

        bar = Progress(len(items), enabled=progress, label=describe(fn), status=self._live)
        # Routing applies to defaults only: an explicit chunksize, timeout or
        # retries asks for the pool's machinery (isolation).
        if self._routing and chunksize == "auto" and timeout is _DEFAULT and retries in (None, _DEFAULT):
            return self._map_routed(fn, items, mode, bar, priority)
        size = self._resolve_chunksize(chunksize, len(items))
        tasks = self._chunk_tasks(
            fn, items, size, mode, guided=chunksize == "auto", priority=priority, timeout=timeout, retries=retries
        )
        return self._gather(tasks, bar)

    def _map_routed(self, fn: Callable[..., Any], items: list[Any], mode: int, bar: Progress, priority: int) -> list[Any]:
        """A default ``map``: inline or in the pool as routing decides; measured and remembered.

        A remembered decision applies from the first item. Without one, while
        no agent is ready yet, items run here in short timed slices; once an
        agent is up, the rest goes to the pool unless the items proved too
        cheap to ship. With agents up and nothing remembered, the pool runs
        the batch and its agents time it. Whatever the route, a batch that
        would be done here before agents could start (``_BOOT_S``) runs here
        while no agent is ready.
        """
        router = self._router
        pattern = router.pattern(fn, items, starmap=mode == MODE_STARMAP)
        decision = router.lookup(pattern)
        n = len(items)
        done: list[Any] = []
        item_s = decision.item_s if decision is not None else 0.0
        if decision is not None and decision.inline:
            done, item_s = self._run_here(fn, items, mode, bar, until=self._slower_than(decision.item_s))
            router.count_inline(len(done))
            if len(done) == n:
                return done
            # far slower than remembered: item_s is the new measure
        elif not self._supervisor.booted.is_set() and (decision is None or decision.item_s * n < _BOOT_S):
            done, item_s = self._run_here(fn, items, mode, bar, until=self._agents_ready(items, pattern))
            router.count_inline(len(done), booting=True)
            if len(done) == n:
                if decision is None:
                    router.record(pattern, self._decide(items, item_s, n, pattern=pattern))
                return done
        rest = items[len(done) :] if done else items
        if done:
            router.count_handoff(len(rest))
        else:
            router.count_pool()
        from guildcore.engine import chunking

        size = chunking.measured_size(
            len(rest),
            self._settings.max_agents,
            item_s=item_s,
            result_bytes=decision.result_bytes if decision is not None else 0,
        )
        tasks = self._chunk_tasks(fn, rest, size, mode, guided=True, priority=priority)
        out = self._gather(tasks, bar)
        router.record(pattern, self._decide(items, _agents_item_s(tasks) or item_s, n, results=out, pattern=pattern))
        return done + out if done else out

    def _decide(
        self, items: list[Any], item_s: float, n: int, results: list[Any] | None = None, pattern: Pattern | None = None
    ) -> Decision:
        """The decision the measurements support (the codec sample only where it can matter)."""
        from guildcore.engine.routing import MAX_INLINE_ITEM_S, decide

        ipc_s = self._router.ipc_s(pattern, items) if item_s <= MAX_INLINE_ITEM_S else 0.0
        result_bytes = _result_bytes(results) if results else 0
        return decide(item_s=item_s, ipc_s=ipc_s, n_items=n, agents=self._settings.max_agents, result_bytes=result_bytes)

    def _agents_ready(self, items: list[Any], pattern: Pattern | None) -> Callable[[int, float], bool]:
        """Stop an inline run once its items prove worth agents and an agent is ready.

        Items too cheap to ship settle the run here to its end, and no pool
        is started for them. Items worth agents start the pool (if it has
        not started) and keep running here until the first agent is up.
        """
        from guildcore.engine.routing import MAX_INLINE_BATCH_S, MAX_INLINE_ITEM_S, decide

        booted = self._supervisor.booted
        settled: list[bool] = []  # [True] once the items proved cheaper here than shipped
        asked = [0]  # slices measured so far

        def stop(done: int, item_s: float) -> bool:
            asked[0] += 1
            if settled:
                return item_s * done > MAX_INLINE_BATCH_S
            if item_s <= MAX_INLINE_ITEM_S:
                if item_s * done < _MEASURE_S:
                    return False  # too little run to tell a tiny item from a cheap one
                n, agents = len(items), self._settings.max_agents
                if decide(item_s=item_s, ipc_s=self._router.ipc_s(pattern, items), n_items=n, agents=agents).inline:
                    settled.append(True)
                    return False
            if booted.is_set():
                return True
            if item_s * (len(items) - done) < _BOOT_S:
                settled.append(True)  # done here before agents could start: do not start them
                return False
            if asked[0] < _SLICES_BEFORE_START and item_s < _BOOT_S:
                return False  # a first call often pays once (an import, a context to map): measure on
            self._ensure_started()  # worth agents: they start while items go on running here
            return False

        return stop

    def _slower_than(self, predicted_s: float) -> Callable[[int, float], bool]:
        """Stop an inline run that runs 10x over its prediction, or past ``MAX_INLINE_BATCH_S``."""
        from guildcore.engine.routing import MAX_INLINE_BATCH_S

        def stop(done: int, item_s: float) -> bool:
            elapsed = item_s * done
            return elapsed > max(_INLINE_SLACK_S, 10 * predicted_s * done) or elapsed > MAX_INLINE_BATCH_S

        return stop

    def _run_here(
        self, fn: Callable[..., Any], items: list[Any], mode: int, bar: Progress, *, until: Callable[[int, float], bool]
    ) -> tuple[list[Any], float]:
        """Run items in this thread, in timed slices, until done or ``until(done, item_s)``.

        Slices grow fourfold, with the clock read between them (a read per
        item would cost as much as ``x + 1``), up to about ``_SLICE_S`` each,
        so that ``until`` is asked often enough. ``item_s`` is the time per
        item of the fastest slice that ran long enough to time: a slice the
        host paused (another process took the core) must not make tiny items
        look dear. Returns the results so far (at least one) and ``item_s``.

        The run holds the current context generation as a task would, so a
        ``share()`` from another thread cannot unlink it mid-run.
        """
        apply = _apply_map if mode == MODE_MAP else _apply_starmap
        out: list[Any] = []
        hold = object()
        contexts = self._contexts_made
        ref = contexts.acquire(hold) if contexts is not None else None
        began = time.monotonic()
        try:
            with task_scope(ref):
                item_s = _run_slices(apply, fn, items, out, bar, until)
        finally:
            if ref is not None and contexts is not None:
                contexts.release(hold)
        if self._recorder is not None:
            self._recorder.inline_batch(describe(fn), len(out), began, time.monotonic())
        if len(out) == len(items):
            bar.close()
        return out, item_s

    def _gather(self, tasks: list[Task], bar: Progress) -> list[Any]:
        """Submit chunk tasks and concatenate their results in order."""
        if bar.enabled:
            for task in tasks:
                task.future.add_done_callback(_advance_by(bar, task.n_items))
        self._submit(tasks)
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
        from guildcore.engine.batching import group_by_key, spread
        from guildcore.engine.progress import Progress

        run, source = group_by_key([item_keys[i] for i in missed])
        todo = [missed[r] for r in run]
        self._count_duplicates(len(missed) - len(todo))
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

    def _count_duplicates(self, n: int) -> None:
        """Items of a cached batch not computed: an equal item was (the counter is made at the first)."""
        from guildcore.engine.batching import DuplicateCounter

        made_once(self, "_duplicates", self._made_lock, DuplicateCounter).add(n)

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
        # Imported here: imap and stream only, never on a first result's way.
        from guildcore.engine.iterators import ImapRun

        opts = {"priority": priority, "timeout": timeout, "retries": retries}
        return ImapRun(
            iter(iterable),
            make_task=lambda chunk: self._make_task(fn, MODE_MAP, chunk, n_items=len(chunk), **opts),
            submit=self._submit,
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
        Chunks travel straight from the agent through a shared-memory ring
        (``ring.py``) and each arrives as a copy you may keep (a numpy chunk
        as a new array); ``.views()`` on the iterator hands them out in place.
        """
        self._check_open()
        if not self.config.streaming.enabled:  # one plain task; its list arrives at once
            from guildcore.engine.collect import CollectedStream, run_to_list

            task = self._make_task(run_to_list, MODE_CALL, [(spec_for(fn), args, kwargs), {}], timeout=timeout, retries=0)
            task.fn_name = describe(fn)
            self._submit([task])
            return CollectedStream(task.future)
        from guildcore.engine.iterators import StreamIterator
        from guildcore.engine.ring import Ring
        from guildcore.engine.stream import StreamState

        task = self._make_task(fn, MODE_STREAM, [args, kwargs], timeout=timeout, retries=0)
        sup = self._supervisor
        window = self._settings.stream_window
        ring = None
        if self._settings.parallel and self.config.parallelization.backend == "local":  # shared memory
            ring = Ring.create(os.getpid(), task.id, window, self.config.streaming.chunk_size)
        task.stream = StreamState(
            window,
            grant=lambda n: sup.grant_credit(task, n),
            cancel=lambda: sup.cancel_stream(task),
            ring=ring,
        )
        self._submit([task])
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
        if not self._started:
            # No owner loop: its state is read here (nothing else changes it).
            snap = self._supervisor.snapshot()
            snap["closed"] = self._is_shutdown
            snap["cache"] = self._final_cache_stats if self._is_shutdown else (
                self._results.stats() if self._results is not None else None
            )
        elif self._supervisor.join(0):
            # The owner loop has ended: its state no longer changes, so it is read here.
            snap = self._supervisor.snapshot()
            snap["closed"] = True
            snap["cache"] = self._final_cache_stats
        else:
            snap = self._supervisor.call(self._supervisor.snapshot).result(timeout=10)
            snap["closed"] = False
            snap["cache"] = self._results.stats() if self._results is not None else None
        snap.setdefault("backend", "local")
        snap.setdefault("mode", None)  # no memory monitor on a Dask backend (nor with monitoring.enabled off)
        snap.setdefault("monitor", None)
        snap["routing"] = self._router.stats()
        snap["start_method"] = self._starter.method
        snap["metrics"] = self._metrics_summary()
        from guildcore.engine.batching import DuplicateCounter

        snap["batching"] = made_once(self, "_duplicates", self._made_lock, DuplicateCounter).stats()
        contexts = self._contexts_made
        current = contexts.current if contexts is not None else None
        snap["context"] = {
            "generation": contexts.generation if contexts is not None else 0,
            "bytes": current.size if current is not None else 0,
            "live_generations": contexts.live_generations() if contexts is not None else [],
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
        if not self._started or self._supervisor.join(0):  # no owner loop runs: read here
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
        with self._start_lock, self._shutdown_lock:  # Race: no start after this
            first = not self._is_shutdown
            self._is_shutdown = True
        if first or _kill or cancel_futures:
            self._supervisor.shutdown(wait=False, cancel_futures=cancel_futures, kill=_kill)
        if not self._started:  # never needed a pool: nothing runs, nothing to wait for
            if first:
                self._close_resources()
                _live.discard(self)
            return
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
        if self._router_made is not None:
            self._router_made.flush()  # decisions of this Guild go to the store for later runs
        with self._results_lock:
            results, self._results = self._results, None
            cache, self._cache = self._cache, None
        if results is not None:
            self._final_cache_stats = results.stats()
            results.close()  # closes the shared store too
        elif cache is not None:
            cache.close()
        if self._contexts_made is not None:
            self._contexts_made.close()
        if self._monitor_io is not None:
            self._monitor_io.close()
        if self._run is not None and self._recorder is not None:
            self._run.guild_closed(self._recorder, self._final_cache_stats)
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


def _run_slices(
    apply: Callable[[Callable[..., Any], list[Any]], list[Any]],
    fn: Callable[..., Any],
    items: list[Any],
    out: list[Any],
    bar: Progress,
    until: Callable[[int, float], bool],
) -> float:
    """The slices of ``Guild._run_here``, appending to ``out``; returns the time per item."""
    n = len(items)
    step = 1
    work_s = 0.0  # time in the items, not in ``until``
    best = math.inf
    item_s = 0.0
    while len(out) < n:
        before = len(out)
        t0 = time.perf_counter()
        out += apply(fn, items[before : before + step])
        slice_s = time.perf_counter() - t0
        work_s += slice_s
        ran = len(out) - before
        if slice_s >= _TIMEABLE_S or ran == len(out):
            best = min(best, slice_s / ran)
        item_s = min(best, work_s / len(out))
        bar.advance(ran)
        if len(out) < n and until(len(out), item_s):
            break
        step = 4 * step if item_s <= 0 else max(1, min(4 * step, int(_SLICE_S / item_s)))
    return item_s


def _apply_map(fn: Callable[..., Any], part: list[Any]) -> list[Any]:
    # A comprehension, not map(): CPython 3.11 calls a Python function ~15%
    # faster from bytecode than from C (measured on x + 1).
    return [fn(x) for x in part]


def _apply_starmap(fn: Callable[..., Any], part: list[Any]) -> list[Any]:
    return [fn(*args) for args in part]


def _agents_item_s(tasks: list[Task]) -> float | None:
    """Compute time per item, as the agents timed the chunks (None if none reported)."""
    timed = [t for t in tasks if t.compute_s is not None]
    items = sum(t.n_items for t in timed)
    if not items:
        return None
    return sum(t.compute_s or 0.0 for t in timed) / items


def _result_bytes(results: list[Any], sample: int = 4) -> int:
    """Encoded bytes per result, from a few results spread over the list."""
    from guildcore import codec

    picks = results[:: max(1, len(results) // sample)][:sample]
    try:
        return sum(len(codec.encode(r)) for r in picks) // max(1, len(picks))
    except Exception:
        return 0


def _advance_by(bar: Progress, n: int) -> Callable[[Future[Any]], None]:
    def advance(_future: Future[Any]) -> None:
        bar.advance(n)

    return advance
