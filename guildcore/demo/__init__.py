"""``guild demo``: a CPU-bound codemod over a real codebase, three ways.

Renames one identifier across a codebase (by default the running Python's
standard library, test folders left out; a folder given with ``--path``
whole, tests included, but for ``--exclude`` globs) with ``ast``: a symbol index built
in the pool and shared as context lets agents skip files that cannot
contain the name; every file's new source is hashed, not written, unless
``--write``. The same work is timed sequentially (a sample, extrapolated),
in a cold pool against an empty cache, and again warm from the on-disk
cache (``passes``); ``report`` prints the table or JSON.

Modules: ``sources`` (which files), ``index`` (the symbol index and the
context layout), ``refactor`` (the per-file task and what a rename
touches), ``passes`` (timing), ``report`` (output), ``command`` (the CLI).
"""

from __future__ import annotations

import os
import time
from typing import Any

from guildcore.demo.passes import (
    DemoOptions,
    evenly_spaced,
    pool_pass,
    sequential_pass,
    write_changes,
)

__all__ = ["DemoOptions", "clear_store", "run_demo"]

# An L3 store's LMDB files (see guildcore.cache.storefiles); the signing key
# and the lock file may stay.
_STORE_FILES = ("data.mdb", "lock.mdb")


def clear_store(folder: str) -> None:
    """Cold means cold: delete the demo store's LMDB files (only those) before a run.

    Deleting, rather than clearing entries, also gives the disk space back.
    """
    for name in _STORE_FILES:
        try:
            os.unlink(os.path.join(folder, name))
        except FileNotFoundError:
            pass


def run_demo(opts: DemoOptions, *, write: bool = False) -> dict[str, Any]:
    """Run the three passes (and ``--write``); return the report as a JSON-ready dict."""
    from guildcore.config import load_config
    from guildcore.demo.index import summarize
    from guildcore.demo.report import build_report
    from guildcore.demo.sources import discover
    from guildcore.metrics import recorded_run
    from guildcore.metrics.run import store_path

    t0 = time.perf_counter()
    files = evenly_spaced(discover(opts.root, skip_dirs=opts.skip_dirs, exclude=opts.exclude), opts.subset)
    clear_store(opts.cache_dir)
    # One run in the project's history (guild stats / report / doctor), not
    # in the demo's own cache folder: its Guilds are recorded together.
    label = f"guild demo: rename {opts.old} -> {opts.new} in {os.path.basename(opts.root) or opts.root}"
    with recorded_run(label, kind="demo", store=store_path(load_config().cache_path())) as run:
        marks = [time.monotonic()]
        seq = sequential_pass(opts, files)
        marks.append(time.monotonic())
        cold, indexes, outcomes = pool_pass("cold", opts, files)
        marks.append(time.monotonic())
        warm, _indexes, _outcomes = pool_pass("warm", opts, files)
        marks.append(time.monotonic())
        written = write_changes(opts, files, outcomes) if write else None
        # The passes, as the steps of this run's timeline.
        run.add_steps({"name": p.name, "start": a, "end": b, "status": "done", "cached": p.name == "warm",
                       "items": p.sample_files or p.files} for p, a, b in zip((seq, cold, warm), marks[:-1], marks[1:], strict=True))  # fmt: skip
    report = build_report(
        codebase={
            "path": opts.root,
            "files": len(files),
            "bytes": sum(s.size for s in files),
            "skipped_dirs": sorted(opts.skip_dirs),
            "excluded": list(opts.exclude),
        },
        rename={"old": opts.old, "new": opts.new},
        index=summarize(indexes, opts.old, opts.new),
        passes=[seq, cold, warm],
        cache_dir=opts.cache_dir,
        write=written,
        total_s=time.perf_counter() - t0,
    )
    report["metrics_run"] = {"id": run.id, "store": run.store} if run.saved else None
    return report
