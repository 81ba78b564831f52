"""Running a task in the supervisor itself: the sequential fallback.

Used when agents cannot be started at all (or parallelization is disabled):
tasks still run, one by one, instead of failing.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from guildcore.context import task_scope
from guildcore.engine.agent import MODE_CALL, MODE_MAP, MODE_STARMAP, MODE_STREAM
from guildcore.engine.functions import FunctionCache
from guildcore.errors import RemoteTraceback, SerializationError

if TYPE_CHECKING:
    from guildcore.engine.task import Task

_functions = FunctionCache()


def run_inline(task: Task) -> tuple[bool, Any]:
    """(True, result) or (False, exception); never raises."""
    try:
        with task_scope(task.ctx_ref):
            return _run(task)
    except Exception as exc:
        exc.__cause__ = RemoteTraceback("".join(traceback.format_exception(exc)))
        return False, exc


def _run(task: Task) -> tuple[bool, Any]:
    fn = _functions.get(task.spec)
    payload = task.payload
    if task.mode == MODE_CALL:
        args, kwargs = payload
        return True, fn(*args, **kwargs)
    if task.mode == MODE_MAP:
        return True, [fn(item) for item in payload]
    if task.mode == MODE_STARMAP:
        return True, [fn(*args) for args in payload]
    if task.mode == MODE_STREAM and task.stream is not None:
        args, kwargs = payload
        task.stream.run_inline(fn(*args, **kwargs))
        return True, None
    raise SerializationError(f"unknown task mode {task.mode}")
