"""Processes: the three-step refactor against the same steps run by hand.

The process is the repository's example, ``.guild/processes/refactor.yaml``
(``guildcore.demo.steps``): ``index`` stats the codebase's files, ``rewrite``
renames ``result`` to ``outcome`` in each file (one call per file; files
without the word are skipped unparsed), ``report`` sums up. The codebase is
the running Python's standard library without its test folders; ``--quick``
copies every 16th file to a temporary folder. Every system runs the same
three functions on 2 workers/agents:

- ``sequential loop``: index, every rewrite, report, in this process;
- ``ProcessPoolExecutor``: index and report submitted, rewrite through
  ``map`` (chunks of n / 32, as ``guild demo``'s peers), forkserver workers;
- ``guildcore process``: ``g.run_process(refactor.yaml, ...)``.

Groups:

- *cold*: from nothing. Each pool is started, used and shut down inside the
  timing; guildcore's cache is empty (its LMDB files deleted before each
  round).
- *warm*: the rerun. The executor's pool is started and warmed before the
  timing; the loop has nothing to reuse; guildcore reruns the process in a
  running Guild whose cache holds every result (only ``index``, which is
  uncached, runs). The row ``guildcore process, new Guild`` starts a Guild,
  reruns from the on-disk cache and stops it: what ``guild run`` pays on a
  rerun, less the interpreter's start.

Targets: cold no slower than the best of loop and executor; warm at least
20x faster than the best of them. Rounds are interleaved (A B C A B C).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import guildcore
from benchmarks.harness import Bench
from guildcore import Guild
from guildcore.demo import clear_store
from guildcore.demo.sources import default_root
from guildcore.demo.steps import index_codebase, report, rewrite_file

NAME = "process"

WORKERS = 2
OLD, NEW = "result", "outcome"
EXCLUDE = ["test", "tests", "idle_test"]
QUICK_STEP = 16  # --quick: every 16th file of the stdlib (some 46)
FULL_ROUNDS = 5
LOOP, PPE = "sequential loop", "ProcessPoolExecutor"
COLD_TARGET, WARM_TARGET = 1.0, 20.0
PROCESS = Path(guildcore.__file__).resolve().parent.parent / ".guild" / "processes" / "refactor.yaml"


def _loop(root: str) -> dict[str, Any]:
    index = index_codebase(root, EXCLUDE)
    outcomes = [rewrite_file(f, index["root"], OLD, NEW) for f in index["files"]]
    return report(index, outcomes)


def _on_pool(ex: concurrent.futures.ProcessPoolExecutor, root: str) -> dict[str, Any]:
    index = ex.submit(index_codebase, root, EXCLUDE).result()
    files = index["files"]
    chunk = max(1, len(files) // (WORKERS * 16))
    outcomes = list(ex.map(rewrite_file, files, *_repeat(len(files), index["root"], OLD, NEW), chunksize=chunk))
    return ex.submit(report, index, outcomes).result()


def _repeat(n: int, *values: Any) -> list[list[Any]]:
    return [[v] * n for v in values]


def _executor() -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("forkserver"))


def _ppe_cold(root: str) -> dict[str, Any]:
    with _executor() as ex:
        return _on_pool(ex, root)


def _guild(cache: str) -> Guild:
    # limits.total_system must hold both agents at their per_agent limit, or
    # the monitor holds the second agent's start and the Guild runs on one.
    return Guild(
        max_agents=WORKERS, caching={"path": cache}, limits={"per_agent": "1GB", "total_system": "4GB"}, timeout=300.0
    )


def _process(g: Guild, root: str) -> dict[str, Any]:
    out: dict[str, Any] = g.run_process(str(PROCESS), path=root, exclude=EXCLUDE, old=OLD, new=NEW)["report"]
    return out


def _guild_cold(root: str, cache: str) -> dict[str, Any]:
    clear_store(cache)
    with _guild(cache) as g:
        return _process(g, root)


def _guild_new(root: str, cache: str) -> dict[str, Any]:
    with _guild(cache) as g:
        return _process(g, root)


def _codebase(quick: bool, scratch: str) -> str:
    """The stdlib, or (quick) a copy of every 16th of its files."""
    root = default_root()
    if not quick:
        return root
    files = index_codebase(root, EXCLUDE)["files"]
    picked = sorted(f[0] for f in files)[::QUICK_STEP]
    copy = os.path.join(scratch, "code")
    for rel in picked:
        os.makedirs(os.path.dirname(os.path.join(copy, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(root, rel), os.path.join(copy, rel))
    return copy


def _timed(fn: Callable[[], dict[str, Any]], expected: dict[str, Any] | None) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    if expected is not None and out != expected:
        raise AssertionError(f"result differs from the loop's: {out['counts']} vs {expected['counts']}")
    return elapsed, out


def run(bench: Bench) -> None:
    rounds = bench.repeat if bench.quick else max(3, min(bench.repeat, FULL_ROUNDS))
    with tempfile.TemporaryDirectory(prefix="guild-bench-process-") as scratch:
        root = _codebase(bench.quick, scratch)
        # One cache folder per Guild alive at a time: a process opens an LMDB
        # store once, so two live Guilds must not share one.
        cold_cache, warm_cache, new_cache = (os.path.join(scratch, n) for n in ("cold", "warm", "new"))
        bench.note(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        expected = _loop(root)
        _guild_new(root, new_cache)  # the new Guilds' rerun reads what this stored
        cold: dict[str, list[float]] = {LOOP: [], PPE: [], "guildcore process": []}
        warm: dict[str, list[float]] = {LOOP: [], PPE: [], "guildcore process": [], "guildcore process, new Guild": []}
        with _executor() as ex, _guild(warm_cache) as g:
            _on_pool(ex, root)  # workers started, modules imported
            _process(g, root)  # every result cached
            runs: list[tuple[dict[str, list[float]], str, Callable[[], dict[str, Any]]]] = [
                (cold, LOOP, lambda: _loop(root)),
                (cold, PPE, lambda: _ppe_cold(root)),
                (cold, "guildcore process", lambda: _guild_cold(root, cold_cache)),
                (warm, PPE, lambda: _on_pool(ex, root)),
                (warm, "guildcore process", lambda: _process(g, root)),
                (warm, "guildcore process, new Guild", lambda: _guild_new(root, new_cache)),
            ]
            for _ in range(rounds):
                for group, name, fn in runs:
                    group[name].append(_timed(fn, expected)[0])
            warm[LOOP] = list(cold[LOOP])  # the loop has nothing to reuse: its warm run is its run
            stats = g.stats()
    n_files, counts = expected["files"], expected["counts"]
    group_name = f"refactor process, {n_files} files"
    for name, values in cold.items():
        bench.record(f"{group_name}, cold", name, values, unit="s", baseline=LOOP)
    for name, values in warm.items():
        bench.record(f"{group_name}, warm", name, values, unit="s", baseline=LOOP)
    med = {k: statistics.median(v) for k, v in cold.items()}
    best_cold = min(med[LOOP], med[PPE])
    cold_ratio = best_cold / med["guildcore process"]
    wmed = {k: statistics.median(v) for k, v in warm.items()}
    best_warm = min(wmed[LOOP], wmed[PPE])
    warm_ratio = best_warm / wmed["guildcore process"]
    bench.note(
        f"{n_files} files{f' (every {QUICK_STEP}th stdlib file: quick)' if bench.quick else ' of the stdlib, tests left out'}; "
        f"{counts}; {expected['occurrences']} occurrences; {WORKERS} workers/agents"
    )
    bench.note(
        f"cold: guildcore {med['guildcore process']:.2f} s vs best of loop and executor {best_cold:.2f} s: "
        f"{cold_ratio:.2f}x (target >= {COLD_TARGET:.0f}x, no slower: {'met' if cold_ratio >= COLD_TARGET else 'MISSED'})"
    )
    bench.note(
        f"warm: guildcore {wmed['guildcore process'] * 1000:.1f} ms vs best of loop and executor {best_warm:.2f} s: "
        f"{warm_ratio:.0f}x (target >= {WARM_TARGET:.0f}x: {'met' if warm_ratio >= WARM_TARGET else 'MISSED'}); "
        f"a new Guild's rerun {wmed['guildcore process, new Guild'] * 1000:.0f} ms ({best_warm / wmed['guildcore process, new Guild']:.0f}x)"
    )
    bench.note(f"guildcore Guild of the warm runs: routing {stats.get('routing')}")
    bench.note(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
