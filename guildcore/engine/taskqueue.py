"""The supervisor's queue of tasks waiting for an agent.

This module covers the order tasks leave the queue in, per
``pool.queue_strategy``:

- ``priority`` (the default): lowest ``priority`` first, submission order
  within one priority (a heap of ``(priority, seq, task)``);
- ``fifo``: submission order, whatever the priority (a deque). For a
  caller that passes priorities it wants ignored, such as a library's.

Either way a task that goes back (a retry, a part of a split chunk, a task
an agent gave back or never began) goes to the front: it was submitted
before anything still queued, and a retry should not wait behind the rest of
a long batch. It does not cover what is sent where (``dispatch``) nor when a
task is put back (``machine``).

Ownership: the owner thread alone.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from guildcore.engine.task import Task
from guildcore.errors import ConfigError

PRIORITY = "priority"
FIFO = "fifo"
STRATEGIES = (PRIORITY, FIFO)


class TaskQueue:
    """Tasks waiting to be sent, in ``strategy`` order; put-backs go first."""

    def __init__(self, strategy: str = PRIORITY) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown queue strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}",
                key="pool.queue_strategy",
                value=strategy,
            )
        self.fifo = strategy == FIFO
        self._heap: list[tuple[int, int, Task]] = []
        self._deque: deque[Task] = deque()
        self._seq = itertools.count()
        self._front_seq = itertools.count(-1, -1)

    def __len__(self) -> int:
        return len(self._deque) if self.fifo else len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._deque) if self.fifo else bool(self._heap)

    def push(self, task: Task) -> None:
        if self.fifo:
            self._deque.append(task)
        else:
            heapq.heappush(self._heap, (task.priority, next(self._seq), task))

    def push_front(self, task: Task) -> None:
        """Put back a task that was taken: it leaves before anything queued after it."""
        if self.fifo:
            self._deque.appendleft(task)
        else:
            # Negative sequence numbers sort before every submission of the
            # same priority; a higher-priority task still goes first.
            heapq.heappush(self._heap, (task.priority, next(self._front_seq), task))

    def pop(self) -> Task:
        """The next task; the queue must not be empty."""
        if self.fifo:
            return self._deque.popleft()
        return heapq.heappop(self._heap)[2]

    def peek(self) -> Task:
        """The next task without taking it; the queue must not be empty."""
        return self._deque[0] if self.fifo else self._heap[0][2]

    def drain(self) -> Iterator[Task]:
        """Take every task, in order."""
        while self:
            yield self.pop()

    def __iter__(self) -> Iterator[Task]:
        """Every queued task, in no particular order (the queue is not changed)."""
        if self.fifo:
            return iter(list(self._deque))
        return iter([entry[2] for entry in self._heap])
