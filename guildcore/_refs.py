"""Functions by name: ``"module:qualname"`` references, made and resolved in one place.

Covers turning a reference into the object it names (``resolve``: the
agent's function cache, ``keys.resolve_ref``), walking a dotted qualname
from a module without importing (``walk``: whether a function can travel
by reference at all), and telling whether what a function carries besides
its name (code, defaults, closure values) is the same as when it was last
seen (``carried_state``: the caches of fingerprints and by-value payloads).

It does not cover making references (``keys.fn_ref``) or sending functions
(``engine.functions``). It imports nothing of guildcore's but ``_errors``,
since agents import it.
"""

from __future__ import annotations

import sys
import types

from guildcore._errors import SerializationError

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Captured values whose identity is their value: a closure over these may be
# cached by identity. Anything else (a list, a dict, an instance) may change
# in place, and a cache keyed on its identity would serve the old value.
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, range, types.FunctionType,
              types.BuiltinFunctionType, types.ModuleType, type)  # fmt: skip


def walk(root: object, qualname: str) -> object | None:
    """``root.a.b.c`` for ``qualname`` ``"a.b.c"``, or None where a part is missing."""
    target: Any = root
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target  # type: ignore[no-any-return]


def resolve(ref: str) -> Callable[..., Any]:
    """Import the module of ``"module:qualname"`` and return the callable it names."""
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise SerializationError(f"bad function reference {ref!r}; expected 'module:qualname'")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise SerializationError(
            f"cannot send {ref} by reference: lambdas and functions defined inside "
            "other functions have no importable name; define it at module level, "
            "or install cloudpickle (pip install 'guildcore[cloudpickle]') to send it by value"
        )
    try:
        __import__(module_name)  # not importlib.import_module: importlib costs ~0.3 ms of import
        obj: Any = sys.modules[module_name]
    except Exception as exc:
        raise SerializationError(
            f"function {ref} cannot be found in the agent: importing {module_name!r} failed "
            f"({type(exc).__name__}: {exc}); make sure its module is importable from the agents' "
            "working directory and sys.path"
        ) from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SerializationError(
                f"function {ref} cannot be found in the agent: {module_name} has no attribute path "
                f"{qualname!r} (missing {part!r}); was it renamed or defined conditionally?"
            ) from None
    if not callable(obj):
        raise SerializationError(f"cannot resolve {ref}: it names a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


def carried_state(fn: object) -> tuple[object, ...] | None:
    """What a plain function carries besides its name, by identity; None if that cannot be trusted.

    Two snapshots compare equal (element by element, ``is``) while the code,
    the defaults, every closure value and every global the code names are
    the objects they were. A closure that rebinds a captured name changes a
    cell's contents; one that captures a mutable value could change it in
    place, so it gets None: never cached. (A global changed in place is not
    seen: globals are shared by every function of a module, and refusing
    them all would cache nothing.)
    """
    if type(fn) is not types.FunctionType:
        return ()
    cells: list[object] = []
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell: a name not bound yet
            value = cell
        if value is not cell and not _immutable(value):
            return None
        cells.append(value)
    missing = cells  # any object the globals cannot hold: stands for "not bound"
    names = [fn.__globals__.get(name, missing) for name in fn.__code__.co_names]
    return (fn.__code__, fn.__defaults__, fn.__kwdefaults__, *cells, *names)


def _immutable(value: object) -> bool:
    if isinstance(value, _IMMUTABLE):
        return True
    return type(value) is tuple and all(isinstance(v, _IMMUTABLE) for v in value)


def same_state(a: tuple[object, ...] | None, b: tuple[object, ...] | None) -> bool:
    """Whether two ``carried_state`` snapshots name the same objects."""
    return a is not None and b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
