"""Local agents vs dask-local: the same Guild code on both backends, side by side.

Every system has 2 workers (agents, or one-thread Dask worker processes),
started and warmed before timing; samples are interleaved.

Groups:

- ``tiny x+1, N items, warm, defaults``: ``g.map(inc, items)`` with
  defaults, on both backends; the sequential loop is the reference. The
  router sends tiny items inline on either backend once it has measured
  them, so this shows what a user gets.
- ``tiny x+1, N items, warm, pool``: the same with
  ``parallelization.strategy: pool`` (routing off): every chunk makes the
  trip to a worker and back, which is the transport's own cost.
- ``refactor, warm, defaults``: the ``ast`` rename over the standard
  library (``workloads.refactor_file``), as in the refactor suite; plain
  Dask (``Client.map``, one future per file, on a LocalCluster of the same
  shape) is the peer that shows what guildcore's layer adds or saves.
- ``start + first map + shutdown``: a new Guild in this process (Dask
  already imported), one map over 8 files in the pool (``chunksize=1``),
  shutdown: what a script pays once for each backend.

``--quick``: 20,000 tiny items only, every 16th standard-library file, 3 rounds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Bench
from benchmarks.workloads import inc, refactor_file, stdlib_files

NAME = "dask"

WORKERS = 2
LOOP = "sequential loop"
LOCAL = "guildcore Guild (local agents)"
DASK_LOCAL = "guildcore Guild (dask-local)"
PLAIN_DASK = "Dask Client.map (LocalCluster)"
SIZES = (20_000, 200_000)
QUICK_SIZES = (20_000,)
QUICK_STEP = 16  # --quick: every 16th file (some 45); the suite stays near 20 s
FULL_ROUNDS = 5  # a refactor round is some 45 s on 2 cores per system
START_ROUNDS = 3


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _guild(backend: str, **settings: Any) -> Any:
    from guildcore import Guild

    return Guild(max_agents=WORKERS, backend=backend, **settings)


def _interleave(bench: Bench, group: str, runs: dict[str, Callable[[], object]], rounds: int, unit: str) -> dict[str, list[float]]:
    scale = {"s": 1.0, "ms": 1000.0}[unit]
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            samples[name].append(_timed(fn) * scale)
    for name, values in samples.items():
        bench.record(group, name, values, unit=unit, baseline=LOOP if LOOP in runs else None)
    return samples


def _tiny(bench: Bench, rounds: int) -> None:
    for strategy in ("auto", "pool"):
        guilds = {
            LOCAL: _guild("local", parallelization={"strategy": strategy}),
            DASK_LOCAL: _guild("dask-local", parallelization={"strategy": strategy}),
        }
        try:
            for n in QUICK_SIZES if bench.quick else SIZES:
                items = list(range(n))
                runs: dict[str, Callable[[], object]] = {LOOP: lambda items=items: [inc(x) for x in items]}
                for name, g in guilds.items():
                    g.map(inc, items)  # warm: agents up; the router measures inc
                    runs[name] = lambda g=g, items=items: g.map(inc, items)
                label = "defaults" if strategy == "auto" else "pool (strategy: pool, routing off)"
                _interleave(bench, f"tiny x+1, {n:,} items, warm, {label}", runs, rounds, "ms")
        finally:
            for g in guilds.values():
                g.shutdown()


def _plain_dask() -> tuple[Any, Callable[[list[str]], list[int]]]:
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    client = distributed.Client(cluster, set_as_default=False)

    def run(files: list[str]) -> list[int]:
        out: list[int] = client.gather(client.map(refactor_file, files, pure=False))
        return out

    def close() -> None:
        client.close()
        cluster.close()

    return close, run


def _refactor(bench: Bench, files: list[str], rounds: int) -> None:
    expected = [refactor_file(f) for f in files[:8]]
    local, dask_local = _guild("local"), _guild("dask-local")
    close_plain, plain = _plain_dask()
    try:
        runs: dict[str, Callable[[], object]] = {
            LOOP: lambda: [refactor_file(f) for f in files],
            LOCAL: lambda: local.map(refactor_file, files),
            DASK_LOCAL: lambda: dask_local.map(refactor_file, files),
            PLAIN_DASK: lambda: plain(files),
        }
        # Warm, and check every system computes the same.
        for name, check in ((LOCAL, local.map), (DASK_LOCAL, dask_local.map)):
            if check(refactor_file, files[:8]) != expected:
                raise AssertionError(f"{name} returned wrong results")
        if plain(files[:8]) != expected:
            raise AssertionError(f"{PLAIN_DASK} returned wrong results")
        samples = _interleave(bench, "refactor, warm, defaults", runs, rounds, "s")
    finally:
        local.shutdown()
        dask_local.shutdown()
        close_plain()
    loop = statistics.median(samples[LOOP])
    for name, values in samples.items():
        if name != LOOP:
            bench.record("refactor: speedup over the loop", name, [loop / v for v in values], unit="x", baseline=None)


def _start(bench: Bench, files: list[str], rounds: int) -> None:
    def once(backend: str) -> None:
        g = _guild(backend)
        try:
            # An explicit chunksize keeps the map in the pool: the router
            # would run 8 files here, and no pool would start at all.
            g.map(refactor_file, files[:8], chunksize=1)
        finally:
            g.shutdown()

    # Dask is imported by now (the groups before started dask-local Guilds).
    _interleave(
        bench, "start + first map (8 files, in the pool) + shutdown",
        {LOCAL: lambda: once("local"), DASK_LOCAL: lambda: once("dask-local")}, rounds, "s",
    )  # fmt: skip


def run(bench: Bench) -> None:
    if not bench.available("distributed", "dask-local"):
        return
    files = stdlib_files(QUICK_STEP if bench.quick else 1)
    rounds = bench.repeat if bench.quick else max(3, min(bench.repeat, FULL_ROUNDS))
    bench.note(
        f"{WORKERS} workers per system (agents, or one-thread Dask worker processes); pools started and "
        "warmed before timing; samples interleaved"
    )
    bench.note(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    _tiny(bench, rounds)
    _refactor(bench, files, rounds)
    _start(bench, files, max(3, min(rounds, START_ROUNDS)))
    bench.note(
        f"refactor: {len(files)} files of the standard library{' (every 16th: quick)' if bench.quick else ''}; "
        "speedup = loop / system, higher is better"
    )
    bench.note(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
