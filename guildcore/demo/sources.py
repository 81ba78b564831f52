"""Which files the demo refactors: a walk of one folder, some folders left out.

Covers finding the ``.py`` files under a root, the rules that leave folders
out, and each file's content digest (the cache key part that makes a
changed file a miss). Does not read or parse sources beyond hashing them:
``index`` and ``refactor`` do that, in agents.

Which folders are the codebase: a rename must leave a codebase consistent,
so a project's own tests are renamed with the code they test (a test that
still says ``expr`` after ``expr`` became ``expression`` is broken). So under
a folder given with ``--path`` every folder is walked but installed packages
(``site-packages``), bytecode caches and hidden folders (``.git``,
``.venv``), and those matching an ``--exclude`` glob. The default codebase,
the running Python's standard library, keeps test suites out
(``STDLIB_SKIP_DIRS``): they hold deliberately broken sources, and the
stdlib is a sample to time, not a project to keep consistent.
"""

from __future__ import annotations

import fnmatch
import os
import sysconfig
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import xxhash

__all__ = [
    "SKIP_DIRS",
    "STDLIB_SKIP_DIRS",
    "SourceFile",
    "default_root",
    "discover",
    "excluded",
]

# Never part of a codebase: installed third-party code and bytecode caches
# (hidden folders are left out too).
SKIP_DIRS = frozenset({"site-packages", "__pycache__"})
# The standard library default also leaves its test suites out.
STDLIB_SKIP_DIRS = SKIP_DIRS | {"test", "tests", "idle_test"}


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to refactor: ``rel`` is the path below the root, ``/``-separated."""

    rel: str
    size: int
    digest: str  # xxh3-128 of the bytes, hex


def default_root() -> str:
    """The running Python's standard library."""
    return sysconfig.get_paths()["stdlib"]


def excluded(rel_dir: str, name: str, exclude: Sequence[str]) -> bool:
    """Whether folder ``name`` (at ``rel_dir/name`` below the root) matches an ``--exclude`` glob.

    A glob matches the folder's name (``tests``, ``test_*``) or its path
    below the root (``pkg/vendored``, ``*/fixtures``).
    """
    path = rel_dir + name
    return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(path, g.rstrip("/")) for g in exclude)


def discover(
    root: str, *, skip_dirs: Collection[str] = STDLIB_SKIP_DIRS, exclude: Sequence[str] = ()
) -> list[SourceFile]:
    """Every ``.py`` file under ``root`` outside skipped and excluded folders, sorted by path."""
    found: list[SourceFile] = []
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(
            d for d in dirs
            if d not in skip_dirs and not d.startswith(".") and not excluded(rel_folder, d, exclude)
        )  # fmt: skip
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue  # --write would replace the link with a file
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue  # unreadable or vanished: not part of the codebase we can rewrite
            found.append(SourceFile(rel_folder + name, len(data), xxhash.xxh3_128_hexdigest(data)))
    found.sort(key=lambda s: s.rel)
    return found
