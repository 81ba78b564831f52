"""Workload functions shared by the engine suites.

Every function is module-level so each pool (guildcore, multiprocessing,
concurrent.futures, joblib, loky, mpire) sends it by reference and its
agents or workers import it by name: no pool gets to skip a pickle of the
function that another pays for.

This module covers: the tiny task (``inc``) and the CPU-bound refactor task
(``refactor_file`` over the standard library's sources). The start-up
suite's task lives in ``trivial``, away from this module's imports. It does
not cover timing: the suites do.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
import sysconfig
import zlib
from pathlib import Path

# The identifier the refactor renames. ``result`` is common across the
# standard library (thousands of Name, arg and attribute uses), so every
# file does real tree rewriting, not just a parse.
RENAME_FROM = "result"
RENAME_TO = "outcome"

# Directory names whose files the refactor skips: test suites are large,
# full of deliberately broken sources, and not what a codemod targets.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test"})


def inc(x: int) -> int:
    """The tiny task: far cheaper than any IPC, so overhead is all one sees."""
    return x + 1


class _Rename(ast.NodeTransformer):
    """Rename one identifier wherever it is a name, an argument or an attribute."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new
        self.count = 0

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.old:
            node.id = self.new
            self.count += 1
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        if node.arg == self.old:
            node.arg = self.new
            self.count += 1
        self.generic_visit(node)  # annotations may use the name too
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr == self.old:
            node.attr = self.new
            self.count += 1
        return node


def refactor_source(source: str) -> str:
    """Parse, rename ``RENAME_FROM`` to ``RENAME_TO``, unparse."""
    tree = ast.parse(source)
    tree = _Rename(RENAME_FROM, RENAME_TO).visit(tree)
    return ast.unparse(tree)


def refactor_file(path: str) -> int:
    """The refactor task: read one file, rewrite it, return a checksum of the output.

    A checksum (not the text) comes back so that the result transfer stays
    small and every system moves the same few bytes.
    """
    with open(path, encoding="utf-8") as f:
        source = f.read()
    return zlib.crc32(refactor_source(source).encode("utf-8"))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _skipped(rel: Path) -> bool:
    parts = rel.parts[:-1]
    return any(p in _SKIP_DIRS for p in parts) or "site-packages" in parts


@functools.cache
def stdlib_files(step: int = 1) -> list[str]:
    """The standard library's ``.py`` files that parse, sorted, every ``step``-th one.

    Skips any path with a ``test``/``tests``/``idle_test`` directory component
    and ``site-packages``; files that fail to read or parse (a few are
    deliberately broken, e.g. lib2to3 test data) are dropped here, once, so
    that no system times a failing task. Every ``step``-th file is taken
    before the parse check, so a quick run (``step`` > 1) parses only the
    files it uses (parsing all of them takes seconds). Cached per ``step``:
    several suites share the list within one run (do not mutate it).
    """
    root = stdlib_root()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if any(p in _SKIP_DIRS or p == "site-packages" or p == "__pycache__" for p in rel_dir.parts):
            dirnames.clear()
            continue
        for name in filenames:
            if name.endswith(".py") and not _skipped(rel_dir / name):
                found.append(os.path.join(dirpath, name))
    found.sort()
    usable = []
    for path in found[::step]:
        try:
            with open(path, encoding="utf-8") as f:
                ast.parse(f.read())
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            continue
        usable.append(path)
    return usable


def python_version() -> str:
    return sys.version.split()[0]
