"""The demo's three timed passes, and ``--write``.

1. ``sequential``: a sample of the files indexed and refactored in this
   process, one after the other; its time is scaled up to all files by
   bytes (the cost of parsing grows with source size) and marked
   extrapolated unless the sample is every file;
2. ``cold``: a Guild indexes every file in the pool (``cache=True``),
   shares the index as context, and refactors every file (``cache=True``),
   against a cache that was just cleared;
3. ``warm``: the same with a new Guild, so every result comes from the
   on-disk L3 store, not from the first Guild's memory.

A pass's wall time runs from creating its Guild to the end of its shutdown.
This module does not print; ``report`` does.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import xxhash

from guildcore.demo.index import FileIndex, context_mapping, index_file, index_item, mentions_of
from guildcore.demo.refactor import CHANGED, Outcome, refactor_file, refactor_path, rewrite_file
from guildcore.demo.sources import SKIP_DIRS, SourceFile

__all__ = [
    "DemoOptions",
    "PassResult",
    "evenly_spaced",
    "pool_pass",
    "sequential_pass",
    "write_changes",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    root: str
    old: str
    new: str
    cache_dir: str
    agents: int | None = None  # None: the configured pool.max_agents (usable CPUs)
    backend: str | None = None  # None: the configured parallelization.backend (local agents)
    address: str | None = None  # backend dask: the scheduler
    sample: int = 100  # files in the sequential sample; 0 = every file
    per_agent: str = "1GB"  # parsing a big module takes tens of MB; leave room
    progress: bool = True
    subset: int = 0  # 0: every file; N: N files evenly spaced (benchmarks' quick mode)
    skip_dirs: frozenset[str] = SKIP_DIRS  # folder names never walked (STDLIB_SKIP_DIRS: tests too)
    exclude: tuple[str, ...] = ()  # --exclude globs


@dataclass
class PassResult:
    name: str
    wall_s: float
    files: int
    extrapolated: bool = False
    sample_files: int = 0
    hit_rate: float | None = None
    agents_used: int = 0
    peak_private_bytes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    changes: int = 0
    digest: str = ""  # over every file's outcome: equal passes agree file by file


def _summarize(outcomes: Sequence[Outcome]) -> tuple[dict[str, int], int, str]:
    counts = Counter(status for status, _h, _n in outcomes)
    h = xxhash.xxh3_128()
    for status, digest, n in outcomes:
        h.update(f"{status} {digest} {n}\n".encode())
    return dict(sorted(counts.items())), sum(n for _s, _h, n in outcomes), h.hexdigest()


def evenly_spaced(files: Sequence[T], n: int) -> list[T]:
    """``n`` items spread over ``files`` (all of them when ``n`` is 0 or too big)."""
    if n <= 0 or n >= len(files):
        return list(files)
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def sequential_pass(opts: DemoOptions, files: Sequence[SourceFile]) -> PassResult:
    """Index and refactor a sample in this process; scale each step's time up to all files.

    Indexing costs in proportion to the bytes of every file; refactoring in
    proportion to the bytes of the files that mention OLD (the rest are
    skipped). A quick scan of every file for OLD (timed, and counted) finds
    those bytes, so a sample heavy in big mentioning files does not skew
    the estimate.
    """
    from guildcore.engine.progress import Progress

    sample = evenly_spaced(files, opts.sample)
    full = len(sample) == len(files)
    t0 = time.perf_counter()
    word = re.compile(rb"\b" + re.escape(opts.old.encode()) + rb"\b")
    mentioning = {s.rel for s in files if not full and _mentions(opts.root, s.rel, word)}
    scan_s = time.perf_counter() - t0
    bar = Progress(len(sample), enabled=opts.progress, label="sequential (in this process)")
    index_s = refactor_s = 0.0
    outcomes = []
    for source in sample:
        t1 = time.perf_counter()
        _defs, mentions, _error = index_file(index_item(opts.root, source))
        t2 = time.perf_counter()
        outcomes.append(refactor_path(opts.root, source.rel, opts.old, opts.new, mentions))
        index_s, refactor_s = index_s + t2 - t1, refactor_s + time.perf_counter() - t2
        bar.advance()
    bar.close()
    counts, changes, digest = _summarize(outcomes)
    if full:
        wall = index_s + refactor_s
    else:
        wall = scan_s + index_s * _ratio(files, sample, lambda s: True)
        wall += refactor_s * _ratio(files, sample, lambda s: s.rel in mentioning)
    return PassResult(
        name="sequential",
        wall_s=wall,
        files=len(files),
        extrapolated=not full,
        sample_files=len(sample),
        counts=counts,
        changes=changes,
        digest=digest if full else "",
    )


def _mentions(root: str, rel: str, word: re.Pattern[bytes]) -> bool:
    try:
        with open(os.path.join(root, rel), "rb") as f:
            return word.search(f.read()) is not None
    except OSError:
        return False


def _ratio(
    files: Sequence[SourceFile], sample: Sequence[SourceFile], keep: Callable[[SourceFile], bool]
) -> float:
    """Bytes of the kept files over the bytes of the kept sampled files (1 if none sampled)."""
    sampled = sum(s.size for s in sample if keep(s))
    return sum(s.size for s in files if keep(s)) / sampled if sampled else 1.0


def _guild(opts: DemoOptions) -> Any:
    from guildcore import Guild
    from guildcore.config import load_config
    from guildcore.config_values import parse_size

    configured = load_config()
    overrides: dict[str, Any] = {
        "caching": {"enabled": True, "path": opts.cache_dir},
        "limits": {"per_agent": opts.per_agent},
        "timeout": 300.0,  # per file; a huge generated module on a loaded host
    }
    if (opts.backend or configured.parallelization.backend) == "local":
        # The memory monitor starts an agent only while one more per_agent
        # fits under total_system: a budget sized to the pool keeps every
        # agent. (On Dask the monitor does not run, and refuses its budget.)
        agents = opts.agents if opts.agents is not None else configured.pool.max_agents
        overrides["limits"]["total_system"] = parse_size(opts.per_agent, "per_agent") * (agents + 1)
    if opts.agents is not None:
        overrides["max_agents"] = opts.agents
    if opts.backend is not None:
        overrides["backend"] = opts.backend
    if opts.address is not None:
        overrides["address"] = opts.address
    return Guild(**overrides)


def pool_pass(
    name: str, opts: DemoOptions, files: Sequence[SourceFile]
) -> tuple[PassResult, list[FileIndex], list[Outcome]]:
    """Index, share and refactor every file in a new Guild, all cached."""
    t0 = time.perf_counter()
    with _guild(opts) as g:
        # Biggest first (longest-processing-time order): the batch does not end
        # on one agent parsing a big module while the other idles.
        order = sorted(range(len(files)), key=lambda i: -files[i].size)
        items = [index_item(opts.root, files[i]) for i in order]
        indexes = _unsort(order, g.map(index_file, items, cache=True, progress=opts.progress))
        g.share(context_mapping(opts.root, files, indexes))
        parse = {i for i in order if opts.old in mentions_of(indexes[i][1])}
        order = [i for i in order if i in parse] + [i for i in order if i not in parse]
        jobs = [(opts.root, files[i].rel, files[i].digest, opts.old, opts.new) for i in order]
        outcomes = _unsort(order, g.map(refactor_file, jobs, cache=True, progress=opts.progress))
        stats = g.stats()
    wall = time.perf_counter() - t0
    counts, changes, digest = _summarize(outcomes)
    peaks: dict[int, int] = stats.get("peak_private_bytes") or {}
    used = {a["id"] for a in stats.get("agents", []) if a.get("tasks_done")} | set(peaks)
    cache = stats.get("cache") or {}
    result = PassResult(
        name=name,
        wall_s=wall,
        files=len(files),
        hit_rate=cache.get("hit_rate"),
        agents_used=len(used),
        peak_private_bytes=max(peaks.values()) if peaks else None,
        counts=counts,
        changes=changes,
        digest=digest,
    )
    return result, indexes, outcomes


def _unsort(order: Sequence[int], values: Sequence[T]) -> list[T]:
    """Put ``values`` (computed in ``order``) back in file order."""
    out: list[T] = [None] * len(values)  # type: ignore[list-item]
    for position, value in zip(order, values, strict=True):
        out[position] = value
    return out


def write_changes(
    opts: DemoOptions, files: Sequence[SourceFile], outcomes: Sequence[Outcome]
) -> dict[str, Any]:
    """Rewrite every changed file atomically, in the pool; what happened to each."""
    items = [
        (opts.root, s.rel, s.digest, opts.old, opts.new, digest)
        for s, (status, digest, _n) in zip(files, outcomes, strict=True)
        if status == CHANGED
    ]
    t0 = time.perf_counter()
    results: list[str] = []
    if items:
        with _guild(opts) as g:
            results = g.map(rewrite_file, items, progress=opts.progress)
    problems = {
        os.path.join(opts.root, item[1]): what
        for item, what in zip(items, results, strict=True)
        if what != "written"
    }
    return {
        "files_written": sum(1 for r in results if r == "written"),
        "problems": problems,
        "wall_s": time.perf_counter() - t0,
    }
