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

from guildcore.context.current import (
    current,
    enter_task_context,
    exit_task_context,
    reset_current,
    set_current,
    task_scope,
)
from guildcore.context.ref import CONTEXT_REF_EXT, ContextRef
from guildcore.context.registry import ContextRegistry, sweep_stale
from guildcore.context.view import ContextView, TaskContext, attach, detach, detach_all
from guildcore.context.writer import ContextHandle, write_context

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
