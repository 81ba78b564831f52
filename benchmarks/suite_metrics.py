"""What recording metrics costs: the same Guild with ``monitoring.metrics`` on and off.

Two Guilds of 2 agents, one recording (per-task events, agents' CPU times,
the live status file every 0.5 s, run history at shutdown) and one not,
both started and warmed, then timed in turns (on, off, on, off, ...) on:

- ``tiny``: ``x + 1`` over 200,000 ints (``--quick``: 20,000), defaults:
  the workload of the tiny-task suite, where any per-item cost would show;
- ``refactor``: the refactor suite's ``ast`` rename over the standard
  library (``--quick``: every 8th file), defaults.

The overhead is the median of the per-round ratios on/off minus one (each
round runs both back to back, so a noisy neighbour hits both alike).
Targets: under 2 % on tiny, under 1 % on refactor. On a shared host the
spread of single samples is wider than the targets; the medians and the
paired ratio are what to read.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Bench
from benchmarks.workloads import inc, refactor_file, stdlib_files

NAME = "metrics"

AGENTS = 2
TINY_ITEMS = 200_000
QUICK_TINY_ITEMS = 20_000
QUICK_STEP = 8
TINY_ROUNDS = 31  # a round is under 0.1 s: many rounds are cheap and steady the median
QUICK_TINY_ROUNDS = 15
REFACTOR_ROUNDS = 5  # a round is two full refactors, ~10 s
TARGETS = {"tiny": 0.02, "refactor": 0.01}
ON, OFF = "guildcore Guild, metrics on", "guildcore Guild, metrics off"


def _guild(metrics: bool) -> Any:
    from guildcore import Guild

    return Guild(max_agents=AGENTS, monitoring={"metrics": metrics})


def _timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _paired(bench: Bench, group: str, runs: dict[str, Callable[[], object]], rounds: int, unit: str, scale: float) -> float:
    """Interleaved rounds; records both systems and returns the median ratio on/off."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(rounds):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # neither always goes first
        for name in order:
            samples[name].append(_timed(runs[name]) * scale)
    for name, values in samples.items():
        bench.record(group, name, values, unit=unit, baseline=OFF)
    return statistics.median(on / off for on, off in zip(samples[ON], samples[OFF], strict=True))


def _verdict(bench: Bench, workload: str, ratio: float) -> None:
    target = TARGETS[workload]
    overhead = ratio - 1
    bench.note(
        f"{workload}: metrics on / off = {ratio:.4f} (median of paired rounds): overhead {overhead:+.2%} "
        f"(target under {target:.0%}: {'met' if overhead < target else 'MISSED'})"
    )


def run(bench: Bench) -> None:
    bench.note(f"{AGENTS} agents per Guild; both Guilds started and warmed before timing; rounds alternate which goes first")
    bench.note(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    n = QUICK_TINY_ITEMS if bench.quick else TINY_ITEMS
    items = list(range(n))
    files = stdlib_files(QUICK_STEP if bench.quick else 1)
    guilds = {ON: _guild(True), OFF: _guild(False)}
    try:
        for g in guilds.values():  # warm: agents up, functions resolved, routing measured
            g.map(inc, items)
            g.map(inc, items)
            g.map(refactor_file, files[:16])
        tiny_rounds = max(bench.repeat, QUICK_TINY_ROUNDS if bench.quick else TINY_ROUNDS)
        ratio = _paired(bench, f"tiny: {n:,} items of x + 1", {name: (lambda g=g: g.map(inc, items)) for name, g in guilds.items()},
                        tiny_rounds, "ms", 1000)  # fmt: skip
        _verdict(bench, "tiny", ratio)
        rounds = bench.repeat if bench.quick else max(3, min(bench.repeat, REFACTOR_ROUNDS))
        ratio = _paired(bench, f"refactor: {len(files)} stdlib files", {name: (lambda g=g: g.map(refactor_file, files)) for name, g in guilds.items()},
                        rounds, "s", 1)  # fmt: skip
        _verdict(bench, "refactor", ratio)
    finally:
        for g in guilds.values():
            g.shutdown()
    bench.note(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
