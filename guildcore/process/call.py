"""What agents run for a process step: one adapter per step function.

A step's function receives its inputs by name, its map item (first or by
name), and values too big to copy per call out of shared memory; it returns
its value, and the runner wants to know which agent ran it. An adapter does
that binding around the user's function, in the agent.

Each function gets its own adapter, named after it: the attribute
``mymod:step_square`` of this module (dots become ``/``, since references
split on dots) is built on first lookup by ``__getattr__``, in the caller
and again in each agent, so adapters travel by reference like any
module-level function. One adapter per function, rather than one for all,
keeps the router's measurements per function: a tiny step routed inline
must not send a slow step's items inline too.

Calls (plain tuples, small):

    single step:   (kwargs, shared)                 -> (value, pid)
    map item:      (item, param, kwargs, shared)    -> (value, pid)

``param`` is None when the item is the first positional argument;
``shared`` maps parameters to ``ContextRef``s of one-value segments
(``{"v": value}``) the runner wrote for big inputs.

Imported by agents: it imports nothing heavy.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["adapter_for", "attribute_of"]

SHARED_KEY = "v"  # the one key of a segment holding a shared input


def attribute_of(ref: str) -> str:
    """The attribute of this module that names the adapter of ``ref`` (``module:qualname``)."""
    return ref.replace(".", "/")


def adapter_for(ref: str) -> Callable[[tuple[Any, ...]], tuple[Any, int]]:
    """The adapter of the function ``ref``, the same object on every lookup in this process."""
    adapter: Callable[[tuple[Any, ...]], tuple[Any, int]] = getattr(sys.modules[__name__], attribute_of(ref))
    return adapter


def _build(ref: str, name: str) -> Callable[[tuple[Any, ...]], tuple[Any, int]]:
    fn: list[Callable[..., Any]] = []  # resolved on first call, once per process

    def adapter(call: tuple[Any, ...]) -> tuple[Any, int]:
        if not fn:
            from guildcore.engine.functions import resolve_reference

            fn.append(resolve_reference(ref))
        kwargs, shared = call[-2], call[-1]
        if shared:
            kwargs = dict(kwargs)
            for param, ctx in shared.items():
                value = ctx[SHARED_KEY]
                kwargs[param] = bytes(value) if isinstance(value, memoryview) else value
        if len(call) == 2:
            return fn[0](**kwargs), os.getpid()
        item, param = call[0], call[1]
        if param is None:
            return fn[0](item, **kwargs), os.getpid()
        kwargs = dict(kwargs)
        kwargs[param] = item
        return fn[0](**kwargs), os.getpid()

    adapter.__module__ = __name__
    adapter.__name__ = adapter.__qualname__ = name
    return adapter


def __getattr__(name: str) -> Any:
    if ":" not in name:  # __path__, __spec__ and the like: not adapters
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Invariant: one adapter object per name, even when two threads ask at
    # once (dict.setdefault is atomic): a reference must resolve to the very
    # object it was made from, or the function would travel by value.
    return globals().setdefault(name, _build(name.replace("/", "."), name))
