"""Which files the demo refactors: a walk of one folder, test folders left out.

Covers finding the ``.py`` files under a root, the rule that leaves test
suites and installed packages out, and each file's content digest (the
cache key part that makes a changed file a miss). Does not read or parse
sources beyond hashing them: ``index`` and ``refactor`` do that, in agents.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass

import xxhash

__all__ = ["SKIP_DIRS", "SourceFile", "default_root", "discover", "skipped"]

# A path with one of these components is not refactored: test suites (and
# their deliberately broken sources) and third-party code.
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to refactor: ``rel`` is the path below the root, ``/``-separated."""

    rel: str
    size: int
    digest: str  # xxh3-128 of the bytes, hex


def default_root() -> str:
    """The running Python's standard library."""
    return sysconfig.get_paths()["stdlib"]


def skipped(rel: str) -> bool:
    """Whether the relative path ``rel`` is left out (covers ``lib2to3/tests``)."""
    return any(part in SKIP_DIRS for part in rel.split("/"))


def discover(root: str) -> list[SourceFile]:
    """Every ``.py`` file under ``root`` not in a skipped folder, sorted by path."""
    found: list[SourceFile] = []
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
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
