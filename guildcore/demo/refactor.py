"""The per-file task: rename one identifier with ``ast`` and hash the result.

What is renamed: every occurrence of the identifier ``OLD`` (exact match)
where the parser sees a name, so that a codebase-wide rename stays
consistent:

- variables and references: ``ast.Name`` (load, store, del), including
  names inside f-strings, and ``global``/``nonlocal`` lists;
- parameters ``ast.arg`` (also ``*args``/``**kwargs`` and lambda
  parameters) and keyword arguments at call sites (``f(OLD=1)``);
- attributes ``x.OLD`` (``ast.Attribute``) and class-pattern keywords
  (``case P(OLD=...)``);
- definitions ``def OLD``, ``async def OLD``, ``class OLD``;
- ``except E as OLD`` and pattern captures (``case [*OLD]``, ``{**OLD}``,
  ``case OLD``);
- imports: ``import m as OLD`` (the alias), ``from m import OLD`` (the
  imported symbol becomes ``NEW``: its definition in ``m`` is renamed
  too when ``m`` is part of the codebase), ``import OLD`` becomes
  ``import OLD as NEW`` (modules are files; they keep their names).

Not renamed: strings (``__all__`` entries, ``getattr(x, "OLD")``), dotted
module paths, names that only coincide with ``OLD`` in other codebases
(attributes of C extension objects are renamed like any attribute).
Comments and formatting do not survive ``ast.unparse``: ``--write`` is
meant for a copy of the code. The rename is idempotent: a second run finds
no ``OLD`` left in a renamed position and changes nothing.

Runs in agents, so everything here is a module-level function (sent by
reference); results are small tuples, cached by the engine.
"""

from __future__ import annotations

import ast
import os
import stat
import tempfile

import xxhash

from guildcore.context import current
from guildcore.demo.index import mentions_of

__all__ = [
    "Outcome",
    "RefactorItem",
    "refactor_file",
    "refactor_path",
    "rename_tree",
    "rewrite_file",
]

# (root, rel, digest of the original bytes, OLD, NEW)
RefactorItem = tuple[str, str, str, str, str]
# (status, digest of the new source or "", number of renamed occurrences)
Outcome = tuple[str, str, int]

SKIPPED = "skipped"  # the index proves OLD is absent: not parsed
UNCHANGED = "unchanged"  # parsed, nothing to rename
CHANGED = "changed"
ERROR = "error"  # unreadable or not parsing


def rename_tree(tree: ast.AST, old: str, new: str) -> int:
    """Rename ``old`` to ``new`` in place (positions in the module docstring); return the count."""
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id == old:
                node.id = new
                count += 1
        elif isinstance(node, ast.Attribute):
            if node.attr == old:
                node.attr = new
                count += 1
        elif isinstance(node, ast.arg | ast.keyword):
            if node.arg == old:
                node.arg = new
                count += 1
        elif isinstance(node, _NAMED):
            if node.name == old:
                node.name = new
                count += 1
        elif isinstance(node, ast.Import | ast.ImportFrom):
            count += _rename_aliases(node, old, new)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            count += _rename_list(node, "names", old, new)
        elif isinstance(node, ast.MatchClass):
            count += _rename_list(node, "kwd_attrs", old, new)
        elif isinstance(node, ast.MatchMapping) and node.rest == old:
            node.rest = new
            count += 1
    return count


_NAMED = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
    ast.ExceptHandler, ast.MatchAs, ast.MatchStar,
)  # fmt: skip


def _rename_list(node: ast.AST, field: str, old: str, new: str) -> int:
    names: list[str] = getattr(node, field)
    hits = names.count(old)
    if hits:
        setattr(node, field, [new if name == old else name for name in names])
    return hits


def _rename_aliases(node: ast.Import | ast.ImportFrom, old: str, new: str) -> int:
    count = 0
    for alias in node.names:
        if alias.asname == old:
            alias.asname = new
        elif alias.asname is None and alias.name == old:
            if isinstance(node, ast.ImportFrom):
                alias.name = new  # the symbol, renamed where it is defined
            else:
                alias.asname = new  # a module: it keeps its file name, the binding changes
        else:
            continue
        count += 1
    return count


def refactor_source(data: bytes, rel: str, old: str, new: str) -> tuple[str, int]:
    """The new source (``ast.unparse``) and the number of renamed occurrences."""
    tree = ast.parse(data, filename=rel)
    count = rename_tree(tree, old, new)
    return ast.unparse(tree) + "\n", count


def refactor_path(root: str, rel: str, old: str, new: str, mentions: str | None) -> Outcome:
    """Refactor one file; ``mentions`` (from the index) lets it skip without parsing."""
    if mentions is not None and old.isascii() and old not in mentions_of(mentions):
        return (SKIPPED, "", 0)
    try:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        source, count = refactor_source(data, rel, old, new)
    except (OSError, SyntaxError, ValueError, RecursionError):
        return (ERROR, "", 0)
    status = CHANGED if count else UNCHANGED
    return (status, xxhash.xxh3_128_hexdigest(source.encode("utf-8")), count)


def refactor_file(item: RefactorItem) -> Outcome:
    """The pool task: look the file up in the shared index, then refactor it."""
    root, rel, _digest, old, new = item
    mentions = current().get("mentions:" + rel)
    return refactor_path(root, rel, old, new, mentions)


def rewrite_file(item: tuple[str, str, str, str, str, str]) -> str:
    """``--write``: rewrite one changed file atomically; return what happened.

    ``item`` is ``(root, rel, original digest, OLD, NEW, expected new digest)``.
    A file whose bytes changed since the run is left alone.
    """
    root, rel, digest, old, new, expected = item
    path = os.path.join(root, rel)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if xxhash.xxh3_128_hexdigest(data) != digest:
            return "modified since the run; left alone"
        source, _count = refactor_source(data, rel, old, new)
        encoded = source.encode("utf-8")
        if xxhash.xxh3_128_hexdigest(encoded) != expected:
            return "new source differs from the run's; left alone"
        _replace_atomically(path, encoded)
    except (OSError, SyntaxError, ValueError, RecursionError) as exc:
        return f"failed: {exc}"
    return "written"


def _replace_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, keep its mode, then ``os.replace``."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
