"""Running tasks in the supervisor's own process: the one in-process runner.

This module covers applying a function to a task's payload here rather than
in an agent, for every caller that does so:

- ``apply(fn, mode, payload)``: the bare call, per task mode (a call, a map
  chunk, a starmap chunk); raises what ``fn`` raises;
- ``run_chunk(fn, mode, items, ctx_ref)``: a map or starmap chunk of items
  inside the task's context scope (``guildcore.context()`` answers), for
  the Guild's inline map path;
- ``run_task(task)``: one supervisor task, never raising: ``(True, value)``
  or ``(False, exception)`` with the traceback as its ``__cause__``, as an
  agent would report it; ``BaseException`` included (a task's ``sys.exit()``
  fails that task, as it does in an agent);
- ``InlineRunner``: the thread the supervisor hands tasks to when it runs
  them inline (``parallelization.strategy: sequential``, or agents cannot
  start), so the owner loop keeps reading frames, sampling memory and
  answering callers while a task runs;
- ``start_stream(task, on_end)``: an inline stream, driven by its consumer.

It does not cover choosing to run inline (``routing``, ``machine``) nor
agents' own runner (``agent``, which must stay import-light).
"""

from __future__ import annotations

import itertools
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator

from guildcore.context import task_scope
from guildcore.engine.agent import MODE_CALL, MODE_MAP, MODE_STARMAP, MODE_STREAM
from guildcore.engine.functions import FunctionCache
from guildcore.errors import RemoteTraceback, SerializationError

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.context import ContextRef
    from guildcore.engine.task import Task

_functions = FunctionCache()


def apply(fn: Callable[..., Any], mode: int, payload: Any) -> Any:
    """``fn`` over ``payload`` as ``mode`` says; raises what ``fn`` raises."""
    if mode == MODE_CALL:
        args, kwargs = payload
        return fn(*args, **kwargs)
    if mode == MODE_MAP:
        return list(map(fn, payload))
    if mode == MODE_STARMAP:
        return list(itertools.starmap(fn, payload))
    raise SerializationError(f"unknown task mode {mode}")


def run_chunk(fn: Callable[..., Any], mode: int, items: Iterable[Any], ctx_ref: ContextRef | None = None) -> list[Any]:
    """``[fn(x) for x in items]`` (``MODE_MAP``) or ``fn(*x)`` (``MODE_STARMAP``) in ``ctx_ref``'s scope.

    Raises what ``fn`` raises, at the first item that fails; ``items`` may be
    an iterator (an ``islice`` of a longer one), read once.
    """
    with task_scope(ctx_ref):
        return apply(fn, mode, items)  # type: ignore[no-any-return]


def run_task(task: Task) -> tuple[bool, Any]:
    """(True, result) or (False, exception); never raises."""
    try:
        fn = _functions.get(task.spec)
        with task_scope(task.ctx_ref):
            return True, apply(fn, task.mode, task.payload)
    except BaseException as exc:  # SystemExit in a task fails the task, as in an agent
        exc.__cause__ = RemoteTraceback("".join(traceback.format_exception(exc)))
        return False, exc


def start_stream(task: Task, on_end: Callable[[BaseException | None, bool], None]) -> None:
    """Hand an inline stream's generator to its consumer; ``on_end(error, cancelled)`` when it ends.

    The generator is made and driven in the consumer's thread, on its first
    ``next()``: nothing of the task runs on the supervisor's threads.
    """
    assert task.stream is not None and task.mode == MODE_STREAM
    args, kwargs = task.payload
    spec, ctx_ref = task.spec, task.ctx_ref

    def produce() -> Iterator[Any]:
        fn = _functions.get(spec)
        with task_scope(ctx_ref):
            gen = iter(fn(*args, **kwargs))
        while True:
            with task_scope(ctx_ref):  # each step sees the task's context
                try:
                    value = next(gen)
                except StopIteration:
                    return
            yield value

    if task.stream.ring is not None:
        task.stream.ring.unlink()  # no agent writes to it; Ownership: the one unlink
    task.stream.run_inline(produce(), on_end)


class InlineRunner:
    """One thread that runs tasks handed to it, one at a time, off the owner loop.

    ``done(task, ok, value)`` is called from this thread when a task ends;
    the supervisor posts it to its inbox. ``stop`` lets the thread finish
    the task it runs and end.
    """

    def __init__(self, done: Callable[[Task, bool, Any], None]) -> None:
        self._done = done
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="guild-inline", daemon=True)
        self._thread.start()

    def run(self, task: Task) -> None:
        self._tasks.put(task)

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            ok, value = run_task(task)
            try:
                self._done(task, ok, value)
            except BaseException:  # the supervisor is gone; nothing is left to tell
                return

    def stop(self, timeout_s: float | None = None) -> bool:
        """Ask the thread to end after its current task; False if it still runs after ``timeout_s``."""
        self._tasks.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
