"""Shared read-only context: guildcore against the usual ways to share data.

The read case: 200 tasks on 2 agents, each sums a random 4 KB slice of a
256 MB context (32 MB with ``--quick``), once as a ``bytes`` value and once
as a numpy array of float64. Systems:

- ProcessPoolExecutor passing the context as an argument: every task pickles
  the whole context, so a few tasks run and the time is extrapolated to 200
  (with ``--quick`` from a 4 MB context, scaled by size too);
- ProcessPoolExecutor with an initializer (one copy per agent);
- a fork copy-on-write global (ProcessPoolExecutor, fork);
- joblib memmapping (``joblib.dump`` once, ``joblib.load(mmap_mode="r")``,
  the memmap passed to each task: joblib's recipe for large inputs);
- mpire shared objects (fork);
- a bare SharedMemory copy, attached once per agent;
- guildcore: ``Guild(min_agents=2, max_agents=2)``, ``g.share({"v": value})``,
  tasks reading ``guildcore.context()`` through ``g.map`` (default chunking)
  and 200 ``g.submit``, or the ContextRef argument through ``g.starmap``.

Each system reports three things, every one interleaved across systems
(round r: set up A B C ..., then the 200 tasks A B C ... several times, then
tear down):

- ``setup``: pool start + placing the context (pickle to initializers, fork,
  dump, copy, share) + warm-up (one trivial task per agent, and the attach);
- ``200 tasks``: the tasks alone, pool started and context placed/attached;
- ``end to end``: setup + the first 200-task run after it.

Then the agents' private memory (RssAnon) before and after reading the whole
context in a guildcore task, and the lookup case: a 1,000,000-key dict
(100,000 with ``--quick``) shared once, 20,000 (5,000) single-key lookups
inside one agent.

Targets (from the issue): ``share`` no slower than the bare copy; 200 tasks
within 1.2x of the fork global; at least 100x faster end to end than
pickling per task; a lookup under 20 µs; agents' private memory unchanged by
the context size.

Run: ``python -m benchmarks context [--quick]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from benchmarks import contextwork as cw
from benchmarks.harness import Bench

NAME = "context"

TASKS = 200
AGENTS = 2
WARM_DELAY_S = 0.02  # a warm-up task holds its agent this long, so every agent gets one
WARM_TRIES = 100
SHARE_TARGET = 1.0  # share() / bare copy
TASKS_TARGET = 1.2  # guildcore 200 tasks / fork global
PICKLE_TARGET = 100.0  # pickling per task / guildcore, end to end
LOOKUP_TARGET_US = 20.0
MEMORY_TARGET_MB = 2.0  # "unchanged": growth of an agent's RssAnon after reading everything
FORK = "fork copy-on-write global"
PICKLED = "ProcessPoolExecutor, context as argument"
GUILD_MAP = "guildcore map"
GUILD_SUBMIT = "guildcore submit x200"
GUILD_REF = "guildcore starmap, ContextRef argument"


@dataclass(frozen=True)
class Sizes:
    context_bytes: int  # 256 MB
    lookup_keys: int
    lookups: int
    pickled_tasks: int  # tasks actually run for the pickled-argument system
    pickled_bytes: int | None  # their context size; None: the full context
    passes: int  # 200-task runs per system per round (the first also makes "end to end")


FULL = Sizes(256 << 20, 1_000_000, 20_000, pickled_tasks=4, pickled_bytes=None, passes=3)
QUICK = Sizes(32 << 20, 100_000, 5_000, pickled_tasks=4, pickled_bytes=4 << 20, passes=2)


def _mb(n: int) -> str:
    return f"{n >> 20} MB"


def _warm(run: Callable[[list[float]], list[int]]) -> None:
    """Run ``run([delay] * 2 * AGENTS)`` until every agent answered (each returns its pid)."""
    seen: set[int] = set()
    for _ in range(WARM_TRIES):
        seen.update(run([WARM_DELAY_S] * 2 * AGENTS))
        if len(seen) >= AGENTS:
            return
    raise RuntimeError(f"warm-up reached {len(seen)} of {AGENTS} agents after {WARM_TRIES} tries")


def _pool(method: str, **kwargs: Any) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(AGENTS, mp_context=multiprocessing.get_context(method), **kwargs)


# -- systems ---------------------------------------------------------------------
#
# Each: setup(value) -> {sub-phase: seconds} (the suite times the whole call),
# run(offsets) -> {variant name: seconds for the 200 tasks}, teardown().


@dataclass
class System:
    name: str
    note: str = ""
    variants: tuple[str, ...] = ()  # names run() reports; default (name,)
    first_pass_only: bool = False  # too slow to repeat within a round
    state: dict[str, Any] = field(default_factory=dict)

    def names(self) -> tuple[str, ...]:
        return self.variants or (self.name,)

    def setup(self, value: Any) -> dict[str, float]:
        raise NotImplementedError

    def run(self, offsets: list[int]) -> dict[str, float]:
        raise NotImplementedError

    def teardown(self) -> None:
        pool = self.state.pop("pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        self.state.clear()


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class ForkGlobal(System):
    def setup(self, value: Any) -> dict[str, float]:
        cw.init_global(value)  # the agents inherit it by fork, copy-on-write
        pool = self.state["pool"] = _pool("fork")
        _warm(lambda d: list(pool.map(cw.pid_after, d)))
        return {}

    def run(self, offsets: list[int]) -> dict[str, float]:
        pool = self.state["pool"]
        return {self.name: _timed(lambda: sum(pool.map(cw.task_global, offsets)))}

    def teardown(self) -> None:
        super().teardown()
        cw.init_global(None)


class Mpire(System):
    def setup(self, value: Any) -> dict[str, float]:
        from mpire.pool import WorkerPool

        pool = WorkerPool(n_jobs=AGENTS, shared_objects=value, start_method="fork", keep_alive=True)
        self.state["mpire"] = pool
        # Workers start on the first map and keep the shared object (keep_alive).
        pool.map(cw.task_mpire, [0] * 4 * AGENTS, progress_bar=False, chunk_size=1)
        return {}

    def run(self, offsets: list[int]) -> dict[str, float]:
        pool = self.state["mpire"]
        return {self.name: _timed(lambda: pool.map(cw.task_mpire, offsets, progress_bar=False))}

    def teardown(self) -> None:
        self.state["mpire"].stop_and_join()
        self.state.clear()


class PickledArg(System):
    def __init__(self, name: str, sizes: Sizes) -> None:
        self.sizes = sizes
        scaled = "" if sizes.pickled_bytes is None else f" of a {_mb(sizes.pickled_bytes)} context"
        super().__init__(
            name,
            note=f"extrapolated: {sizes.pickled_tasks} tasks{scaled}, scaled to {TASKS}"
            + ("" if sizes.pickled_bytes is None else f" x {_mb(sizes.context_bytes)}"),
            first_pass_only=True,
        )

    def setup(self, value: Any) -> dict[str, float]:
        n = self.sizes.pickled_bytes
        self.state["value"] = value if n is None else value[: n // getattr(value, "itemsize", 1)]
        pool = self.state["pool"] = _pool("forkserver")
        _warm(lambda d: list(pool.map(cw.pid_after, d)))
        return {}

    def run(self, offsets: list[int]) -> dict[str, float]:
        pool, value, k = self.state["pool"], self.state["value"], self.sizes.pickled_tasks
        size = value.nbytes if isinstance(value, np.ndarray) else len(value)
        offs = [o % max(1, size - cw.SLICE_BYTES) // 64 * 64 for o in offsets[:k]]
        elapsed = _timed(lambda: sum(pool.map(cw.task_arg, [value] * k, offs)))
        return {self.name: elapsed * TASKS / k * self.sizes.context_bytes / size}


class Initializer(System):
    def setup(self, value: Any) -> dict[str, float]:
        pool = self.state["pool"] = _pool(
            "forkserver", initializer=cw.init_global, initargs=(value,)
        )
        _warm(
            lambda d: list(pool.map(cw.pid_after, d))
        )  # returns once both agents ran the initializer
        return {}

    def run(self, offsets: list[int]) -> dict[str, float]:
        pool = self.state["pool"]
        return {self.name: _timed(lambda: sum(pool.map(cw.task_global, offsets)))}


class Joblib(System):
    def setup(self, value: Any) -> dict[str, float]:
        import joblib  # type: ignore[import-untyped]

        par = self.state["par"] = joblib.Parallel(n_jobs=AGENTS)
        _warm(lambda d: par(joblib.delayed(cw.pid_after)(x) for x in d))
        start = time.perf_counter()
        folder = self.state["folder"] = tempfile.mkdtemp(
            dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        arr = value if isinstance(value, np.ndarray) else np.frombuffer(value, dtype=np.uint8)
        path = os.path.join(folder, "context.mmap")
        joblib.dump(arr, path)
        self.state["mm"] = joblib.load(path, mmap_mode="r")
        return {"dump": time.perf_counter() - start}

    def run(self, offsets: list[int]) -> dict[str, float]:
        import joblib

        par, mm = self.state["par"], self.state["mm"]
        return {self.name: _timed(lambda: par(joblib.delayed(cw.task_arg)(mm, o) for o in offsets))}

    def teardown(self) -> None:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor  # the pool joblib reuses between calls
        if executor is not None:
            executor.shutdown(wait=True)
        shutil.rmtree(self.state["folder"], ignore_errors=True)
        self.state.clear()


class BareShm(System):
    def setup(self, value: Any) -> dict[str, float]:
        pool = self.state["pool"] = _pool("forkserver")
        _warm(lambda d: list(pool.map(cw.pid_after, d)))
        nbytes = value.nbytes if isinstance(value, np.ndarray) else len(value)
        start = time.perf_counter()
        shm = self.state["shm"] = SharedMemory(create=True, size=nbytes)
        buf = shm.buf
        assert buf is not None
        if isinstance(value, np.ndarray):
            np.frombuffer(buf, dtype=np.uint8)[:] = value.reshape(-1).view(np.uint8)
        else:
            buf[:nbytes] = value
        del buf
        copy_s = time.perf_counter() - start
        kind = "ndarray" if isinstance(value, np.ndarray) else "bytes"
        _warm(lambda d: list(pool.map(cw.attach_bare, [shm.name] * len(d), [kind] * len(d), d)))
        return {"copy": copy_s}

    def run(self, offsets: list[int]) -> dict[str, float]:
        pool = self.state["pool"]
        return {self.name: _timed(lambda: sum(pool.map(cw.task_bare, offsets)))}

    def teardown(self) -> None:
        shm = self.state["shm"]
        super().teardown()
        shm.close()
        shm.unlink()


class Guildcore(System):
    def setup(self, value: Any) -> dict[str, float]:
        from guildcore import Guild

        start = time.perf_counter()
        g = self.state["guild"] = Guild(min_agents=AGENTS, max_agents=AGENTS)
        _warm(lambda d: g.map(cw.pid_after, d, chunksize=1))
        started = time.perf_counter()
        self.state["ref"] = g.share({"v": value})
        shared = time.perf_counter()
        _warm(lambda d: g.map(cw.attach_context, d, chunksize=1))
        return {
            "start": started - start,
            "share": shared - started,
            "attach": time.perf_counter() - shared,
        }

    def run(self, offsets: list[int]) -> dict[str, float]:
        g, ref = self.state["guild"], self.state["ref"]
        pairs = [(ref, o) for o in offsets]
        return {
            GUILD_MAP: _timed(lambda: sum(g.map(cw.task_context, offsets))),
            GUILD_SUBMIT: _timed(
                lambda: sum(f.result() for f in [g.submit(cw.task_context, o) for o in offsets])
            ),
            GUILD_REF: _timed(lambda: sum(g.starmap(cw.task_ref, pairs))),
        }

    def private_memory(self) -> list[tuple[int, int, int]]:
        """(pid, RssAnon before, after) reading the whole context, one per agent."""
        g = self.state["guild"]
        by_pid: dict[int, tuple[int, int, int]] = {}
        for _ in range(WARM_TRIES):
            for pid, before, after in g.map(
                cw.read_whole_context, [WARM_DELAY_S] * AGENTS, chunksize=1
            ):
                by_pid.setdefault(pid, (pid, before, after))
            if len(by_pid) >= AGENTS:
                break
        return list(by_pid.values())

    def teardown(self) -> None:
        self.state["guild"].shutdown(wait=True)
        self.state.clear()


def _systems(bench: Bench, sizes: Sizes) -> list[System]:
    # Fork-based systems first in each round: they fork before any pool thread exists.
    systems: list[System] = [
        ForkGlobal(FORK, note="ProcessPoolExecutor(fork), default chunksize 1")
    ]
    if bench.available("mpire", "mpire shared_objects (fork)"):
        systems.append(
            Mpire("mpire shared_objects (fork)", note="keep_alive pool, default chunking")
        )
    systems += [
        PickledArg(PICKLED, sizes),
        Initializer("ProcessPoolExecutor, initializer", note="forkserver; one copy per agent"),
    ]
    if bench.available("joblib", "joblib (memmapping)"):
        systems.append(
            Joblib("joblib (memmapping)", note="dump once, load(mmap_mode='r'), memmap per task")
        )
    systems += [
        BareShm("bare SharedMemory attach", note="forkserver; copy once, attached once per agent"),
        Guildcore("guildcore", variants=(GUILD_MAP, GUILD_SUBMIT, GUILD_REF)),
    ]
    return systems


# -- the read case -------------------------------------------------------------------


def _contexts(sizes: Sizes) -> list[tuple[str, Callable[[], Any]]]:
    n = sizes.context_bytes
    return [
        (f"bytes {_mb(n)}", lambda: np.random.default_rng(1).bytes(n)),
        (f"ndarray {n // 8 >> 20}M float64", lambda: np.random.default_rng(2).random(n // 8)),
    ]


def bench_read(bench: Bench, sizes: Sizes, label: str, value: Any) -> None:
    rng = random.Random(3)
    offsets = [
        rng.randrange(0, sizes.context_bytes - cw.SLICE_BYTES) // 64 * 64 for _ in range(TASKS)
    ]
    systems = _systems(bench, sizes)
    g_setup, g_tasks, g_e2e = f"setup, {label}", f"{TASKS} tasks, {label}", f"end to end, {label}"
    g_place, g_mem = f"place the context, {label}", f"agent private memory (RssAnon), {label}"
    for _ in range(bench.repeat):
        phases: dict[str, dict[str, float]] = {}
        for s in systems:
            start = time.perf_counter()
            phases[s.name] = s.setup(value)
            bench.record(
                g_setup, s.name, [time.perf_counter() - start], unit="s", baseline=FORK, note=s.note
            )
            phases[s.name]["setup"] = time.perf_counter() - start
        for p in range(sizes.passes):
            for s in systems:
                if p and s.first_pass_only:
                    continue
                for name, secs in s.run(offsets).items():
                    bench.record(g_tasks, name, [secs * 1e3], unit="ms", baseline=FORK, note=s.note)
                    if p == 0:
                        total = phases[s.name]["setup"] + secs
                        bench.record(g_e2e, name, [total], unit="s", baseline=PICKLED, note=s.note)
        guild = next(s for s in systems if isinstance(s, Guildcore))
        for _pid, before, after in guild.private_memory():
            bench.record(g_mem, "guildcore agent, before reading", [before / 2**20], unit="MB")
            bench.record(g_mem, "guildcore agent, after reading all", [after / 2**20], unit="MB")
        bench.record(
            g_place,
            "bare SharedMemory copy",
            [phases["bare SharedMemory attach"]["copy"]],
            baseline="bare SharedMemory copy",
        )
        bench.record(g_place, "guildcore g.share", [phases["guildcore"]["share"]])
        bench.record(g_place, "guildcore agents attach (warm-up)", [phases["guildcore"]["attach"]])
        bench.record(g_place, "guildcore Guild start (warm-up)", [phases["guildcore"]["start"]])
        if "joblib (memmapping)" in phases:
            bench.record(
                g_place,
                "joblib dump + load(mmap_mode='r')",
                [phases["joblib (memmapping)"]["dump"]],
            )
        for s in systems:
            s.teardown()


# -- the lookup case -------------------------------------------------------------------


def bench_lookup(bench: Bench, sizes: Sizes) -> None:
    from guildcore import Guild

    n = sizes.lookup_keys
    mapping = {f"key-{i}": i for i in range(n)}
    rng = random.Random(5)
    keys = [f"key-{rng.randrange(n)}" for _ in range(sizes.lookups)]
    label = f"{n:,}-key dict"
    g_lookup, g_first, g_share = (
        f"one lookup, {label}",
        f"first lookup (attach), {label}",
        f"share, {label}",
    )
    note = f"{sizes.lookups:,} lookups in one agent, mean"
    cw.init_global(mapping)
    fork_pool = _pool("fork")  # before the Guild: it forks with no pool thread alive
    try:
        with Guild(min_agents=AGENTS, max_agents=AGENTS) as g:
            _warm(lambda d: g.map(cw.pid_after, d, chunksize=1))
            for _ in range(bench.repeat):
                start = time.perf_counter()
                ref = g.share(
                    mapping
                )  # a new generation each round: the first lookup attaches again
                bench.record(g_share, "guildcore g.share", [time.perf_counter() - start])
                runs = {
                    "guildcore context()": lambda: g.submit(cw.lookups_context, keys).result(),
                    "guildcore ContextRef argument": lambda ref=ref: g.submit(
                        cw.lookups_ref, ref, keys
                    ).result(),
                    "dict inherited by fork": lambda: fork_pool.submit(
                        cw.lookups_global, keys
                    ).result(),
                }
                for name, fn in runs.items():
                    first_s, per_s = fn()
                    bench.record(
                        g_lookup,
                        name,
                        [per_s * 1e6],
                        unit="µs",
                        baseline="dict inherited by fork",
                        note=note,
                    )
                    bench.record(
                        g_first, name, [first_s * 1e3], unit="ms", baseline="dict inherited by fork"
                    )
    finally:
        fork_pool.shutdown(wait=True)
        cw.init_global(None)


# -- targets --------------------------------------------------------------------------


def _median(bench: Bench, group: str, system: str) -> float | None:
    g = bench.groups.get(group)
    return g.median(system) if g is not None and system in g.samples else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _annotate(bench: Bench) -> None:
    """Per-system ratio to guildcore map in the note column of the read groups."""
    for g in bench.groups.values():
        ref = next((s for s in (GUILD_MAP, "guildcore") if s in g.samples), None)
        if ref is None or not g.name.startswith(("setup", f"{TASKS} tasks", "end to end")):
            continue
        base = g.median(ref) if ref != "guildcore" else None
        for system in g.samples:
            if base and system != ref:
                ratio = f"{g.median(system) / base:.2f}x {ref}"
                g.notes[system] = f"{ratio}; {g.notes[system]}" if g.notes.get(system) else ratio


def _target_notes(bench: Bench, labels: list[str], sizes: Sizes) -> list[str]:
    notes = []
    for label in labels:
        copy = _median(bench, f"place the context, {label}", "bare SharedMemory copy")
        share = _median(bench, f"place the context, {label}", "guildcore g.share")
        if copy and share:
            notes.append(
                f"{label}: g.share {share * 1e3:.0f} ms vs bare copy {copy * 1e3:.0f} ms = "
                f"{share / copy:.2f}x (target <= {SHARE_TARGET:.1f}x) {_verdict(share <= copy * SHARE_TARGET)}"
            )
        fork = _median(bench, f"{TASKS} tasks, {label}", FORK)
        for system in (GUILD_MAP, GUILD_SUBMIT, GUILD_REF):
            ours = _median(bench, f"{TASKS} tasks, {label}", system)
            if fork and ours:
                notes.append(
                    f"{label}: {system} {ours:.1f} ms vs fork global {fork:.1f} ms = {ours / fork:.2f}x "
                    f"(target <= {TASKS_TARGET}x, pools started, context shared and attached) "
                    f"{_verdict(ours <= fork * TASKS_TARGET)}"
                )
        pickled = _median(bench, f"end to end, {label}", PICKLED)
        ours = _median(bench, f"end to end, {label}", GUILD_MAP)
        if pickled and ours:
            notes.append(
                f"{label}: end to end, pickling per task (extrapolated) {pickled:.1f} s / guildcore map "
                f"{ours:.3f} s = {pickled / ours:,.0f}x (target >= {PICKLE_TARGET:.0f}x) "
                f"{_verdict(pickled >= ours * PICKLE_TARGET)}"
                + (
                    "; the target is for 256 MB, pickling scales with size"
                    if sizes.context_bytes < FULL.context_bytes
                    else ""
                )
            )
        before = _median(
            bench, f"agent private memory (RssAnon), {label}", "guildcore agent, before reading"
        )
        after = _median(
            bench, f"agent private memory (RssAnon), {label}", "guildcore agent, after reading all"
        )
        if before is not None and after is not None:
            notes.append(
                f"{label}: guildcore agent RssAnon {before:.1f} -> {after:.1f} MB after reading all "
                f"{_mb(sizes.context_bytes)} (target: unchanged, within {MEMORY_TARGET_MB:.0f} MB) "
                f"{_verdict(after - before <= MEMORY_TARGET_MB)}"
            )
    label = f"{sizes.lookup_keys:,}-key dict"
    for system in ("guildcore context()", "guildcore ContextRef argument"):
        us = _median(bench, f"one lookup, {label}", system)
        if us is not None:
            notes.append(
                f"{label}: {system} {us:.2f} µs per lookup (target < {LOOKUP_TARGET_US:.0f} µs) "
                f"{_verdict(us < LOOKUP_TARGET_US)}"
            )
    return notes


def run(bench: Bench) -> None:
    sizes = QUICK if bench.quick else FULL
    labels = []
    for label, make in _contexts(sizes):
        value = make()
        bench_read(bench, sizes, label, value)
        labels.append(label)
        del value
    bench_lookup(bench, sizes)
    _annotate(bench)
    load = os.getloadavg()[0]
    for text in _target_notes(bench, labels, sizes):
        bench.note(text)
    bench.note(
        f"{TASKS} tasks: {AGENTS} agents per system, each pool started and warmed (one trivial task per "
        f"agent) and the context placed and attached before timing; {sizes.passes} runs per round, systems "
        "interleaved; ratios against the fork global, the note column against guildcore map"
    )
    bench.note(
        "setup: pool start + placing the context + warm-up; end to end: setup + the first 200-task run "
        f"after it (ratios against pickling per task); load average {load:.2f} at the end, 2 cores shared"
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["context", *sys.argv[1:]]))
