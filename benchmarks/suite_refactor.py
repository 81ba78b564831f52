"""CPU-bound refactor: every standard-library ``.py`` file parsed, renamed, unparsed.

The task (``workloads.refactor_file``) reads one file, ``ast.parse``s it,
renames every ``result`` name, argument and attribute to ``outcome`` with an
``ast.NodeTransformer``, ``ast.unparse``s the tree and returns a CRC of the
text. Files: the running Python's standard library without test folders
(``test``, ``tests``, ``idle_test``) and without files that fail to parse;
``--quick`` takes every 8th file (some 90).

Every pool runs on 2 workers, already started and warmed (one map over a few
files), with its own default settings; the sequential loop is the
reference. The figure of merit is the speedup ``loop / system``.

Targets: guildcore ``Guild`` with defaults at least 1.85x faster than the
loop on 2 cores, and no slower than the best peer.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from benchmarks import pools
from benchmarks.harness import Bench
from benchmarks.workloads import refactor_file, stdlib_files

NAME = "refactor"

LOOP = "sequential loop"
TARGET_SPEEDUP = 1.85
QUICK_STEP = 8  # --quick: every 8th file
FULL_ROUNDS = 5  # a full round is some 45 s on 2 cores


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(bench: Bench) -> None:
    files = stdlib_files(QUICK_STEP if bench.quick else 1)
    rounds = bench.repeat if bench.quick else max(3, min(bench.repeat, FULL_ROUNDS))
    live = [s for s in pools.systems() if bench.available(s.module, s.name)]
    bench.note(
        f"{len(files)} files of the Python {os.sys.version.split()[0]} standard library"
        f"{f' (every {QUICK_STEP}th: quick)' if bench.quick else ''}; {pools.WORKERS} workers/agents; "
        "pools started and warmed before timing; defaults for every system"
    )
    bench.note(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    expected = [refactor_file(f) for f in files[:8]]
    for s in live:
        s.start()
    try:
        for s in live:  # warm: workers up, modules imported, function cached
            if s.map(refactor_file, files[:8]) != expected:
                raise AssertionError(f"{s.name} returned wrong results")
        runs: dict[str, Callable[[], object]] = {LOOP: lambda: [refactor_file(f) for f in files]}
        for s in live:
            runs[s.name] = lambda s=s: s.map(refactor_file, files)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                samples[name].append(_timed(fn))
    finally:
        for s in live:
            s.stop()
    for name, values in samples.items():
        bench.record("refactor, warm, defaults", name, values, unit="s", baseline=LOOP)
    loop = statistics.median(samples[LOOP])
    speedups = {name: loop / statistics.median(v) for name, v in samples.items() if name != LOOP}
    for name in speedups:
        bench.record("speedup over the loop", name, [loop / v for v in samples[name]], unit="x", baseline=None)
    ours = speedups.get("guildcore Guild")
    if ours is not None:
        peers = {n: v for n, v in speedups.items() if not n.startswith("guildcore")}
        best_peer = max(peers, key=lambda n: peers[n]) if peers else None
        verdict = "met" if ours >= TARGET_SPEEDUP else "MISSED"
        peer_text = (
            f"; best peer {best_peer} {peers[best_peer]:.2f}x "
            f"({'no slower' if best_peer is None or ours >= peers[best_peer] * 0.98 else 'SLOWER'})"
            if best_peer
            else ""
        )
        bench.note(f"Guild speedup {ours:.2f}x over the loop (target >= {TARGET_SPEEDUP}x: {verdict}){peer_text}")
    bench.note(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
