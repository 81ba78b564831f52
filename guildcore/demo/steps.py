"""The demo's rename as a process of three steps: index, rewrite per file, report.

``.guild/processes/refactor.yaml`` runs these (``guild run refactor --input
path=src --input old=expr --input new=expression``):

1. ``index_codebase``: the files of the codebase (the demo's rule: every
   folder but installed packages, bytecode caches, hidden folders and
   ``exclude`` globs) with each file's size and modification time, in path
   order. Not biggest first: ``map`` sends its largest chunks first
   (guided chunking), so on the standard library a biggest-first order put
   56% of all the work in the first chunk, on one agent. It only stats
   files, so it runs on every run (``cache: false``) in milliseconds: it is
   what tells a rerun which files changed.
2. ``rewrite_file``, one call per file: skipped without parsing when the
   bytes do not contain ``old``, else parsed, renamed and unparsed (the
   demo's ``refactor_source``); the new source is hashed, not written.
   Cached per file: a file is known by its path, size and modification time
   (as git's index knows files), so an unchanged file is never read again.
3. ``report``: counts per status, occurrences renamed, the changed files.

Nothing is written: ``guild demo --path DIR --rename OLD=NEW --write``
writes. Module-level functions: agents import them by name.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Sequence
from typing import Any

import xxhash

from guildcore._errors import ConfigError  # agents import this module: the light error module
from guildcore.demo.refactor import CHANGED, ERROR, SKIPPED, UNCHANGED, refactor_source
from guildcore.demo.sources import SKIP_DIRS, excluded

__all__ = ["index_codebase", "report", "rewrite_file"]

# (rel, size in bytes, modification time in ns)
FileStat = tuple[str, int, int]


def index_codebase(path: str, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """``{"root", "files": [(rel, size, mtime_ns)], "bytes"}``, in path order."""
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise ConfigError(f"path {path!r} is not a folder; give the codebase's folder", key="path", value=path)
    files: list[FileStat] = []
    for folder, dirs, names in os.walk(root):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(
            d for d in dirs
            if d not in SKIP_DIRS and not d.startswith(".") and not excluded(rel_folder, d, exclude)
        )  # fmt: skip
        for name in names:
            if not name.endswith(".py"):
                continue
            try:
                st = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):  # not links: a rewrite would replace them
                files.append((rel_folder + name, st.st_size, st.st_mtime_ns))
    files.sort()
    return {"root": root, "files": files, "bytes": sum(f[1] for f in files)}


def rewrite_file(file: FileStat, root: str, old: str, new: str) -> tuple[str, str, str, int]:
    """``(rel, status, digest of the new source or "", occurrences renamed)`` for one file."""
    rel = file[0]
    try:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
    except OSError:
        return (rel, ERROR, "", 0)
    if old.encode() not in data:
        return (rel, SKIPPED, "", 0)  # cannot contain the identifier: not parsed
    try:
        source, count = refactor_source(data, rel, old, new)
    except (SyntaxError, ValueError, RecursionError):
        return (rel, ERROR, "", 0)
    digest = xxhash.xxh3_128_hexdigest(source.encode("utf-8"))
    return (rel, CHANGED if count else UNCHANGED, digest, count)


def report(index: dict[str, Any], outcomes: Sequence[tuple[str, str, str, int]]) -> dict[str, Any]:
    """Counts per status, occurrences renamed and the files that would change."""
    counts = Counter(status for _rel, status, _d, _n in outcomes)
    return {
        "root": index["root"],
        "files": len(index["files"]),
        "bytes": index["bytes"],
        "counts": dict(sorted(counts.items())),
        "occurrences": sum(n for _rel, _s, _d, n in outcomes),
        "changed_files": sorted(rel for rel, status, _d, _n in outcomes if status == CHANGED),
    }
