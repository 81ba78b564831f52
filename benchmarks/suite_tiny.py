"""Tiny tasks: ``x + 1`` over 20,000 and 200,000 ints, every pool on 2 workers.

Groups, per size:

- ``warm, defaults``: pools already started (warmed by one map) and each
  system's own default settings; the sequential loop
  ``[inc(x) for x in items]`` is the reference. Systems whose default is one
  item per message (ProcessPoolExecutor, loky, GuildExecutor: chunksize=1)
  run ``EXTRAPOLATE_CAP`` items and the time is scaled to the full count
  (labelled "extrapolated"): at 200,000 items they take tens of seconds.
- ``warm, best chunksize``: each system with the chunksize that was fastest
  in a short sweep (shown in the note).
- ``cold total``: a fresh interpreter per sample: import the system, start
  its pool, map, measured up to the last result (shutdown not included),
  with the best chunksize of the warm sweep.

``--quick`` measures the same groups and systems at 20,000 items only: the
one-item-per-message defaults run 1,000 items (extrapolated), the sweep
tries 2 chunksizes instead of 7, and every group gets 3 interleaved rounds.

Targets: guildcore ``Guild`` with defaults within 1.5x of the loop at
200,000 items and faster than every peer's defaults.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import pools
from benchmarks.harness import Bench
from benchmarks.workloads import inc

NAME = "tiny"

REPO = Path(__file__).resolve().parent.parent
SIZES = (20_000, 200_000)
QUICK_SIZES = (20_000,)
EXTRAPOLATE_CAP = 5_000
QUICK_EXTRAPOLATE_CAP = 1_000
SETTLE_S = 0.05  # between samples: see _settle
# Chunksize candidates: n // (workers * k) for each k.
SWEEP = (1, 2, 4, 8, 16, 32, 64)
QUICK_SWEEP = (4, 32)
COLD_ROUNDS = 5  # a fresh interpreter per sample: capped below --repeat
LOOP = "sequential loop"
TARGET_RATIO = 1.5


def _loop(items: list[int]) -> list[int]:
    return [inc(x) for x in items]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _settle() -> None:
    """Let the previous system's background threads and workers go quiet before the next sample.

    Runs share one process: the result-handler threads of a pool that just
    finished thousands of one-by-one tasks (loky, ProcessPoolExecutor) still
    hold the GIL for a while, and charged that to whichever system ran next:
    the loop, or a Guild running a batch inline.
    """
    gc.collect()
    time.sleep(SETTLE_S)


def _interleave(
    bench: Bench, group: str, runs: dict[str, tuple[Callable[[], object], float, str]], rounds: int
) -> None:
    """Time every system in turns (A B C A B C ...); scale, then record in ms."""
    for fn, _scale, _note in runs.values():
        fn()  # warm: imports, function cache, pool growth
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (fn, scale, _note) in runs.items():
            _settle()
            samples[name].append(_timed(fn) * scale * 1000)
    for name, values in samples.items():
        bench.record(group, name, values, unit="ms", baseline=LOOP, note=runs[name][2])


def _sweep(system: pools.System, items: list[int], quick: bool) -> int:
    """The fastest chunksize of a few, each timed twice (min)."""
    n = len(items)
    candidates = sorted({max(1, n // (pools.WORKERS * k)) for k in (QUICK_SWEEP if quick else SWEEP)})
    best, best_t = candidates[0], float("inf")
    for cs in candidates:
        t = min(_timed(lambda cs=cs: system.map(inc, items, cs)) for _ in range(2))
        if t < best_t:
            best, best_t = cs, t
    return best


def _warm(bench: Bench, live: list[pools.System], n: int) -> dict[str, int]:
    items = list(range(n))
    cap = QUICK_EXTRAPOLATE_CAP if bench.quick else EXTRAPOLATE_CAP
    capped = items[:cap]
    scale = n / len(capped)
    rounds = bench.repeat
    defaults: dict[str, tuple[Callable[[], object], float, str]] = {
        LOOP: (lambda: _loop(items), 1.0, ""),
    }
    for s in live:
        if s.name in pools.ONE_BY_ONE_DEFAULT and n > cap:
            defaults[s.name] = (
                (lambda s=s: s.map(inc, capped)),
                scale,
                f"extrapolated: {cap:,} items x {scale:g} (default chunksize=1)",
            )
        else:
            defaults[s.name] = ((lambda s=s: s.map(inc, items)), 1.0, "")
    _interleave(bench, f"{n:,} items, warm, defaults", defaults, rounds)

    best: dict[str, int] = {s.name: _sweep(s, items, bench.quick) for s in live}
    tuned: dict[str, tuple[Callable[[], object], float, str]] = {LOOP: (lambda: _loop(items), 1.0, "")}
    for s in live:
        cs = best[s.name]
        tuned[s.name] = ((lambda s=s, cs=cs: s.map(inc, items, cs)), 1.0, f"chunksize {cs:,}")
    _interleave(bench, f"{n:,} items, warm, best chunksize", tuned, rounds)
    return best


def _cold_ms(program: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", program], env=env, cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    return float(out.split()[0]) * 1000


def _cold(bench: Bench, live: list[pools.System], n: int, best: dict[str, int]) -> None:
    rounds = max(3, min(bench.repeat, COLD_ROUNDS))
    items = f"list(range({n}))"
    loop_prog = (
        "import time\nfrom benchmarks import workloads\nitems = " + items + "\n"
        "t0 = time.perf_counter()\nr = [workloads.inc(x) for x in items]\n"
        "print(repr(time.perf_counter() - t0))\n"
    )
    programs = {LOOP: loop_prog}
    for s in live:
        programs[s.name] = pools.cold_program(s.name, "workloads.inc", items, best[s.name])
    samples: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(rounds):
        for name, prog in programs.items():
            samples[name].append(_cold_ms(prog))
    group = f"{n:,} items, cold total (import + start + map)"
    for name, values in samples.items():
        note = "" if name == LOOP else f"chunksize {best[name]:,}"
        bench.record(group, name, values, unit="ms", baseline=LOOP, note=note)


def _verdict(bench: Bench, n: int) -> None:
    g = bench.groups[f"{n:,} items, warm, defaults"]
    ours = "guildcore Guild"
    if ours not in g.samples:
        return
    ratio = g.median(ours) / g.median(LOOP)
    peers = {s: g.median(s) for s in g.samples if s != LOOP and not s.startswith("guildcore")}
    beaten = [s for s, m in peers.items() if g.median(ours) < m]
    bench.note(
        f"{n:,} items, warm, defaults: Guild {g.median(ours):.1f} ms = {ratio:.2f}x the loop "
        f"(target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'}); "
        f"faster than {len(beaten)} of {len(peers)} peers' defaults"
        + ("" if len(beaten) == len(peers) else f" (not: {', '.join(sorted(set(peers) - set(beaten)))})")
    )


def run(bench: Bench) -> None:
    live = []
    for s in pools.systems():
        if bench.available(s.module, s.name):
            live.append(s)
    bench.note(f"{pools.WORKERS} workers/agents per pool; 'warm' = pool started and used once before timing")
    bench.note(f"samples {SETTLE_S * 1000:.0f} ms apart, after gc.collect(): one system's background threads stay out of the next sample")
    bench.note(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for s in live:
        s.start()
    sizes = QUICK_SIZES if bench.quick else SIZES
    best: dict[int, dict[str, int]] = {}
    try:
        for n in sizes:
            best[n] = _warm(bench, live, n)
    finally:
        for s in live:
            s.stop()
    bench.note(pools.compile_bytecode())
    for n in sizes:
        _cold(bench, live, n, best[n])
        _verdict(bench, n)
    bench.note(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    bench.note(f"multiprocessing start method: {_default_start_method()} (Pool, PPE and mpire use it; Guild uses forkserver)")


def _default_start_method() -> Any:
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=False)


def summary(values: list[float]) -> float:
    return statistics.median(values)
