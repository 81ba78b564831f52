"""How a task's function travels from the supervisor to an agent.

Module-level functions travel by reference, ``"module:qualname"``: a few
bytes, resolved once per agent and kept (the agent's function cache).
Functions a reference cannot reach (lambdas, closures, local functions,
functions of an interactive ``__main__``) travel by value through
``cloudpickle`` when it is installed; otherwise the caller gets a
``SerializationError`` that says how to fix it.

A spec is either a ``str`` (a reference) or ``bytes`` (a cloudpickle blob).
"""

from __future__ import annotations

import functools
import io
import marshal
import os
import sys
import types
import weakref
from collections import ChainMap
from collections.abc import Callable

from guildcore import _refs
from guildcore._errors import SerializationError

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    import pickle
    from typing import Any

FnSpec = str | bytes

# fn -> (what it carried when sent, its spec); see _refs.carried_state.
_spec_cache: weakref.WeakKeyDictionary[Callable[..., Any], tuple[tuple[object, ...] | None, FnSpec]]
_spec_cache = weakref.WeakKeyDictionary()


def describe(fn: Callable[..., Any]) -> str:
    """A short human name for messages: ``mymod:rewrite``."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}:{qualname}"


def _reachable_by_reference(fn: Callable[..., Any]) -> str | None:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    mod = sys.modules.get(module)
    if mod is None:
        return None
    if module == "__main__" and not os.path.isfile(getattr(mod, "__file__", None) or ""):
        return None  # interactive session or a script read from stdin: agents cannot import it
    target = _refs.walk(mod, qualname)
    if target is None:
        return None
    # A bound method of an instance resolves to the plain function, which is
    # not the same callable: it must travel by value with its instance.
    if target is not fn and target != fn:
        return None
    return f"{module}:{qualname}"


def spec_for(fn: Callable[..., Any]) -> FnSpec:
    """The spec the supervisor sends for ``fn``, cached per function object.

    A spec sent by value is the function with what it carries (closure
    values, defaults, globals it names): it is reused only while those are
    the same objects, so a closure whose captured name was rebound is sent
    afresh, never with its first values.
    """
    try:
        carried, spec = _spec_cache[fn]
    except (KeyError, TypeError):
        pass
    else:
        if isinstance(spec, str) or _refs.same_state(carried, _refs.carried_state(fn)):
            return spec
    if not callable(fn):
        raise SerializationError(f"{fn!r} is not callable; pass a function as the task")
    by_ref = _reachable_by_reference(fn)
    spec = by_ref if by_ref is not None else _by_value(fn)
    carried = () if by_ref is not None else _refs.carried_state(fn)
    if carried is not None:
        try:
            _spec_cache[fn] = (carried, spec)
        except TypeError:
            pass  # not weak-referenceable (e.g. some builtins): recomputed each time
    return spec


def _by_value(fn: Callable[..., Any]) -> bytes:
    import pickle  # here: functions sent by reference (the usual case) never need it

    try:
        import cloudpickle  # noqa: F401  # only whether it is installed: _pickler_keeping_filenames uses it
    except ImportError:
        try:
            return pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            raise SerializationError(
                f"function {describe(fn)} cannot be sent to agents by reference "
                "(it is a lambda, a closure, a local function or defined interactively); "
                "define it at module level, or install cloudpickle (pip install 'guildcore[cloudpickle]')"
            ) from None
    try:
        buffer = io.BytesIO()
        _pickler_keeping_filenames()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
        blob = buffer.getvalue()
    except Exception as exc:
        raise SerializationError(
            f"function {describe(fn)} cannot be pickled by cloudpickle ({type(exc).__name__}: {exc}); "
            "define it at module level and pass what it captures as arguments"
        ) from exc
    return blob


@functools.cache
def _pickler_keeping_filenames() -> type[pickle.Pickler]:
    """cloudpickle's Pickler, but code objects keep their file and line numbers.

    cloudpickle (3.x) renames every code object it sends by value to
    ``<dynamic-code>``, so a traceback from the agent shows no file and no
    source line. Code travels through ``marshal`` instead, which keeps
    ``co_filename`` and the line table whole; the agent runs the same
    Python (the one that started it), so marshal's format matches.
    """
    import cloudpickle

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table = ChainMap({types.CodeType: _code_by_marshal}, cloudpickle.Pickler.dispatch_table)

    return Pickler


def _code_by_marshal(code: types.CodeType) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
    return marshal.loads, (marshal.dumps(code),)


def resolve_reference(ref: str) -> Callable[..., Any]:
    """Import ``module:qualname`` (agent side); see ``_refs.resolve``."""
    return _refs.resolve(ref)


class FunctionCache:
    """The agent's cache of resolved functions: each spec is resolved once."""

    def __init__(self) -> None:
        self._fns: dict[FnSpec, Callable[..., Any]] = {}

    def get(self, spec: FnSpec) -> Callable[..., Any]:
        fn = self._fns.get(spec)
        if fn is None:
            fn = resolve_reference(spec) if isinstance(spec, str) else _load_by_value(spec)
            if len(self._fns) > 1024:
                self._fns.clear()  # bound it: lambdas made in a loop must not grow it forever
            self._fns[spec] = fn
        return fn


def _load_by_value(blob: bytes) -> Callable[..., Any]:
    import pickle

    try:
        fn = pickle.loads(blob)
    except Exception as exc:
        raise SerializationError(
            f"a function sent by value cannot be loaded in the agent ({type(exc).__name__}: {exc}); "
            "install the same cloudpickle version for agents, or define the function at module level"
        ) from exc
    return fn  # type: ignore[no-any-return]
