"""Running a process on a Guild: every step as soon as its needs are met, each cached.

Data flow::

    run(guild, process, inputs)
      definition (registry; parsed once per session) ── bind inputs
      loop on the caller's thread:
        plan.ready ──> start step: inputs resolved, big ones written to shared memory
                       └─> step thread: cache lookup ─ misses ─> g.submit / g.map(adapter)
                                         └─ store results ─> outcome
        wait for any step to end ──> record; plan.doomed ──> "not run"; fail_fast ──> cancel

Steps run on a small thread pool of the runner, one thread per running
step, because ``Guild.map`` blocks its caller; the threads only wait, the
agents compute. Map items go through ``Guild.map`` and so through the usual
routing and chunking; a step's tasks are made inside its ``TaskGroup`` so
that ``fail_fast`` can cancel what is still queued.

Cache keys (namespace ``result``; on by default, ``cache: false`` per step):

- a step: ``(process, version, step, function fingerprint, inputs' key)``;
- a map item: the same with the item itself in place of the step;
- an input's key: a process input's is the key of its value; a step
  output's is that step's *identity*: its key when cached (a map step's: its
  item keys), else the key of its value (of the part read, for ``step.key``).
  So changing a step's function reruns that step and everything downstream
  of it, and nothing else, and a rerun never hashes a big output it can take
  from the cache.

Within a cached map step, items with the same key run once and share the
result (``engine.batching``; a step with ``cache: false`` runs every item:
its function may not be pure). Inputs bigger than ``SHARE_BYTES`` (1 MiB;
``MAP_SHARE_BYTES``, 1 KiB, for the inputs of a map step, which every item
would carry) are written once to a shared-memory segment of the run and
read by the agents from there; the run unlinks its segments when it ends.

Hooks on the Guild used besides its public API: its cache tiers
(``_result_cache().cache``), its duplicate counter (``_count_duplicates``), and
the task groups every Guild honours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import CancelledError as FuturesCancelled
from typing import TYPE_CHECKING, Any

from guildcore.engine.taskgroup import TaskGroup
from guildcore.errors import ConfigError, ConfigTypeError, ProcessFailed
from guildcore.process import registry
from guildcore.process.builder import Process
from guildcore.process.call import SHARED_KEY
from guildcore.process.execute import Outcome, Prepared, StepExecutor, key_or_none
from guildcore.process.model import REQUIRED, ProcessDef, Source, StepDef
from guildcore.process.plan import Graph, doomed, ready
from guildcore.process.record import (
    CANCELLED,
    DONE,
    FAILED,
    NOT_RUN,
    RUNNING,
    WAITING,
    ProcessRun,
    StepRecord,
)

if TYPE_CHECKING:
    from guildcore.cache import TieredCache
    from guildcore.context.writer import ContextHandle
    from guildcore.engine.executor import Guild

__all__ = ["run"]

SHARE_BYTES = 1 << 20  # an input of a single call bigger than this goes through shared memory
MAP_SHARE_BYTES = 1 << 10  # an input every map item would carry: shared above this
MAX_STEP_THREADS = 32
# With an event callback, the loop wakes this often to report map progress.
PROGRESS_INTERVAL_S = 0.25

Event = Callable[[str, StepRecord, "ProcessRun"], None]


def run(
    guild: Guild,
    process: str | Process | ProcessDef,
    inputs: Mapping[str, Any],
    *,
    on_event: Event | None = None,
    how: str | None = None,
) -> ProcessRun:
    """Run ``process`` with ``inputs`` on ``guild``; raise ``ProcessFailed`` if a step failed.

    ``on_event(kind, record, run)`` is called as steps start and end
    (``kind``: start, end) and, while they run, every 0.25 s (progress).
    ``how`` says how the caller had a definition it passes (parsed, cached).
    """
    tiers = guild._result_cache().cache
    defn, found = registry.definition(process, guild.config, tiers)
    how = how or found
    values = bind_inputs(defn, inputs)
    return _Run(guild, tiers, defn, how, values, on_event).execute()


def bind_inputs(defn: ProcessDef, given: Mapping[str, Any]) -> dict[str, Any]:
    """The process inputs: given, else their defaults; unknown and missing ones refused."""
    names = defn.input_names()
    for name in given:
        if name not in names:
            takes = ", ".join(names) if names else "no inputs"
            raise ConfigError(
                f"process {defn.name!r} ({defn.source}) takes no input {name!r}; it takes: {takes}",
                source=defn.source, key=f"inputs.{name}", value=given[name],
            )  # fmt: skip
    out: dict[str, Any] = {}
    for name in names:
        if name in given:
            out[name] = given[name]
        elif defn.inputs is not None and defn.inputs.get(name, REQUIRED) is not REQUIRED:
            out[name] = defn.inputs[name]
        else:
            step, key = _user_of(defn, name)
            line = step.line if step is not None else None
            where = f" ({key} in {defn.source}{f' line {line}' if line else ''})" if key else ""
            raise ConfigError(
                f"process {defn.name!r} needs the input {name!r}{where}, which was not given; "
                f"pass {name}=... to run_process, or --input {name}=VALUE to guild run",
                source=defn.source, line=line, key=key or f"inputs.{name}",
            )  # fmt: skip
    return out


def _user_of(defn: ProcessDef, name: str) -> tuple[StepDef | None, str | None]:
    for step in defn.steps:
        for param, src in step.inputs.items():
            if src.name == name and not src.is_step:
                return step, f"steps.{step.name}.inputs.{param}"
        if step.map_source is not None and step.map_source.name == name and not step.map_source.is_step:
            return step, f"steps.{step.name}.map"
    return None, None


class _Run:
    """One run: the state the runner's thread keeps between step ends."""

    def __init__(
        self, guild: Guild, tiers: TieredCache, defn: ProcessDef, how: str, values: dict[str, Any], on_event: Event | None
    ) -> None:
        self.guild = guild
        self.tiers = tiers
        self.defn = defn
        self.values = values
        self.on_event = on_event
        self.graph = Graph.build(
            [s.name for s in defn.steps], {s.name: s.needs for s in defn.steps}, {s.name: s.priority for s in defn.steps}
        )
        needed = {n for s in defn.steps for n in s.needs}
        self.run = ProcessRun(
            process=defn.name, version=defn.version, source=defn.source, started_at=time.time(),
            steps=[StepRecord(s.name) for s in defn.steps], definition=how,
            sinks=tuple(s.name for s in defn.steps if s.name not in needed),
        )  # fmt: skip
        self.records = {r.step: r for r in self.run.steps}
        self.identity: dict[str, bytes | None] = {}
        self.by_content: set[str] = set()  # steps whose identity is the key of their value
        self.input_keys = {name: key_or_none(value) for name, value in values.items()}
        self.failures: dict[str, BaseException] = {}
        self.started: set[str] = set()
        self.succeeded: set[str] = set()
        self.failed: set[str] = set()
        self.groups: dict[str, TaskGroup] = {}
        self.segments: dict[tuple[str, str | None], ContextHandle] = {}
        self.stopping = False
        self.t0 = time.perf_counter()
        self.mono0 = time.monotonic()  # the run history's clock
        self.executor = StepExecutor(guild, tiers, defn.name, defn.version, self.t0)
        self._event_lock = threading.Lock()

    # ------------------------------------------------------------ the loop

    def execute(self) -> ProcessRun:
        steps = {s.name: s for s in self.defn.steps}
        workers = max(1, min(MAX_STEP_THREADS, len(steps)))
        running: dict[Future[Outcome], str] = {}
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="guild-process") as pool:
                try:
                    while True:
                        if not self.stopping:
                            for name in ready(self.graph, succeeded=self.succeeded, started=self.started):
                                running[self._start(pool, steps[name])] = name
                        if not running:
                            break
                        timeout = PROGRESS_INTERVAL_S if self.on_event is not None else None
                        done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
                        if not done:
                            for name in running.values():
                                self._emit("progress", self.records[name])
                        for fut in done:
                            self._finish(running.pop(fut), fut)
                except BaseException:
                    self._cancel_all()  # Ctrl-C or a bug here: queued tasks go, threads end
                    raise
        finally:
            self._release_segments()
        self.run.wall_s = time.perf_counter() - self.t0
        registry.record_run(self.tiers, self.defn.name, self.defn.modules)
        self._add_to_history()
        if self.failures:
            raise self._failure()
        return self.run

    def _add_to_history(self) -> None:
        """The step timeline into the Guild's run record (metrics), when it keeps one."""
        history = getattr(self.guild, "_run", None)
        if history is None:
            return
        steps = []
        for r in self.run.steps:
            if r.start_s is None or r.end_s is None:
                continue  # never started: nothing to draw
            steps.append({
                "name": r.step, "process": self.defn.name, "status": r.status,
                "start": self.mono0 + r.start_s, "end": self.mono0 + r.end_s,
                "items": r.items, "cache_hits": r.cache_hits, "agents": r.agents,
                "cached": bool(r.items) and r.cache_hits == r.items, "error": r.error,
            })  # fmt: skip
        try:
            history.add_steps(steps)
        except Exception:  # the history must never fail a finished run
            pass

    def _emit(self, kind: str, record: StepRecord) -> None:
        if self.on_event is not None:
            with self._event_lock:
                self.on_event(kind, record, self.run)

    def _start(self, pool: ThreadPoolExecutor, step: StepDef) -> Future[Outcome]:
        self.started.add(step.name)
        record = self.records[step.name]
        record.status = RUNNING
        try:
            prepared = self._prepare(step)
        except Exception as exc:  # a bad map source, an input that cannot be shared
            failed: Future[Outcome] = Future()
            failed.set_exception(exc)
            record.start_s = record.end_s = time.perf_counter() - self.t0
            return failed
        group = self.groups[step.name] = TaskGroup()
        return pool.submit(self._execute, prepared, group)

    def _finish(self, name: str, fut: Future[Outcome]) -> None:
        record = self.records[name]
        exc = fut.exception()
        if exc is None:
            out = fut.result()
            self.run.outputs[name] = out.value
            self.identity[name] = out.identity
            if out.by_content:
                self.by_content.add(name)
            self.succeeded.add(name)
            record.status = DONE
            record.start_s, record.end_s = out.start_s, out.end_s
            record.items, record.cache_hits, record.duplicates = out.items, out.hits, out.duplicates
            record.agents, record.inline = len(out.pids), out.inline
        else:
            self.failed.add(name)
            cancelled = isinstance(exc, FuturesCancelled) and self.stopping
            record.status = CANCELLED if cancelled else FAILED
            if record.end_s is None:
                record.end_s = time.perf_counter() - self.t0
            if not cancelled:
                self.failures[name] = exc
                record.error = f"{type(exc).__name__}: {exc}"
                if self.defn.fail_fast and not self.stopping:
                    self.stopping = True
                    self._cancel_all()
        self._emit("end", record)
        self._release_unneeded()
        for step, cause in doomed(self.graph, failed=self.failed, started=self.started).items():
            self.started.add(step)
            self.failed.add(step)
            self.records[step].status = NOT_RUN
            self.records[step].cause = cause
            self._emit("end", self.records[step])
        if self.stopping:
            for step in self.graph.order:
                if step not in self.started:
                    self.started.add(step)
                    self.records[step].status = NOT_RUN
                    self.records[step].cause = name
                    self._emit("end", self.records[step])

    def _cancel_all(self) -> None:
        self.stopping = True
        for group in self.groups.values():
            group.cancel()

    def _failure(self) -> ProcessFailed:
        first = next(iter(self.failures.values()))
        not_run = [r.step for r in self.run.steps if r.status == NOT_RUN]
        finished = [r.step for r in self.run.steps if r.status == DONE]
        parts = [f"step {n!r} raised {type(e).__name__}: {e}" for n, e in self.failures.items()]
        message = f"process {self.defn.name!r} failed: " + "; ".join(parts)
        if not_run:
            message += f"; not run: {', '.join(not_run)}"
        message += f"; finished: {', '.join(finished) if finished else 'none'}"
        err = ProcessFailed(message, run=self.run, failures=self.failures)
        err.__cause__ = first
        return err

    # ------------------------------------------------------------ inputs

    def _value(self, src: Source) -> Any:
        value = self.run.outputs[src.name] if src.is_step else self.values[src.name]
        if src.key is None:
            return value
        if not isinstance(value, Mapping) or src.key not in value:
            what = f"the output of step {src.name!r}" if src.is_step else f"the input {src.name!r}"
            raise ConfigError(
                f"{src} reads key {src.key!r} of {what}, a {type(value).__name__} without it; "
                "check the key, or what the step returns", key=str(src),
            )  # fmt: skip
        return value[src.key]

    def _source_key(self, src: Source) -> bytes | None:
        if src.key is not None and (not src.is_step or src.name in self.by_content):
            # The part read, by content: index.root must not change when another
            # file of the index does.
            try:
                return key_or_none("guild-process-value", self._value(src))
            except Exception:
                return None
        base = self.identity.get(src.name) if src.is_step else self.input_keys.get(src.name)
        if base is None:
            return None
        return base if src.key is None else key_or_none(base, src.key)

    def _prepare(self, step: StepDef) -> Prepared:
        items: list[Any] | None = None
        if step.map_source is not None:
            source = self._value(step.map_source)
            if not isinstance(source, list | tuple):
                raise ConfigTypeError(
                    f"step {step.name!r} maps over {step.map_source}, a {type(source).__name__}; "
                    "map needs a list or a tuple", key=f"steps.{step.name}.map",
                )  # fmt: skip
            items = list(source)
        kwargs: dict[str, Any] = {}
        shared: dict[str, Any] = {}
        parts = []
        for param, src in sorted(step.inputs.items()):
            value = self._value(src)
            parts.append((param, self._source_key(src)))
            limit = MAP_SHARE_BYTES if items is not None and len(items) > 1 else SHARE_BYTES
            ref = self._shared_ref(src, value, limit)
            if ref is not None:
                shared[param] = ref
            else:
                kwargs[param] = value
        inputs_key = None if any(k is None for _p, k in parts) else key_or_none(parts, step.map_param)
        return Prepared(step, kwargs, shared, inputs_key, items)

    def _shared_ref(self, src: Source, value: Any, limit: int) -> Any:
        """A ContextRef of a one-value segment holding ``value``, if it is bigger than ``limit``."""
        handle = self.segments.get((src.name, src.key))
        if handle is not None:
            return handle.ref
        if isinstance(value, int | float | bool) or value is None:
            return None
        from guildcore import codec

        try:
            size = len(codec.encode(value))
        except Exception:
            return None  # the call itself will report what cannot be encoded
        if size <= limit:
            return None
        from guildcore.context import write_context

        handle = write_context({SHARED_KEY: value}, generation=0)
        self.segments[(src.name, src.key)] = handle
        return handle.ref

    def _release_unneeded(self) -> None:
        """Unlink the segments of inputs whose readers have all ended."""
        for (name, key), handle in list(self.segments.items()):
            readers = [s for s in self.defn.steps if (name, key) in {(x.name, x.key) for x in s.inputs.values()}]
            if all(self.records[s.name].status not in (WAITING, RUNNING) for s in readers):
                self._drop(name, key, handle)

    def _release_segments(self) -> None:
        for (name, key), handle in list(self.segments.items()):
            self._drop(name, key, handle)

    def _drop(self, name: str, key: str | None, handle: ContextHandle) -> None:
        from guildcore.context.view import detach

        del self.segments[(name, key)]
        detach(handle.name)  # inline calls may have mapped it in this process
        handle.unlink()

    # ------------------------------------------------------------ one step (its thread)

    def _execute(self, prep: Prepared, group: TaskGroup) -> Outcome:
        record = self.records[prep.step.name]
        record.start_s = time.perf_counter() - self.t0
        self._emit("start", record)
        with group.active():
            return self.executor.run(prep)
