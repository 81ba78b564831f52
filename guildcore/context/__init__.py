"""Shared read-only context: written once by the supervisor, mapped by agents.

Data flow::

    supervisor                                  agent (one per OS process)
    ----------                                  --------------------------
    g.share(mapping)
      ContextRegistry.share ── write_context ──> /dev/shm/guild_{pid}_{gen}_{rand}
                                                 (header, index, entries, blobs, buffers)
    dispatch task:                               run task:
      ref = registry.acquire(task_id) ── ref ──>   token = enter_task_context(ref)  # attach once per gen
                                                   fn(...)  # guildcore.context() -> its overlay
                                                   exit_task_context(token)
    task ended:
      registry.release(task_id)  (unlinks a superseded generation nobody holds)
    shutdown: registry.close()                   shutdown: detach_all()
    start:    sweep_stale()  (segments of dead supervisors)

This package covers the segment layout (``layout``), the writer and handle
(``writer``), the reader, its per-process cache and the copy-on-write overlay
(``view``), generations and cleanup (``registry``), and the running task's
context slot (``current``). It does not decide when tasks run or end: the
engine calls in at the points above.
"""

from __future__ import annotations

import sys

# ``import guildcore`` imports this package, so only the cheap task-side slot
# loads here; the other names load their module on first use (PEP 562).
# Invariant: ``current`` is bound after ``guildcore.context.current`` is
# imported, so the name is the function, not the submodule.
from guildcore.context.current import (
    current,
    enter_task_context,
    exit_task_context,
    reset_current,
    set_current,
    task_scope,
)

TYPE_CHECKING = False  # typing costs ~10 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from guildcore.context.ref import CONTEXT_REF_EXT, ContextRef
    from guildcore.context.registry import ContextRegistry, sweep_stale
    from guildcore.context.view import ContextView, TaskContext, attach, detach, detach_all
    from guildcore.context.writer import ContextHandle, write_context

_LAZY = {  # public name -> the submodule that defines it
    "CONTEXT_REF_EXT": "ref",
    "ContextRef": "ref",
    "ContextRegistry": "registry",
    "sweep_stale": "registry",
    "ContextView": "view",
    "TaskContext": "view",
    "attach": "view",
    "detach": "view",
    "detach_all": "view",
    "ContextHandle": "writer",
    "write_context": "writer",
}

__all__ = [
    "CONTEXT_REF_EXT",
    "ContextHandle",
    "ContextRef",
    "ContextRegistry",
    "ContextView",
    "TaskContext",
    "attach",
    "current",
    "detach",
    "detach_all",
    "enter_task_context",
    "exit_task_context",
    "reset_current",
    "set_current",
    "sweep_stale",
    "task_scope",
    "write_context",
]


def __getattr__(name: str) -> object:
    submodule = _LAZY.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = f"{__name__}.{submodule}"
    __import__(module)  # not importlib.import_module: importlib costs ~0.3 ms of import
    value = getattr(sys.modules[module], name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
