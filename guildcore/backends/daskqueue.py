"""The tasks a Dask pool holds: its queue, and how each one ends.

This module covers ``TaskBook``, the part of ``DaskPool`` that does what the
supervisor does with tasks whatever runs them: a queue in priority order
(FIFO within one priority; a retried task goes before the rest of its
priority, or in submission order under ``pool.queue_strategy: fifo``), a task's future started or found cancelled as it leaves the
queue, the decision to retry a task or fail it (``retries``,
``pool.quarantine_after``), and the one way each task ends: DONE, FAILED
with its cause, or CANCELLED. It mirrors the supervisor's own code for the
same (``engine.supervisor``), which keeps it private to its owner loop.

It does not cover where tasks run (``daskpool``).

Ownership: the pool's owner thread alone calls these methods.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from guildcore.engine.states import TaskState
from guildcore.engine.task import ENDED, Task
from guildcore.errors import GuildError, PoolBroken, TaskCancelled
from guildcore.metrics.recorder import error_name

if TYPE_CHECKING:
    from guildcore.metrics.recorder import RunRecorder

log = logging.getLogger("guildcore.dask")


@dataclasses.dataclass
class DaskCounters:
    """The supervisor's counters, as a Dask pool can know them."""

    submitted: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    agents_started: int = 0  # workers seen: at start, plus each one a nanny replaced
    agents_died: int = 0
    agents_replaced_memory: int = 0
    agents_replaced_timeout: int = 0


class TaskBook:
    """Queue and endings of a pool's tasks; ``_task_ended`` is the pool's hook after each end."""

    def __init__(self, quarantine_after: int, recorder: RunRecorder | None = None, *, fifo: bool = False) -> None:
        self._quarantine_after = quarantine_after
        self._fifo = fifo  # pool.queue_strategy fifo: submission order, whatever the priority
        self.recorder = recorder  # metrics; None when monitoring.metrics is off
        self._queue: list[tuple[int, int, Task]] = []
        self._seq = itertools.count()
        self._front_seq = itertools.count(-1, -1)
        self.counters = DaskCounters()
        self._stopping = False
        self._kill_on_stop = False
        self._broken: PoolBroken | None = None

    def _rank(self, task: Task) -> int:
        """Where a task queues: by priority (lower first), or all alike under fifo."""
        return 0 if self._fifo else task.priority

    def _task_ended(self, task: Task) -> None:
        """Called after each task ends, whichever way."""

    def _cancel_queued(self, *, streams_only: bool = False) -> None:
        """Cancel what waits in the queue (only streams: their consumer may be the thread stopping)."""
        if streams_only:
            for _p, _s, task in self._queue:
                if task.stream is not None:
                    self._finish_cancelled(task)
            return
        while self._queue:
            _p, _s, task = heapq.heappop(self._queue)
            self._finish_cancelled(task)

    def _enqueue(self, task: Task) -> None:
        if self._broken is not None:
            self._finish_error(task, self._broken)
            return
        if self._stopping and self._kill_on_stop:
            self._finish_cancelled(task)
            return
        self.counters.submitted += 1
        if self.recorder is not None:
            self.recorder.task_queued(task.id, task.fn_name, task.n_items, time.monotonic())
        heapq.heappush(self._queue, (self._rank(task), next(self._seq), task))

    def _requeue(self, task: Task) -> None:
        heapq.heappush(self._queue, (self._rank(task), next(self._front_seq), task))

    def _pop_task(self) -> Task | None:
        while self._queue:
            _prio, _seq, task = heapq.heappop(self._queue)
            if task.state in ENDED:
                continue
            if not task.future_started:
                if not task.future.set_running_or_notify_cancel():
                    task.set_state(TaskState.CANCELLED)
                    self.counters.cancelled += 1
                    self._task_done(task)
                    continue
                task.future_started = True
            return task
        return None

    def _retry_or_fail(self, task: Task, err: BaseException, *, agent_killed: bool) -> None:
        if agent_killed:
            task.agent_kills += 1
        quarantined = task.agent_kills >= self._quarantine_after
        if task.attempts <= task.retries and not quarantined and not self._stopping and task.stream is None:
            self.counters.retried += 1
            if self.recorder is not None:
                self.recorder.task_retried(task.id, type(err).__name__, time.monotonic())
            task.set_state(TaskState.RETRYING)
            self._requeue(task)
            return
        if quarantined and task.attempts <= task.retries and isinstance(err, GuildError):
            err.args = (
                f"{err.args[0]}; task {task.id} was quarantined after killing agents {task.agent_kills} times "
                "(pool.quarantine_after) and is not retried again",
            )
        self._finish_error(task, err)

    def _finish_result(self, task: Task, value: Any) -> None:
        task.set_state(TaskState.DONE)
        self.counters.done += 1
        if task.stream is not None:
            task.stream.finish(None)
        if not task.future.done():
            task.future.set_result(value)
        self._task_done(task)

    def _finish_error(self, task: Task, err: BaseException) -> None:
        if task.state in ENDED:
            return
        task.set_state(TaskState.FAILED)
        self.counters.failed += 1
        if task.stream is not None:
            task.stream.finish(err)
        _set_exception(task.future, err)
        self._task_done(task)

    def _finish_cancelled(self, task: Task) -> None:
        if task.state in ENDED:
            return
        task.set_state(TaskState.CANCELLED)
        self.counters.cancelled += 1
        err = TaskCancelled(f"task {task.id} ({task.fn_name}) was cancelled", task_id=task.id, fn=task.fn_name)
        if task.stream is not None:
            task.stream.finish(err)
        if not task.future.cancel():
            _set_exception(task.future, err)
        self._task_done(task)

    def _task_done(self, task: Task) -> None:
        task.payload = None
        if self.recorder is not None:
            failed = error_name(task.future) if task.state is TaskState.FAILED else None
            self.recorder.task_finished(task.id, task.state.name.lower(), failed, time.monotonic())
        if task.on_done is not None:
            try:
                task.on_done(task)
            except Exception:
                log.exception("task %d completion hook failed", task.id)
        self._task_ended(task)


def _set_exception(future: Future[Any], err: BaseException) -> None:
    if future.done():
        return
    if not future.running() and not future.set_running_or_notify_cancel():
        return
    try:
        future.set_exception(err)
    except Exception:
        pass
