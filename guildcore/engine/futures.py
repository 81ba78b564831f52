"""``GuildExecutor``: a ``concurrent.futures.Executor`` over a ``Guild``.

This module covers the stdlib face of the engine: ``ProcessPoolExecutor``'s
constructor and behaviour (``max_workers``, ``mp_context``, ``initializer``,
``initargs``, ``max_tasks_per_child``; ``submit``, ``map`` with
``chunksize`` and ``timeout``, ``shutdown``), so code written for the stdlib
runs unchanged. It translates those arguments into guildcore settings and
hands the work to a ``Guild``.

It does not cover guildcore's own API (``executor.Guild``) nor anything
after submission (``supervisor``). One deliberate difference from the
stdlib: when an agent dies, only the futures it held fail (``AgentDied``, a
``BrokenProcessPool``); the executor stays usable, where
``ProcessPoolExecutor`` breaks for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future

from guildcore.engine.agent import MODE_CALL, MODE_MAP, MODE_STARMAP
from guildcore.engine.executor import Guild
from guildcore.engine.task import Task
from guildcore.errors import ConfigError, ConfigTypeError, SerializationError

# Neither typing nor concurrent.futures.process (multiprocessing with its
# connections and queues, ~15 ms) is needed before a failure is reported:
# a GuildExecutor's first result imports what a Guild's does.
TYPE_CHECKING = False  # mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, TypeVar

    R = TypeVar("R")

class GuildExecutor(Executor):
    """A ``ProcessPoolExecutor`` that survives its workers' deaths.

    Same constructor and behaviour as ``concurrent.futures.ProcessPoolExecutor``
    (``max_workers``, ``mp_context``, ``initializer``, ``initargs``,
    ``max_tasks_per_child``); tasks have no timeout unless configured, as in
    the stdlib. Extra keyword arguments override guildcore settings.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        **overrides: Any,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ConfigError("max_workers must be greater than 0", key="max_workers", value=max_workers)
        if initializer is not None and not callable(initializer):
            raise ConfigTypeError("initializer must be a callable", key="initializer", value=initializer)
        if max_tasks_per_child is not None and (not isinstance(max_tasks_per_child, int) or max_tasks_per_child <= 0):
            raise ConfigError("max_tasks_per_child must be >= 1", key="max_tasks_per_child", value=max_tasks_per_child)
        pool = dict(overrides.pop("pool", {}) or {})
        limits = dict(overrides.pop("limits", {}) or {})
        if max_workers is not None:
            pool["max_agents"] = max_workers
            pool.setdefault("min_agents", min(pool.get("min_agents", 1), max_workers))
        if mp_context is not None:
            pool["start_method"] = mp_context.get_start_method()
        if max_tasks_per_child is not None:
            pool["max_tasks_per_agent"] = max_tasks_per_child
        # Submitted work should use every worker at once, as with the stdlib.
        pool.setdefault("scale_up_queue_length", 1)
        limits.setdefault("timeout", None)
        self._guild = Guild(initializer=initializer, initargs=initargs, pool=pool, limits=limits, **overrides)

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        self._check_open()
        task = self._guild._make_task(fn, MODE_CALL, [args, kwargs], future_type=StdlibFuture)
        self._guild._submit([task])
        return task.future

    def map(
        self, fn: Callable[..., R], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[R]:
        if chunksize < 1:
            raise ConfigError("chunksize must be >= 1.", key="chunksize", value=chunksize)
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        self._check_open()
        if len(iterables) == 1:
            # One iterable: items travel as themselves, not as 1-tuples, which
            # the codec would encode one ext each (about 10x slower on ints).
            items: list[Any] = list(iterables[0])
            tasks = self._guild._chunk_tasks(fn, items, chunksize, MODE_MAP, future_type=StdlibFuture)
        else:
            items = list(zip(*iterables, strict=False))
            tasks = self._guild._chunk_tasks(fn, items, chunksize, MODE_STARMAP, future_type=StdlibFuture)
        # The clock starts with the call, as in the stdlib, not at the first next().
        end = None if timeout is None else time.monotonic() + timeout
        self._guild._submit(tasks)
        return _chained_results(tasks, end)

    def _check_open(self) -> None:
        """Refuse work as the stdlib does: a ShutdownError is a RuntimeError, with its words."""
        self._guild._check_open(after_shutdown="cannot schedule new futures after shutdown")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._guild.shutdown(wait=wait, cancel_futures=cancel_futures)

    def stats(self) -> dict[str, Any]:
        return self._guild.stats()


class StdlibFuture(Future["Any"]):  # a string: Any exists for the type checker only
    """A future whose failures have the types ``ProcessPoolExecutor`` gives them.

    guildcore's errors already subclass the stdlib's where the meaning is
    the same (``AgentDied`` is a ``BrokenProcessPool``, a pickling failure
    is an instance of the error the object raised). Two facts need a
    different type in the stdlib face: arguments or a result that cannot
    be unpickled break a ``ProcessPoolExecutor`` (``BrokenProcessPool``),
    and a ``SystemExit`` raised while a result is pickled reaches the
    caller as ``SystemExit``. ``Guild`` keeps guildcore's own types.
    """

    def set_exception(self, exception: BaseException | None) -> None:
        super().set_exception(_as_stdlib(exception))


def _as_stdlib(err: BaseException | None) -> BaseException | None:
    if not isinstance(err, SerializationError):
        return err
    if err.decoding:
        from concurrent.futures.process import BrokenProcessPool

        return err.also(BrokenProcessPool)
    original = err.original
    if original is not None and not isinstance(original, Exception):
        twin = type(original)(*original.args)
        twin.__cause__ = err
        return twin
    return err


def _chained_results(tasks: list[Task], end: float | None) -> Iterator[Any]:
    try:
        for task in tasks:
            remaining = None if end is None else end - time.monotonic()
            yield from task.future.result(remaining)
    finally:
        for task in tasks:
            task.future.cancel()

