"""``g.stream()`` with ``streaming.enabled: false``: the generator runs to its end in one task.

Covers the task function (``run_to_list``: resolve the caller's generator
function in the agent, run it, return every value in one list) and the
iterator the caller holds (``CollectedStream``: the same face as a stream,
its values arriving at once when the task ends). Does not cover streaming
itself (``stream``, ``iterators``).

Why a plain call and not a refusal: the setting says how values travel,
not whether a program works; code written with ``g.stream()`` keeps working,
with every value held in the agent until the end (its memory limit applies,
as for any result).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from guildcore.engine.functions import FnSpec, FunctionCache
from guildcore.engine.iterators import StreamIterator

R = TypeVar("R")

_functions = FunctionCache()


def run_to_list(spec: FnSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """Run the generator function named by ``spec`` to its end (in an agent, or inline)."""
    return list(_functions.get(spec)(*args, **kwargs))


class CollectedStream(StreamIterator[R]):
    """A stream's face over one task's list: iterate, ``close()``, ``with``.

    ``close()`` cancels the task if no agent has begun it; a task already
    running completes, and its values are dropped.
    """

    def __init__(self, future: Future[list[R]]) -> None:  # no StreamState: nothing streams
        self.future = future
        self._values: Iterator[R] | None = None

    def __next__(self) -> R:
        if self._values is None:
            self._values = iter(self.future.result())
        return next(self._values)

    def close(self) -> None:
        self.future.cancel()
        self._values = iter(())

    def __del__(self) -> None:
        self.future.cancel()
