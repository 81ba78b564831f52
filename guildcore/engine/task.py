"""The task record: one submitted call, or one chunk of a map.

This module covers the ``Task`` record the owner loop keeps per unit of
work (what to run, its future, its limits, its state), the states a task
ends in (``ENDED``) and its hard time budget (``budget``). It does not
cover queueing, dispatch or finishing a task (``machine``), nor the
errors a task ends with when its agent fails (``postmortem``).

Ownership: a task is built by a caller thread (``Guild``), then belongs to
the owner thread from ``Supervisor.submit`` on; callers only read its
``future`` (and ``stream``, whose consumer side is theirs).

A map chunk whose agent fails is split in two *parts* (``retry.split``):
each part is a task of its own, with ``parent`` pointing at the chunk and
``part`` its index there, and a private future no caller sees. The chunk
ends when its parts have: with their results concatenated, or with the
first failure in item order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from guildcore.engine.states import TASK_TRANSITIONS, TaskState, check_transition

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.engine.stream import StreamState


class Task:
    """One submitted unit of work (a call, or a chunk of a map).

    A plain class with its ``__init__`` written out (not a dataclass: a
    script's first result would wait ~1 ms for it to be built at import);
    equal only to itself, as with ``eq=False``.
    """

    id: int
    fn_name: str
    spec: str | bytes
    mode: int
    payload: Any
    future: Future[Any]
    priority: int
    timeout_s: float | None
    retries: int
    n_items: int
    ctx_ref: Any
    on_done: Callable[[Task], None] | None
    raw_result: bool  # submit(stream_result=True): the future gets a shmbuf.ResultStream
    stream: StreamState | None
    state: TaskState
    attempts: int  # times sent to an agent (or run inline); a withdrawn send does not count
    agent_kills: int  # agents that died running it (quarantine counts these)
    withdrawing: bool  # asked back from the agent holding it, not begun (work stealing)
    future_started: bool
    agent_id: int | None  # the agent holding it while SENT or RUNNING (owner thread)
    started_at: float | None  # when it began (RUNNING): its clock for timeouts
    compute_s: float | None  # the agent's own time for a map chunk (routing)
    parent: Task | None  # the chunk this task is a part of, after a split
    part: int  # its index among the parent's parts
    parts: list[Any] | None  # a split chunk: each part's result list, or _PartFailed, or None
    parts_left: int  # a split chunk: parts not yet ended

    def __init__(
        self,
        id: int,
        fn_name: str,
        spec: str | bytes,
        mode: int,
        payload: Any,
        future: Future[Any],
        priority: int = 0,
        timeout_s: float | None = None,
        retries: int = 0,
        n_items: int = 1,
        ctx_ref: Any = None,
        on_done: Callable[[Task], None] | None = None,
        raw_result: bool = False,
        stream: StreamState | None = None,
        state: TaskState = TaskState.PENDING,
        attempts: int = 0,
        agent_kills: int = 0,
        withdrawing: bool = False,
        future_started: bool = False,
        agent_id: int | None = None,
        started_at: float | None = None,
        compute_s: float | None = None,
        parent: Task | None = None,
        part: int = 0,
        parts: list[Any] | None = None,
        parts_left: int = 0,
    ) -> None:
        self.id = id
        self.fn_name = fn_name
        self.spec = spec
        self.mode = mode
        self.payload = payload
        self.future = future
        self.priority = priority
        self.timeout_s = timeout_s
        self.retries = retries
        self.n_items = n_items
        self.ctx_ref = ctx_ref
        self.on_done = on_done
        self.raw_result = raw_result
        self.stream = stream
        self.state = state
        self.attempts = attempts
        self.agent_kills = agent_kills
        self.withdrawing = withdrawing
        self.future_started = future_started
        self.agent_id = agent_id
        self.started_at = started_at
        self.compute_s = compute_s
        self.parent = parent
        self.part = part
        self.parts = parts
        self.parts_left = parts_left

    def set_state(self, new: TaskState) -> None:
        check_transition(f"task {self.id}", self.state, new, TASK_TRANSITIONS)
        self.state = new

    def root(self) -> Task:
        """The task a caller submitted: itself, or the chunk it is a part of."""
        task = self
        while task.parent is not None:
            task = task.parent
        return task

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.fn_name} {self.state.name}>"


ENDED = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


def budget(task: Task) -> float:
    """The supervisor's hard time budget of a task: per item for map chunks."""
    assert task.timeout_s is not None
    return task.timeout_s * max(1, task.n_items)
