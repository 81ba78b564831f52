"""The ``guild demo`` codemod: rename ``result`` to ``outcome`` across the stdlib.

Each round runs the demo's three passes (``guildcore.demo.run_demo``):
the sequential loop in this process (every file, not extrapolated), the cold
pool (2 agents, empty cache) and the warm rerun from the on-disk cache (new
Guild); then the same per-file work (index, then refactor with the file's
mentions passed along, no cache) through ``ProcessPoolExecutor`` and, if
installed, joblib, each on 2 workers. Rounds are interleaved (A B C A B C).
``--quick`` takes 60 evenly spaced stdlib files instead of all of them.

Wall times include starting and stopping each pool. The sequential loop
is the reference; ratios below 1 are faster.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Bench
from guildcore.demo import DemoOptions, run_demo
from guildcore.demo.index import index_file
from guildcore.demo.passes import evenly_spaced
from guildcore.demo.refactor import Outcome, refactor_path
from guildcore.demo.sources import STDLIB_SKIP_DIRS, default_root, discover

NAME = "demo"

WORKERS = 2
QUICK_FILES = 60
FULL_ROUNDS = 5  # a full round is some 15-30 s on 2 cores
OLD, NEW = "result", "outcome"
SEQUENTIAL = "sequential loop"


def peer_task(item: tuple[str, str, str]) -> Outcome:
    """What a peer pool runs per file: the demo's index, then its refactor."""
    root, rel, digest = item
    _defs, mentions, _error = index_file((root, rel, digest))
    return refactor_path(root, rel, OLD, NEW, mentions)


def _executor_run(items: list[tuple[str, str, str]]) -> list[Outcome]:
    ctx = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        return list(ex.map(peer_task, items, chunksize=max(1, len(items) // (WORKERS * 16))))


def _joblib_run(items: list[tuple[str, str, str]]) -> list[Outcome]:
    import joblib  # type: ignore[import-untyped]

    with joblib.Parallel(n_jobs=WORKERS) as parallel:
        out: list[Outcome] = parallel(joblib.delayed(peer_task)(item) for item in items)
    return out


def run(bench: Bench) -> None:
    root = default_root()
    files = evenly_spaced(discover(root), QUICK_FILES if bench.quick else 0)
    items = [(root, s.rel, s.digest) for s in files]
    peers: dict[str, Callable[[list[tuple[str, str, str]]], list[Outcome]]] = {
        "ProcessPoolExecutor": _executor_run
    }
    if bench.available("joblib", "joblib"):
        peers["joblib"] = _joblib_run
    group = f"stdlib rename {OLD}->{NEW}, {len(files)} files"
    rounds = bench.repeat if bench.quick else min(bench.repeat, FULL_ROUNDS)
    samples: dict[str, list[float]] = {}
    last: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="guild-bench-demo-") as cache_dir:
        opts = DemoOptions(
            root, OLD, NEW, cache_dir, agents=WORKERS, sample=0, progress=False,
            subset=QUICK_FILES if bench.quick else 0, skip_dirs=STDLIB_SKIP_DIRS,
        )  # fmt: skip
        for _ in range(rounds):
            report = run_demo(opts)
            last = report
            for p in report["passes"]:
                name = SEQUENTIAL if p["name"] == "sequential" else f"guildcore {p['name']}"
                samples.setdefault(name, []).append(p["wall_s"])
            for name, fn in peers.items():
                t0 = time.perf_counter()
                fn(items)
                samples.setdefault(name, []).append(time.perf_counter() - t0)
    for name, values in samples.items():
        bench.record(group, name, values, unit="s", baseline=SEQUENTIAL)
    result = last["result"]
    warm = last["checks"].get("warm_speedup_vs_cold")
    bench.note(
        f"{group}: {result['counts'].get('changed', 0)} files changed, {result['changes']} "
        f"occurrences; {result['counts'].get('skipped', 0)} skipped by the shared index; "
        f"last round warm {warm:.0f}x faster than cold; pools on {WORKERS} agents/workers"
    )
    bench.note(
        "guildcore cold = pool start + index map + share + refactor map + shutdown; "
        "warm = the same with every result from L3; peers do index and refactor per file, no cache"
    )
