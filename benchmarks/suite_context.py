"""Shared read-only context: guildcore against the usual ways to share data.

Cases (medians of ``repeats`` runs, wall time including setup and pool start):

- ``read-4k``: 200 tasks on 2 agents, each sums a random 4 KB slice of a
  256 MB context, once with a ``bytes`` value and once with a numpy array of
  32M float64. Methods: ProcessPoolExecutor passing the context as an
  argument (3 tasks, extrapolated to 200: each task pickles 256 MB),
  ProcessPoolExecutor with an initializer, a fork copy-on-write global,
  joblib (automatic memmapping; the bytes value is given as a uint8 array so
  joblib can memmap it), mpire shared objects (fork), a bare SharedMemory
  attach, and guildcore's context.
- ``write-256mb``: ``write_context`` of 256 MB against a bare copy into a new
  segment (target: no slower).
- ``lookup-1m``: a 1,000,000-key dict context, 20,000 single-key lookups in
  one agent (target: under 20 us per lookup).

guildcore runs through ``Guild.share``/``submit`` once the engine has them;
until then through a ProcessPoolExecutor (forkserver) whose tasks
``attach(ref)``. The table says which ran.

Run: ``python -m benchmarks.suite_context`` (or through ``python -m benchmarks``).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from guildcore.context import ContextRef, attach, write_context

NAME = "context"

CONTEXT_BYTES = 256 << 20  # 256 MB
SLICE_BYTES = 4096
TASKS = 200
AGENTS = 2
PICKLED_ARG_TASKS = 3  # each one pickles the whole context: run a few and extrapolate
LOOKUP_KEYS = 1_000_000
LOOKUPS = 20_000
LOOKUP_TARGET_US = 20.0


@dataclass
class Row:
    case: str
    method: str
    times_s: list[float] = field(default_factory=list)
    note: str = ""
    unit: str = "s"

    @property
    def median(self) -> float:
        return statistics.median(self.times_s)


# -- task functions (module level: agents import them) ----------------------

_GLOBAL: Any = None  # the context as a per-agent global (initializer, fork, bare attach)


def _sum_slice(value: Any, offset: int) -> float:
    if isinstance(value, np.ndarray) and value.dtype != np.uint8:
        start = offset // value.itemsize
        return float(value[start : start + SLICE_BYTES // value.itemsize].sum())
    return float(np.frombuffer(value, dtype=np.uint8, count=SLICE_BYTES, offset=offset).sum())


def _task_arg(value: Any, offset: int) -> float:
    return _sum_slice(value, offset)


def _init_global(value: Any) -> None:
    global _GLOBAL
    _GLOBAL = value


def _task_global(offset: int) -> float:
    return _sum_slice(_GLOBAL, offset)


def _task_mpire(shared: Any, offset: int) -> float:
    return _sum_slice(shared, offset)


def _task_bare(name: str, kind: str, offset: int) -> float:
    global _GLOBAL
    if _GLOBAL is None or _GLOBAL[0] != name:
        # Python 3.11 registers this mere attach with the resource tracker; harmless here only
        # because forkserver agents share the supervisor's tracker (a separate tracker would
        # unlink the segment when the agent exits).
        shm = SharedMemory(name=name)
        buf = shm.buf
        assert buf is not None
        value = np.frombuffer(buf, dtype=np.float64) if kind == "ndarray" else buf
        _GLOBAL = (name, shm, value)
    return _sum_slice(_GLOBAL[2], offset)


def _task_guild_ref(ref: ContextRef, offset: int) -> float:
    return _sum_slice(attach(ref)["v"], offset)


def _task_guild_current(offset: int) -> float:
    from guildcore.context import current

    return _sum_slice(current()["v"], offset)


def _lookups_in_agent(ref: ContextRef, keys: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    view = attach(ref)
    attach_s = time.perf_counter() - start
    start = time.perf_counter()
    for key in keys:
        view[key]
    return attach_s, (time.perf_counter() - start) / len(keys)


# -- methods -------------------------------------------------------------------


def _pool(method: str, **kwargs: Any) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(AGENTS, mp_context=multiprocessing.get_context(method), **kwargs)


def _noop(x: int) -> int:
    return x


def _run_pickled_arg(value: Any, offsets: list[int]) -> float:
    """Seconds for all tasks, extrapolated: pool start + (time of a few tasks) x TASKS / few."""
    start = time.perf_counter()
    with _pool("forkserver") as pool:
        list(pool.map(_noop, range(AGENTS)))  # agents up: startup is not extrapolated
        started = time.perf_counter()
        sum(pool.map(_task_arg, [value] * PICKLED_ARG_TASKS, offsets[:PICKLED_ARG_TASKS]))
        tasks_s = time.perf_counter() - started
    return (time.perf_counter() - start) - tasks_s + tasks_s * TASKS / PICKLED_ARG_TASKS


def _run_initializer(value: Any, offsets: list[int]) -> float:
    with _pool("forkserver", initializer=_init_global, initargs=(value,)) as pool:
        return sum(pool.map(_task_global, offsets))


def _run_fork_global(value: Any, offsets: list[int]) -> float:
    _init_global(value)
    try:
        with _pool("fork") as pool:
            return sum(pool.map(_task_global, offsets))
    finally:
        _init_global(None)


def _run_joblib(value: Any, offsets: list[int]) -> float:
    from joblib import Parallel, delayed  # type: ignore[import-untyped]

    arr = value if isinstance(value, np.ndarray) else np.frombuffer(value, dtype=np.uint8)
    results = Parallel(n_jobs=AGENTS)(delayed(_task_arg)(arr, off) for off in offsets)
    return float(sum(results))


def _run_mpire(value: Any, offsets: list[int]) -> float:
    from mpire.pool import WorkerPool

    with WorkerPool(n_jobs=AGENTS, shared_objects=value, start_method="fork") as pool:
        return float(sum(pool.map(_task_mpire, offsets, progress_bar=False)))


def _run_bare_shm(value: Any, offsets: list[int]) -> float:
    nbytes = value.nbytes if isinstance(value, np.ndarray) else len(value)
    shm = SharedMemory(create=True, size=nbytes)
    try:
        buf = shm.buf
        assert buf is not None
        if isinstance(value, np.ndarray):
            np.frombuffer(buf, dtype=value.dtype)[:] = value
        else:
            buf[:nbytes] = value
        del buf
        kind = "ndarray" if isinstance(value, np.ndarray) else "bytes"
        with _pool("forkserver") as pool:
            return sum(
                pool.map(_task_bare, [shm.name] * len(offsets), [kind] * len(offsets), offsets)
            )
    finally:
        shm.close()
        shm.unlink()


def _guild_has_share() -> bool:
    try:
        from guildcore.engine.executor import Guild
    except ImportError:
        return False
    return hasattr(Guild, "share")


def _run_guildcore(value: Any, offsets: list[int]) -> float:
    if _guild_has_share():
        from guildcore.engine.executor import Guild

        with Guild(max_agents=AGENTS, min_agents=AGENTS) as g:
            getattr(g, "share")({"v": value})  # noqa: B009 - present only in newer engines
            return float(sum(g.map(_task_guild_current, offsets)))
    handle = write_context({"v": value}, generation=1)
    try:
        with _pool("forkserver") as pool:
            return sum(pool.map(_task_guild_ref, [handle.ref] * len(offsets), offsets))
    finally:
        handle.unlink()


READ_METHODS: list[tuple[str, Callable[[Any, list[int]], float], str]] = [
    (
        "ProcessPoolExecutor, context as argument",
        _run_pickled_arg,
        f"{PICKLED_ARG_TASKS} tasks, extrapolated to {TASKS}",
    ),
    ("ProcessPoolExecutor, initializer", _run_initializer, "one copy per agent"),
    ("fork copy-on-write global", _run_fork_global, "fork only"),
    (
        "joblib (memmapping)",
        _run_joblib,
        "bytes given as a uint8 array; loky agents reused between runs",
    ),
    ("mpire shared_objects (fork)", _run_mpire, ""),
    ("bare SharedMemory attach", _run_bare_shm, "stdlib SharedMemory(name=) per agent"),
    ("guildcore context", _run_guildcore, ""),
]


def _contexts() -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("bytes 256 MB", lambda: np.random.default_rng(1).bytes(CONTEXT_BYTES)),
        ("ndarray 32M float64", lambda: np.random.default_rng(2).random(CONTEXT_BYTES // 8)),
    ]


def bench_read(
    repeats: int, methods: list[tuple[str, Callable[[Any, list[int]], float], str]]
) -> list[Row]:
    rows = []
    rng = random.Random(3)
    offsets = [rng.randrange(0, CONTEXT_BYTES - SLICE_BYTES) // 64 * 64 for _ in range(TASKS)]
    guild_note = (
        "Guild.share + map"
        if _guild_has_share()
        else "write_context + ProcessPoolExecutor(forkserver) + attach(ref)"
    )
    for label, make in _contexts():
        value = make()
        for method, fn, note in methods:
            row = Row(
                f"read-4k x{TASKS}, {label}",
                method,
                note=guild_note if fn is _run_guildcore else note,
            )
            for _ in range(repeats):
                start = time.perf_counter()
                extrapolated_s = fn(value, offsets)
                elapsed = time.perf_counter() - start
                row.times_s.append(extrapolated_s if fn is _run_pickled_arg else elapsed)
            rows.append(row)
        del value
    return rows


def bench_write(repeats: int) -> list[Row]:
    data = np.random.default_rng(4).bytes(CONTEXT_BYTES)
    bare = Row("write 256 MB", "bare copy into a new SharedMemory")
    ours = Row(
        "write 256 MB", "guildcore write_context", note="target: no slower than the bare copy"
    )
    for _ in range(repeats):
        start = time.perf_counter()
        shm = SharedMemory(create=True, size=len(data))
        buf = shm.buf
        assert buf is not None
        buf[:] = data
        del buf
        shm.close()
        bare.times_s.append(time.perf_counter() - start)
        shm.unlink()
        start = time.perf_counter()
        handle = write_context({"blob": data}, generation=1)
        ours.times_s.append(time.perf_counter() - start)
        handle.unlink()
    return [bare, ours]


def bench_lookup(repeats: int) -> list[Row]:
    mapping = {f"key-{i}": i for i in range(LOOKUP_KEYS)}
    rng = random.Random(5)
    keys = [f"key-{rng.randrange(LOOKUP_KEYS)}" for _ in range(LOOKUPS)]
    write = Row("1M-key dict: write and attach", "guildcore write_context")
    attach_row = Row("1M-key dict: write and attach", "guildcore attach in an agent")
    lookup = Row(
        "1M-key dict: single-key lookup",
        f"guildcore lookup, {LOOKUPS} keys in one agent",
        unit="us",
        note=f"target: under {LOOKUP_TARGET_US:.0f} us",
    )
    for _ in range(repeats):
        start = time.perf_counter()
        handle = write_context(mapping, generation=1)
        write.times_s.append(time.perf_counter() - start)
        try:
            with cf.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("forkserver")
            ) as pool:
                attach_s, per_lookup_s = pool.submit(_lookups_in_agent, handle.ref, keys).result()
        finally:
            handle.unlink()
        attach_row.times_s.append(attach_s)
        lookup.times_s.append(per_lookup_s * 1e6)
    return [write, attach_row, lookup]


def _peers_missing() -> dict[str, str]:
    missing = {}
    for module, method in (
        ("joblib", "joblib (memmapping)"),
        ("mpire", "mpire shared_objects (fork)"),
    ):
        try:
            __import__(module)
        except ImportError as exc:
            missing[method] = f"{module} is not installed ({exc}); pip install -e '.[bench]'"
    return missing


def measure(repeats: int = 3) -> list[Row]:
    missing = _peers_missing()
    methods = [m for m in READ_METHODS if m[0] not in missing]
    return bench_write(repeats) + bench_lookup(repeats) + bench_read(repeats, methods)


def _target_notes(rows: list[Row]) -> list[str]:
    by = {(r.case, r.method): r for r in rows}
    notes = []
    bare = by.get(("write 256 MB", "bare copy into a new SharedMemory"))
    ours = by.get(("write 256 MB", "guildcore write_context"))
    if bare and ours:
        ok = ours.median <= bare.median * 1.10  # within noise of the bare copy
        notes.append(
            f"write 256 MB: guildcore {ours.median:.3f} s vs bare copy {bare.median:.3f} s "
            f"(target: no slower) {'ok' if ok else 'MISSED'}"
        )
    lookup = next((r for r in rows if r.unit == "us"), None)
    if lookup:
        ok = lookup.median < LOOKUP_TARGET_US
        notes.append(
            f"1M-key lookup: {lookup.median:.1f} us per lookup (target: under "
            f"{LOOKUP_TARGET_US:.0f} us) {'ok' if ok else 'MISSED'}"
        )
    return notes


def format_table(rows: list[Row]) -> str:
    lines = [
        "| case | method | median | vs guildcore | runs | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    ours: dict[str, float] = {}
    for row in rows:
        if row.method.startswith("guildcore"):
            ours.setdefault(row.case, row.median)
    for row in rows:
        base = ours.get(row.case)
        ratio = f"{row.median / base:.2f}x" if base else ""
        value = f"{row.median:.1f} us" if row.unit == "us" else f"{row.median:.3f} s"
        lines.append(
            f"| {row.case} | {row.method} | {value} | {ratio} | {len(row.times_s)} | {row.note} |"
        )
    return "\n".join(lines)


def run(bench: Any) -> None:
    """Entry for ``python -m benchmarks``: each case is a group, guildcore its baseline."""
    for method, reason in _peers_missing().items():
        bench.skip(method, reason)
    rows = measure(bench.repeat)
    for row in rows:
        bench.record(row.case, row.method, row.times_s, unit=row.unit, note=row.note)
    for text in _target_notes(rows):
        bench.note(text)
    path = (
        "Guild.share + map"
        if _guild_has_share()
        else "write_context + ProcessPoolExecutor(forkserver) + attach(ref)"
    )
    bench.note(
        f"read-4k: wall time for {TASKS} tasks on {AGENTS} agents, including writing or copying "
        f"the context and starting the pool; guildcore runs as {path}"
    )


if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_REPEATS", "3"))
    rows = measure(repeats)
    print(format_table(rows))
    print("\n".join(_target_notes(rows)))
