"""The task-side accessor: which context the running task sees.

The agent sets the slot around each task (``enter_task_context(ref)`` /
``exit_task_context(token)``, or ``with task_scope(ref)``; ``set_current`` /
``reset_current`` for any Mapping, e.g. inline tasks in the supervisor); task code reads it through
``guildcore.context()``, i.e. ``current()``. A ``ContextVar`` keeps the
slot right for threads and asyncio tasks inside one agent.
"""

from __future__ import annotations

import contextlib
import contextvars

TYPE_CHECKING = False  # typing costs ~10 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    from guildcore.context.ref import ContextRef
    from guildcore.context.view import TaskContext

# This module is imported by ``import guildcore`` (it is ``guildcore.context()``),
# so it imports nothing heavy at the top: the reader (``view``, which pulls in
# the codec and msgpack) and ``errors`` (which pulls in concurrent.futures and
# multiprocessing) load inside the functions that need them.

_current: contextvars.ContextVar[Mapping[Any, Any] | None] = contextvars.ContextVar(
    "guildcore_context", default=None
)


def set_current(view: Mapping[Any, Any] | None) -> contextvars.Token[Mapping[Any, Any] | None]:
    """Make ``view`` the context of the code that runs next; returns a token for ``reset_current``."""
    return _current.set(view)


def reset_current(token: contextvars.Token[Mapping[Any, Any] | None]) -> None:
    _current.reset(token)


def current() -> Mapping[Any, Any]:
    """The running task's context (``guildcore.context()``)."""
    view = _current.get()
    if view is None:
        from guildcore._errors import ContextError

        raise ContextError("no context is shared: call g.share(mapping) first")
    return view


@contextlib.contextmanager
def task_scope(ref: ContextRef | None) -> Iterator[TaskContext | None]:
    """Around one task in an agent: attach ``ref`` (cached), give the task a
    fresh copy-on-write overlay as its current context, and clear it after."""
    from guildcore.context.view import attach

    overlay = None if ref is None else attach(ref).overlay()
    token = _current.set(overlay)
    try:
        yield overlay
    finally:
        _current.reset(token)


def enter_task_context(ref: ContextRef) -> contextvars.Token[Mapping[Any, Any] | None]:
    """Agent, before a task: attach ``ref`` (cached per generation) and make a
    fresh copy-on-write overlay the task's context; pass the token to
    ``exit_task_context`` after the task, whatever its outcome."""
    from guildcore.context.view import attach

    return _current.set(attach(ref).overlay())


def exit_task_context(token: contextvars.Token[Mapping[Any, Any] | None]) -> None:
    """Agent, after a task: drop the task's overlay."""
    _current.reset(token)
