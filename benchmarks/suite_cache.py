"""Cache tiers: guildcore L1, L2, L3 and the tiered API against diskcache and joblib.

Cases, for values of 100 B, 10 KB and 1 MB (random bytes, so compression
never helps and every method stores the same payload):

- ``get-hit``: a lookup that finds the value. guildcore: L1 and L2 direct,
  L3 direct (``L3Store.lookup``: read, check, decode), and through
  ``TieredCache.get`` served from L1 and served from L3 (L1 and L2 emptied
  before each batch; every key read once per batch); ``diskcache.Cache``;
  a ``joblib.Memory`` hit of a function returning the value.
- ``get-miss``: a lookup of a key never written.
- ``put``: one write (``TieredCache.set`` writes through all tiers).
- ``put-batch``: ``TieredCache.set_many`` of 1000 values, per value.
- ``refactor``: the CPU-bound refactor workload (``benchmarks.workloads.
  refactor_file`` over every ``.py`` file of the running Python's standard
  library, test folders excluded; every 8th file with ``--quick``) through
  ``Guild(...).map(fn, files, cache=True)``: cold (an empty cache folder)
  against warm (a new Guild over the same folder, so every hit is read from
  disk). Target: warm at least 20x faster than cold, hit rate 100%.

Medians of ``repeats`` batches; each batch times many operations and
divides. Targets (100 B, through ``TieredCache``): hit from L3 under 6 us,
miss under 5 us, put under 20 us, batched put under 5 us per value, and
every guildcore tier faster than diskcache at every size.

Run: ``python -m benchmarks.suite_cache`` (or through ``python -m benchmarks``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from guildcore.cache.l1 import L1Cache
from guildcore.cache.l2 import L2Cache
from guildcore.cache.l3 import L3Store
from guildcore.cache.tiers import TieredCache

NAME = "cache"

SIZES = {"100B": 100, "10KB": 10_000, "1MB": 1_000_000}
KEYS_PER_BATCH = {"100B": 2000, "10KB": 1000, "1MB": 50}
BATCH = 1000
TARGETS_US = {
    ("get-hit", "guildcore tiers (from L3)"): 6.0,
    ("get-miss", "guildcore tiers"): 5.0,
    ("put", "guildcore tiers"): 20.0,
    ("put-batch", "guildcore tiers set_many"): 5.0,
}
REFACTOR_AGENTS = 2
REFACTOR_QUICK_STEP = 8  # --quick: every 8th file of the standard library
REFACTOR_MIN_SPEEDUP = 20.0


@dataclass
class Row:
    case: str
    size: str
    method: str
    times_us: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times_us)


def _per_op(
    batch: Callable[[], int], repeats: int, setup: Callable[[], None] | None = None
) -> list[float]:
    """Median-ready list: microseconds per operation of each timed batch."""
    out = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter_ns()
        n = batch()
        out.append((time.perf_counter_ns() - t0) / 1000 / n)
    return out


def _loop(fn: Callable[[Any], object], keys: list[Any]) -> Callable[[], int]:
    def batch() -> int:
        for k in keys:
            fn(k)
        return len(keys)

    return batch


def _measure_size(label: str, size: int, repeats: int, root: str) -> list[Row]:
    value = os.urandom(size)
    n = KEYS_PER_BATCH[label]
    keys = [i.to_bytes(16, "big") for i in range(n)]
    nks = [("result", k) for k in keys]
    absent = [(i + 10**9).to_bytes(16, "big") for i in range(n)]
    now = time.time()
    rows: list[Row] = []

    def row(case: str, method: str, times: list[float], note: str = "") -> None:
        rows.append(Row(case, label, method, times, note))

    # L1 and L2 direct.
    l1 = L1Cache(n + 1)
    l2 = L2Cache(n + 1, 2**40)
    row("put", "guildcore L1", _per_op(_loop(lambda nk: l1.set(nk, value, 0.0), nks), repeats))
    row("get-hit", "guildcore L1", _per_op(_loop(lambda nk: l1.get(nk, now), nks), repeats))
    row(
        "get-miss",
        "guildcore L1",
        _per_op(_loop(lambda k: l1.get(("result", k), now), absent), repeats),
    )
    row(
        "put", "guildcore L2", _per_op(_loop(lambda nk: l2.set(nk, value, 0.0, size), nks), repeats)
    )
    row("get-hit", "guildcore L2", _per_op(_loop(lambda nk: l2.get(nk, now), nks), repeats))
    row(
        "get-miss",
        "guildcore L2",
        _per_op(_loop(lambda k: l2.get(("result", k), now), absent), repeats),
    )

    # L3 direct.
    map_size = max(2**30, 8 * n * size)
    l3 = L3Store(os.path.join(root, f"l3-{label}"), map_size=map_size)
    try:
        row(
            "put",
            "guildcore L3",
            _per_op(_loop(lambda k: l3.set("result", k, value), keys), repeats),
        )
        row(
            "get-hit",
            "guildcore L3",
            _per_op(_loop(lambda k: l3.lookup("result", k), keys), repeats),
        )
        row(
            "get-miss",
            "guildcore L3",
            _per_op(_loop(lambda k: l3.lookup("result", k), absent), repeats),
        )
    finally:
        l3.close()

    # Through the tiers.
    with TieredCache(os.path.join(root, f"tiers-{label}"), map_size=map_size, memory_bytes=2**40,
                     memory_entries=8 * n) as tc:  # fmt: skip
        row(
            "put",
            "guildcore tiers",
            _per_op(_loop(lambda k: tc.set("result", k, value), keys), repeats),
        )
        row(
            "get-hit",
            "guildcore tiers (from L1)",
            _per_op(_loop(lambda k: tc.get("result", k), keys), repeats),
        )
        row("get-hit", "guildcore tiers (from L3)",
            _per_op(_loop(lambda k: tc.get("result", k), keys), repeats, setup=tc.evict_memory))  # fmt: skip
        row(
            "get-miss",
            "guildcore tiers",
            _per_op(_loop(lambda k: tc.get("result", k), absent), repeats),
        )
        if label == "100B":
            counter = iter(range(10**9))

            def batch() -> int:
                base = next(counter) * BATCH
                tc.set_many(
                    "result", [((base + i).to_bytes(16, "big"), value) for i in range(BATCH)]
                )
                return BATCH

            row(
                "put-batch",
                "guildcore tiers set_many",
                _per_op(batch, repeats),
                f"{BATCH} per call",
            )

    # diskcache.
    import diskcache

    with diskcache.Cache(os.path.join(root, f"diskcache-{label}"), size_limit=2**40) as dc:
        row("put", "diskcache", _per_op(_loop(lambda k: dc.set(k, value), keys), repeats))
        row("get-hit", "diskcache", _per_op(_loop(dc.get, keys), repeats))
        row("get-miss", "diskcache", _per_op(_loop(dc.get, absent), repeats))

    # joblib.Memory: a cached function returning the value, hit.
    import joblib

    memory = joblib.Memory(os.path.join(root, f"joblib-{label}"), verbose=0)
    produce = memory.cache(_make_value_factory(value))
    jkeys = list(range(min(n, 50)))
    for k in jkeys:
        produce(k)
    row("get-hit", "joblib.Memory", _per_op(_loop(produce, jkeys), repeats), f"{len(jkeys)} keys")
    return rows


def _make_value_factory(value: bytes) -> Callable[[int], bytes]:
    def produce(i: int) -> bytes:
        return value

    produce.__qualname__ = produce.__name__ = f"produce_{len(value)}"
    return produce


def measure(repeats: int = 5) -> list[Row]:
    root = tempfile.mkdtemp(prefix="guild-bench-cache-")
    try:
        rows: list[Row] = []
        for label, size in SIZES.items():
            rows += _measure_size(label, size, repeats, root)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def format_table(rows: list[Row]) -> str:
    lines = [
        "| case | size | method | median | diskcache / this | target | runs | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    disk = {(r.case, r.size): r.median for r in rows if r.method == "diskcache"}
    for r in rows:
        base = disk.get(("put" if r.case == "put-batch" else r.case, r.size))
        ratio = f"{base / r.median:.1f}x" if base and r.method != "diskcache" else ""
        target = TARGETS_US.get((r.case, r.method)) if r.size == "100B" else None
        mark = (
            "" if target is None else f"< {target:g} us {'ok' if r.median < target else 'MISSED'}"
        )
        lines.append(
            f"| {r.case} | {r.size} | {r.method} | {r.median:.2f} us | {ratio} | {mark} "
            f"| {len(r.times_us)} | {r.note} |"
        )
    return "\n".join(lines)


def measure_refactor(repeats: int, quick: bool) -> dict[str, Any]:
    """Cold and warm wall times (s) of the refactor map with ``cache=True``.

    Each repeat starts from an empty cache folder: one Guild computes and
    stores every file (cold), then a new Guild over the same folder serves
    every file from L3 (warm). Only the ``map`` call is timed; the Guilds are
    started (and their agents warmed with one task) beforehand.
    """
    from benchmarks.workloads import refactor_file, stdlib_files
    from guildcore import Guild

    files = stdlib_files(REFACTOR_QUICK_STEP if quick else 1)
    cold: list[float] = []
    warm: list[float] = []
    hit_rates: list[float] = []
    for _ in range(repeats):
        root = tempfile.mkdtemp(prefix="guild-bench-refactor-")
        try:
            caching = {"path": os.path.join(root, "cache")}
            with Guild(max_agents=REFACTOR_AGENTS, caching=caching) as g:
                g.map(abs, range(REFACTOR_AGENTS * 2))  # agents up before the clock starts
                t0 = time.perf_counter()
                expected = g.map(refactor_file, files, cache=True)
                cold.append(time.perf_counter() - t0)
            with Guild(max_agents=REFACTOR_AGENTS, caching=caching) as g:
                g.map(abs, range(REFACTOR_AGENTS * 2))
                t0 = time.perf_counter()
                got = g.map(refactor_file, files, cache=True)
                warm.append(time.perf_counter() - t0)
                hit_rates.append(g.stats()["cache"]["hit_rate"])
            if got != expected:
                raise AssertionError("warm refactor results differ from the cold ones")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {"files": len(files), "cold_s": cold, "warm_s": warm, "hit_rates": hit_rates}


def format_refactor(result: dict[str, Any]) -> str:
    cold, warm = statistics.median(result["cold_s"]), statistics.median(result["warm_s"])
    speedup = cold / warm
    mark = "ok" if speedup >= REFACTOR_MIN_SPEEDUP else "MISSED"
    return (
        f"refactor of {result['files']} stdlib files through Guild.map(cache=True): "
        f"cold {cold:.3f} s, warm {warm * 1000:.2f} ms ({warm / result['files'] * 1e6:.1f} us "
        f"per file), warm {speedup:.0f}x faster (target >= {REFACTOR_MIN_SPEEDUP:g}x {mark}); "
        f"warm hit rates {result['hit_rates']}"
    )


def run(bench: Any) -> None:
    """Entry for ``python -m benchmarks``: one group per case and size, diskcache the baseline."""
    quick = bool(getattr(bench, "quick", False))
    repeats = 3 if quick else 7
    rows = measure(repeats)
    groups = {(r.case, r.size) for r in rows if r.method == "diskcache"}
    for r in rows:
        bench.record(
            f"{r.case} {r.size}",
            r.method,
            r.times_us,
            unit="µs",
            baseline="diskcache" if (r.case, r.size) in groups else None,
            note=r.note,
        )
    for (case, method), target in TARGETS_US.items():
        bench.note(f"target: {case} 100B via {method} under {target:g} µs")
    refactor = measure_refactor(3, quick)
    group = f"refactor {refactor['files']} files"
    bench.record(group, "guildcore warm (new Guild, from L3)", refactor["warm_s"], unit="s")
    bench.record(group, "guildcore cold (empty cache)", refactor["cold_s"], unit="s")
    bench.note(format_refactor(refactor))


if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_REPEATS", "5"))
    if "--refactor-only" not in sys.argv:
        print(format_table(measure(repeats)))
    if "--no-refactor" not in sys.argv:
        print(format_refactor(measure_refactor(3, "--quick" in sys.argv)))
