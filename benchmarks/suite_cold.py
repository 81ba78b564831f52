"""Cold: a script's first call, with a new pool per sample, side by side with the peers.

Scripts make a pool, map once and end, so the first call is what users
wait for. Every sample here makes a new pool (a new ``Guild``); the first
result row starts a new interpreter per sample. Systems are interleaved:
every system once per round, in a new order each round, samples 50 ms
apart after ``gc.collect()``.

Groups:

- ``first map, N x + 1``: ``x + 1`` over 200,000 and 20,000 ints. The pool is
  made untimed, then its first ``map`` is timed (its workers or agents are
  still starting). ``guildcore Guild, first run`` remembers nothing: no
  cache store, and this process's table of decisions dropped before each
  sample (``routing.forget``), as in a script's first run ever;
  ``guildcore Guild, decisions remembered`` shares one store (a script's
  second run). ProcessPoolExecutor and loky send one item per message by default:
  they run ``EXTRAPOLATE_CAP`` items, scaled to N ("extrapolated"). The
  plain loop is the reference. ``pool creation`` times what was left out.
- ``first map, 200 tasks over a shared 256 MB numpy context``: each task
  sums 4 KB of a float64 array (32 MB with ``--quick``). The fork
  copy-on-write global (ProcessPoolExecutor with fork, the array set as a
  module global before the pool exists), mpire's shared objects (fork), and
  guildcore (``g.share`` untimed, then the first ``map`` timed), with no
  ``optimization.preload`` setting; and the same map kept in the agents by
  an explicit ``chunksize``, which shows how warm they start (numpy
  inherited from the template).
- ``new pool's first result, in a process that has run pools``: a pool of
  2 made and one trivial task submitted, timed together, in this process,
  which has made pools of every system before (a library that makes a pool
  per call). Its shutdown is untimed.
- ``launch to first result``: a fresh interpreter imports the system, makes
  a pool of 2, submits one trivial task and prints when the result is back;
  timed from launch to that line, next to a bare ``python``. Each program
  runs in its own session; the next launches once every process of it
  (its pool's helpers too) has exited.

Targets: the first maps at most 1.5x the loop; the context map at most
1.5x the fork global; the first result, from a fresh interpreter and of a
new pool, no slower than ProcessPoolExecutor with fork. Each verdict is on the median of the ratios within a round
(``_paired``), next to the ratio of the medians. ``--quick`` runs 3
rounds, the 20,000-item map only and the 32 MB context.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import pools
from benchmarks.harness import Bench
from benchmarks.workloads import inc

NAME = "cold"

REPO = Path(__file__).resolve().parent.parent
SIZES = (200_000, 20_000)
QUICK_SIZES = (20_000,)
EXTRAPOLATE_CAP = 2_000
SETTLE_S = 0.05
FIRST_RESULT_ROUNDS = 31  # launches are cheap; a few ms of difference needs many
NEW_POOL_ROUNDS = 31
TASKS = 200
SEED = 20261130  # the order of systems in each round is shuffled, the same in every run
LOOP = "plain loop"
FORK_GLOBAL = "fork copy-on-write global"
PPE_FORK = "ProcessPoolExecutor (fork)"
BARE = "bare python"
NEW_POOL = "new pool's first result, in a process that has run pools"
GUILD_FIRST = "guildcore Guild, first run"
GUILD_REMEMBERED = "guildcore Guild, decisions remembered"
MAP_TARGET = 1.5
CONTEXT_TARGET = 1.5

# One sample: (setup -> state, timed(state), teardown(state)).
Sample = tuple[Callable[[], Any], Callable[[Any], object], Callable[[Any], None]]


def _settle() -> None:
    gc.collect()
    time.sleep(SETTLE_S)


def _interleave(
    bench: Bench, group: str, systems: dict[str, tuple[Sample, float, str]], rounds: int, *, baseline: str, creation: bool = True
) -> None:
    """Each round: every system once (setup untimed, the call timed, teardown untimed), in shuffled order.

    ``creation``: also record the untimed setup, as ``pool creation``.
    """
    created: dict[str, list[float]] = {name: [] for name in systems}
    samples: dict[str, list[float]] = {name: [] for name in systems}
    order = list(systems.items())
    shuffle = random.Random(SEED).shuffle
    for r in range(rounds + 1):  # round 0 warms imports and page caches, and is dropped
        # A new order each round, so that no system always runs right after
        # the same other one. A pool's teardown leaves the heap and the
        # cores in its own state (memory handed back to the OS, exiting
        # workers), and the next sample pays for it: rotating one fixed
        # order would not help, as a rotation keeps every neighbour.
        shuffle(order)
        for name, ((setup, call, teardown), scale, _note) in order:
            _settle()
            t0 = time.perf_counter()
            state = setup()
            t1 = time.perf_counter()
            try:
                call(state)
                t2 = time.perf_counter()
            finally:
                teardown(state)
            if r:
                created[name].append((t1 - t0) * 1e3)
                samples[name].append((t2 - t1) * scale * 1e3)
    for name, values in samples.items():
        bench.record(group, name, values, unit="ms", baseline=baseline, note=systems[name][2])
    for name, values in created.items():
        if creation and name not in (LOOP,):
            bench.record(f"pool creation, before: {group}", name, values, unit="ms")


# -- first map of x + 1 ------------------------------------------------------------------


def _map_systems(bench: Bench, items: list[int], tmp: str) -> dict[str, tuple[Sample, float, str]]:
    capped = items[:EXTRAPOLATE_CAP]
    scale = len(items) / len(capped)
    none = (lambda: None, lambda _s: None)

    def plain(_state: Any) -> object:
        return [inc(x) for x in items]

    systems: dict[str, tuple[Sample, float, str]] = {LOOP: ((none[0], plain, none[1]), 1.0, "")}

    def mp_pool() -> Any:
        return multiprocessing.Pool(pools.WORKERS)

    def mp_stop(pool: Any) -> None:
        pool.close()
        pool.join()

    systems["multiprocessing.Pool"] = ((mp_pool, lambda p: p.map(inc, items), mp_stop), 1.0, "fork")
    systems[PPE_FORK] = (
        (
            lambda: cf.ProcessPoolExecutor(pools.WORKERS, mp_context=multiprocessing.get_context("fork")),
            lambda p: list(p.map(inc, capped)),
            lambda p: p.shutdown(wait=True),
        ),
        scale,
        f"extrapolated: {len(capped):,} items x {scale:g} (default chunksize=1)",
    )
    if bench.available("loky", "loky"):
        import loky

        systems["loky"] = (
            (
                lambda: loky.get_reusable_executor(max_workers=pools.WORKERS, reuse=False),
                lambda p: list(p.map(inc, capped)),
                lambda p: p.shutdown(wait=True, kill_workers=True),
            ),
            scale,
            f"extrapolated: {len(capped):,} items x {scale:g} (default chunksize=1)",
        )
    if bench.available("mpire", "mpire"):
        _quiet_tqdm()
        from mpire import WorkerPool

        def mpire_start() -> Any:
            pool = WorkerPool(n_jobs=pools.WORKERS, keep_alive=True)
            pool.__enter__()
            return pool

        systems["mpire"] = (
            (mpire_start, lambda p: p.map(inc, items, progress_bar=False), lambda p: p.__exit__(None, None, None)),
            1.0,
            "fork, workers start on the first map",
        )
    systems[GUILD_FIRST] = (_guild_sample(None, lambda g: g.map(inc, items)), 1.0, "")
    systems[GUILD_REMEMBERED] = (_guild_sample(os.path.join(tmp, "remembered"), lambda g: g.map(inc, items)), 1.0, "")
    return systems


def _quiet_tqdm() -> None:
    """mpire's progress bars start tqdm's monitor thread, which outlives the pool.

    A Guild made in a process with another Python thread starts its agents
    through the forkserver (it never forks while another thread may hold a
    lock); the peers run in this same process, so their leftover thread
    would decide the Guild's start method. A script using mpire has that
    thread too: this is a fact of sharing one benchmark process.
    """
    try:
        import tqdm

        tqdm.tqdm.monitor_interval = 0
    except ImportError:
        pass


def _guild_sample(cache_path: str | None, call: Callable[[Any], object], setup: Callable[[Any], None] | None = None) -> Sample:
    """A new Guild per sample; ``cache_path`` None: nothing remembered (no store, no table)."""
    from guildcore import Guild
    from guildcore.engine import routing

    def start() -> Any:
        if cache_path is None:
            routing.forget("")
            g = Guild(max_agents=pools.WORKERS, caching={"enabled": False})
        else:
            g = Guild(max_agents=pools.WORKERS, caching={"path": cache_path})
        if setup is not None:
            setup(g)
        return g

    return (start, call, lambda g: g.shutdown(wait=True))


def bench_maps(bench: Bench, rounds: int, tmp: str) -> None:
    for n in QUICK_SIZES if bench.quick else SIZES:
        items = list(range(n))
        _interleave(bench, f"first map, {n:,} x + 1", _map_systems(bench, items, tmp), rounds, baseline=LOOP)


# -- first map over a shared context ------------------------------------------------------


def bench_context(bench: Bench, rounds: int, tmp: str) -> None:
    import numpy as np

    from benchmarks import contextwork as cw

    nbytes = (32 << 20) if bench.quick else (256 << 20)
    value = np.random.default_rng(2).random(nbytes // 8)
    rng = random.Random(3)
    offsets = [rng.randrange(0, nbytes - cw.SLICE_BYTES) // 64 * 64 for _ in range(TASKS)]
    group = f"first map, {TASKS} tasks over a shared {nbytes >> 20} MB numpy context"

    def fork_start() -> Any:
        cw.init_global(value)  # inherited by fork, copy-on-write
        return cf.ProcessPoolExecutor(pools.WORKERS, mp_context=multiprocessing.get_context("fork"))

    def fork_stop(pool: Any) -> None:
        pool.shutdown(wait=True)
        cw.init_global(None)

    systems: dict[str, tuple[Sample, float, str]] = {
        FORK_GLOBAL: ((fork_start, lambda p: sum(p.map(cw.task_global, offsets)), fork_stop), 1.0, "ProcessPoolExecutor(fork), chunksize 1"),
    }
    if bench.available("mpire", "mpire shared objects"):
        _quiet_tqdm()
        from mpire import WorkerPool

        def mpire_start() -> Any:
            return WorkerPool(n_jobs=pools.WORKERS, shared_objects=value, start_method="fork", keep_alive=True)

        systems["mpire shared objects (fork)"] = (
            (mpire_start, lambda p: p.map(cw.task_mpire, offsets, progress_bar=False), lambda p: p.stop_and_join()),
            1.0,
            "workers start on the first map",
        )

    def share(g: Any) -> None:
        g.share({"v": value})

    systems[GUILD_FIRST] = (
        _guild_sample(None, lambda g: sum(g.map(cw.task_context, offsets)), share),
        1.0,
        "share() untimed; no preload setting",
    )
    systems[GUILD_REMEMBERED] = (
        _guild_sample(os.path.join(tmp, "ctx-remembered"), lambda g: sum(g.map(cw.task_context, offsets)), share),
        1.0,
        "share() untimed; no preload setting",
    )
    # The same map kept in the agents (an explicit chunksize never runs
    # here): they start from the template, numpy already imported.
    systems["guildcore Guild, in agents (chunksize 10)"] = (
        _guild_sample(None, lambda g: sum(g.map(cw.task_context, offsets, chunksize=10)), share),
        1.0,
        "share() untimed; agents start during the map",
    )
    _interleave(bench, group, systems, rounds, baseline=FORK_GLOBAL)


# -- a new pool's first result, in an interpreter that has run pools -------------------------


def _new_pool(make: Callable[[], Any], first: Callable[[Any], object], stop: Callable[[Any], None]) -> Sample:
    """Making the pool and its first result, timed together; its shutdown untimed."""

    def call(box: list[Any]) -> None:
        box.append(make())
        first(box[0])

    return (list, call, lambda box: stop(box[0]) if box else None)


def bench_new_pool(bench: Bench, rounds: int) -> None:
    from benchmarks import trivial
    from guildcore import Guild, GuildExecutor

    fork = multiprocessing.get_context("fork")

    def submit_one(pool: Any) -> object:
        return pool.submit(trivial.ping, 1).result()

    def shut_down(pool: Any) -> None:
        pool.shutdown(wait=True)

    parts: dict[str, tuple[Callable[[], Any], Callable[[Any], object], Callable[[Any], None]]] = {
        PPE_FORK: (lambda: cf.ProcessPoolExecutor(pools.WORKERS, mp_context=fork), submit_one, shut_down),
        "multiprocessing.Pool (fork)": (lambda: fork.Pool(pools.WORKERS), lambda p: p.apply(trivial.ping, (1,)), _close_pool),
        "guildcore Guild": (lambda: Guild(max_agents=pools.WORKERS), submit_one, shut_down),
        "guildcore GuildExecutor": (lambda: GuildExecutor(max_workers=pools.WORKERS), submit_one, shut_down),
    }
    systems = {name: (_new_pool(*made), 1.0, "") for name, made in parts.items()}
    _interleave(bench, NEW_POOL, systems, rounds, baseline=PPE_FORK, creation=False)


def _close_pool(pool: Any) -> None:
    pool.close()
    pool.join()


# -- a fresh interpreter's first result ------------------------------------------------------

_FIRST: dict[str, str] = {
    BARE: "",
    PPE_FORK: (
        "import concurrent.futures, multiprocessing\n"
        "pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('fork'))\n"
        "pool.submit(trivial.ping, 1).result()\n"
    ),
    "multiprocessing.Pool (forkserver)": (
        "import multiprocessing\npool = multiprocessing.get_context('forkserver').Pool(2)\n"
        "pool.apply(trivial.ping, (1,))\n"
    ),
    "guildcore Guild": "import guildcore\npool = guildcore.Guild(max_agents=2)\npool.submit(trivial.ping, 1).result()\n",
    "guildcore GuildExecutor": (
        "import guildcore\npool = guildcore.GuildExecutor(max_workers=2)\npool.submit(trivial.ping, 1).result()\n"
    ),
}


def _first_result_ms(body: str, cwd: str) -> float:
    program = "import sys\n"
    if body:
        program += "from benchmarks import trivial\n" + body
    program += "sys.stdout.write('first\\n'); sys.stdout.flush()\nsys.stdin.readline()\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", program], cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    elapsed = (time.perf_counter() - t0) * 1e3
    proc.stdin.write("\n")
    proc.stdin.close()
    proc.wait(timeout=60)
    pools.wait_session_gone(proc.pid)  # its pool's helpers too: the next launch must not pay for their exit
    if line.strip() != "first":
        raise RuntimeError(f"the first-result program failed:\n{program}")
    return elapsed


def bench_first_result(bench: Bench, rounds: int) -> None:
    bench.note(pools.compile_bytecode())
    # An empty folder: no .guild/ config to read, no cache store.
    cwd = tempfile.mkdtemp(prefix="guild-bench-cold-")
    try:
        for body in _FIRST.values():  # warm the page cache
            _first_result_ms(body, cwd)
        samples: dict[str, list[float]] = {name: [] for name in _FIRST}
        order = list(_FIRST.items())
        shuffle = random.Random(SEED).shuffle
        for _ in range(rounds):
            shuffle(order)  # as in _interleave: no system always launches after the same other one
            for name, body in order:
                samples[name].append(_first_result_ms(body, cwd))
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    for name, values in samples.items():
        bench.record("launch to first result", name, values, unit="ms", baseline=PPE_FORK)


# -- verdicts ------------------------------------------------------------------------------


def _paired(group: Any, ours: str, reference: str) -> float:
    """The median over rounds of ``ours / reference`` within each round.

    Every round times each system once, in a shuffled order, so the samples
    of two systems pair up by round. This host's speed drifts by up to 2x
    from one second to the next (a bare interpreter starts in 11 to 20 ms
    within one run): a ratio of two medians of 7 samples moves with it, the
    ratio within a round much less.
    """
    return statistics.median(a / b for a, b in zip(group.samples[ours], group.samples[reference], strict=True))


def _verdict(bench: Bench, group: Any, ours: str, reference: str, what: str, target: float) -> None:
    medians = group.median(ours) / group.median(reference)
    paired = _paired(group, ours, reference)
    bench.note(
        f"{group.name}: {ours} {paired:.2f}x {what} within a round (ratio of medians {medians:.2f}x; "
        f"target <= {target}x: {'met' if paired <= target else 'MISSED'})"
    )


def _verdicts(bench: Bench) -> None:
    for group in bench.groups.values():
        if group.name.startswith("first map,") and "context" not in group.name and LOOP in group.samples:
            for ours in (GUILD_FIRST, GUILD_REMEMBERED):
                if ours in group.samples:
                    _verdict(bench, group, ours, LOOP, "the loop", MAP_TARGET)
        if group.name.startswith("first map,") and "context" in group.name and FORK_GLOBAL in group.samples:
            for ours in (s for s in group.samples if s.startswith("guildcore")):
                _verdict(bench, group, ours, FORK_GLOBAL, "the fork global", CONTEXT_TARGET)
    new_pool = bench.groups.get(NEW_POOL)
    if new_pool is not None and PPE_FORK in new_pool.samples:
        for ours in ("guildcore Guild", "guildcore GuildExecutor"):
            if ours in new_pool.samples:
                _verdict(bench, new_pool, ours, PPE_FORK, "ProcessPoolExecutor (fork)", 1.0)
    first = bench.groups.get("launch to first result")
    if first is not None and PPE_FORK in first.samples:
        for ours in ("guildcore Guild", "guildcore GuildExecutor"):
            if ours in first.samples:
                _verdict(bench, first, ours, PPE_FORK, "ProcessPoolExecutor (fork)", 1.0)


def run(bench: Bench) -> None:
    rounds = bench.repeat
    bench.note(f"{pools.WORKERS} workers/agents; a new pool per sample, made untimed unless said; samples {SETTLE_S * 1e3:.0f} ms apart")
    bench.note(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = tempfile.mkdtemp(prefix="guild-bench-cold-cache-")
    try:
        bench_maps(bench, rounds, tmp)
        bench_context(bench, rounds, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bench_new_pool(bench, rounds if bench.quick else max(rounds, NEW_POOL_ROUNDS))
    bench_first_result(bench, rounds if bench.quick else max(rounds, FIRST_RESULT_ROUNDS))
    _verdicts(bench)
    bench.note(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
