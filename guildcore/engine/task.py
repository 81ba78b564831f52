"""The task record: one submitted call, or one chunk of a map.

This module covers the ``Task`` dataclass the owner loop keeps per unit of
work (what to run, its future, its limits, its state), the states a task
ends in (``ENDED``) and its hard time budget (``budget``). It does not
cover queueing, dispatch or finishing a task (``supervisor``), nor the
errors a task ends with when its agent fails (``postmortem``).

Ownership: a task is built by a caller thread (``Guild``), then belongs to
the owner thread from ``Supervisor.submit`` on; callers only read its
``future`` (and ``stream``, whose consumer side is theirs).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from guildcore.engine.states import TASK_TRANSITIONS, TaskState, check_transition
from guildcore.engine.stream import StreamState


@dataclass(eq=False)
class Task:
    """One submitted unit of work (a call, or a chunk of a map)."""

    id: int
    fn_name: str
    spec: str | bytes
    mode: int
    payload: Any
    future: Future[Any]
    priority: int = 0
    timeout_s: float | None = None
    retries: int = 0
    n_items: int = 1
    ctx_ref: Any = None
    on_done: Callable[[Task], None] | None = None
    raw_result: bool = False  # submit(stream_result=True): the future gets a shmbuf.ResultStream
    stream: StreamState | None = None
    state: TaskState = TaskState.PENDING
    attempts: int = 0
    agent_kills: int = 0
    withdrawing: bool = False  # asked back from the agent holding it, not begun (work stealing)
    future_started: bool = False
    started_at: float | None = None
    compute_s: float | None = None  # the agent's own time for a map chunk (routing)

    def set_state(self, new: TaskState) -> None:
        check_transition(f"task {self.id}", self.state, new, TASK_TRANSITIONS)
        self.state = new

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.fn_name} {self.state.name}>"


ENDED = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


def budget(task: Task) -> float:
    """The supervisor's hard time budget of a task: per item for map chunks."""
    assert task.timeout_s is not None
    return task.timeout_s * max(1, task.n_items)
