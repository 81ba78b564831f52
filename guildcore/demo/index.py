"""The symbol index: what each module defines at top level and what it mentions.

Built per file, in the pool (``index_file``; cached by file digest), then
shared once with every agent as context (``context_mapping``) so that the
refactor task can skip a file without parsing it.

Per file, the index holds:

- ``defs``: the names a module binds at top level: functions, classes,
  assignment targets (plain, annotated, augmented; names inside tuple and
  list targets), found by parsing with ``ast`` and reading ``tree.body``;
- ``mentions``: every identifier-shaped word in the source (a regex over the
  bytes, space-joined and sorted). This is a superset of the identifiers
  the parser sees (it also catches words in strings and comments), so
  "``OLD`` is not mentioned" proves the file has nothing to rename.

Context layout (keys of the shared mapping)::

    "root"            the codebase folder
    "mentions:<rel>"  the file's mentions, one space-joined str
    "defs:<rel>"      the file's top-level definitions, a tuple of str

Values are plain strings so that the shared segment and the cached results
decode fast (one str instead of hundreds).
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from guildcore.demo.sources import SourceFile

__all__ = ["FileIndex", "context_mapping", "index_file", "index_item", "mentions_of"]

_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")

# (defs, mentions, error): error is "" or the SyntaxError/OSError text.
FileIndex = tuple[tuple[str, ...], str, str]


def index_item(root: str, source: SourceFile) -> tuple[str, str, str]:
    """The pool item of ``index_file``: the digest makes a changed file a cache miss."""
    return (root, source.rel, source.digest)


def index_file(item: tuple[str, str, str]) -> FileIndex:
    """Index one file (runs in an agent): top-level definitions and mentioned words."""
    root, rel, _digest = item
    try:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
    except OSError as exc:
        return ((), "", f"cannot read: {exc.strerror}")
    mentions = " ".join(sorted({w.decode("ascii") for w in _WORD.findall(data)}))
    try:
        tree = ast.parse(data, filename=rel)
    except (SyntaxError, ValueError) as exc:  # ValueError: source with NUL bytes
        return ((), mentions, f"does not parse: {exc}")
    return (_top_level_defs(tree.body), mentions, "")


def _top_level_defs(body: Sequence[ast.stmt]) -> tuple[str, ...]:
    names: list[str] = []
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(stmt.name)
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                names.extend(_target_names(target))
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
            names.extend(_target_names(stmt.target))
    return tuple(dict.fromkeys(names))


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [name for elt in target.elts for name in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []  # attributes and subscripts bind no module-level name


def mentions_of(mentions: str) -> frozenset[str]:
    return frozenset(mentions.split())


def context_mapping(
    root: str, files: Sequence[SourceFile], indexes: Sequence[FileIndex]
) -> dict[str, Any]:
    """The mapping shared with the agents (layout in the module docstring)."""
    out: dict[str, Any] = {"root": root}
    for source, (defs, mentions, _error) in zip(files, indexes, strict=True):
        out["mentions:" + source.rel] = mentions
        out["defs:" + source.rel] = defs
    return out


def summarize(indexes: Sequence[FileIndex], old: str, new: str) -> Mapping[str, int]:
    """Counts for the report: modules, definitions, who defines/mentions OLD and NEW."""
    defs_total = defines_old = mention_old = mention_new = errors = 0
    for defs, mentions, error in indexes:
        words = mentions_of(mentions)
        defs_total += len(defs)
        defines_old += old in defs
        mention_old += old in words
        mention_new += new in words
        errors += bool(error)
    return {
        "modules": len(indexes),
        "top_level_definitions": defs_total,
        "modules_defining_old": defines_old,
        "modules_mentioning_old": mention_old,
        "modules_mentioning_new": mention_new,
        "modules_not_parsing": errors,
    }
