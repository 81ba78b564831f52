"""Agent and task states, and the only transitions allowed between them.

A state change goes through ``check_transition(what, current, new, table)`` so an
impossible move (a DONE task running again, a DEAD agent becoming IDLE) is
caught where it happens instead of corrupting pool state silently.
"""

from __future__ import annotations

from collections.abc import Mapping

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import ClassVar, TypeVar


class _State:
    """A named state, compared by identity. Not an ``enum.Enum``: two enums
    cost ~0.5 ms at import, on every script's way to its first result, and
    the states need only a name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __reduce__(self) -> str:
        return f"{type(self).__name__}.{self.name}"  # pickled by name: the same object back


class AgentState(_State):
    __slots__ = ()
    STARTING: ClassVar[AgentState]  # process started, READY not yet received
    IDLE: ClassVar[AgentState]  # alive, holds no task
    BUSY: ClassVar[AgentState]  # holds one running task and maybe prefetched ones
    DRAINING: ClassVar[AgentState]  # takes no new task; stops once it holds none
    STOPPED: ClassVar[AgentState]  # exited after SHUTDOWN
    DEAD: ClassVar[AgentState]  # exited on its own or was killed


class TaskState(_State):
    __slots__ = ()
    PENDING: ClassVar[TaskState]  # queued in the supervisor
    SENT: ClassVar[TaskState]  # sent to an agent that has not begun it (starting, or it runs another task)
    RUNNING: ClassVar[TaskState]  # begun: its agent is ready and runs it (or inline); its clock runs
    RETRYING: ClassVar[TaskState]  # failed in a way worth another try: queued again, or split in parts
    DONE: ClassVar[TaskState]
    FAILED: ClassVar[TaskState]
    CANCELLED: ClassVar[TaskState]


for _name in ("STARTING", "IDLE", "BUSY", "DRAINING", "STOPPED", "DEAD"):
    setattr(AgentState, _name, AgentState(_name))
for _name in ("PENDING", "SENT", "RUNNING", "RETRYING", "DONE", "FAILED", "CANCELLED"):
    setattr(TaskState, _name, TaskState(_name))


_ALIVE = {AgentState.STARTING, AgentState.IDLE, AgentState.BUSY, AgentState.DRAINING}

AGENT_TRANSITIONS: Mapping[AgentState, frozenset[AgentState]] = {
    AgentState.STARTING: frozenset({AgentState.IDLE, AgentState.BUSY, AgentState.DRAINING, AgentState.DEAD}),
    AgentState.IDLE: frozenset({AgentState.BUSY, AgentState.DRAINING, AgentState.DEAD}),
    AgentState.BUSY: frozenset({AgentState.IDLE, AgentState.DRAINING, AgentState.DEAD}),
    AgentState.DRAINING: frozenset({AgentState.STOPPED, AgentState.DEAD}),
    AgentState.STOPPED: frozenset(),
    AgentState.DEAD: frozenset(),
}

TASK_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.SENT, TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED}),
    # SENT -> PENDING: withdrawn for an idle agent, or its agent stopped before it began.
    TaskState.SENT: frozenset({TaskState.RUNNING, TaskState.PENDING, TaskState.FAILED, TaskState.CANCELLED}),
    # RUNNING -> PENDING: withdrawn in the instant its predecessor finished (the
    # agent gave it back before it began; the supervisor had inferred it began).
    TaskState.RUNNING: frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.RETRYING, TaskState.PENDING}),
    # RETRYING -> DONE / FAILED: a chunk split in parts ends with its parts.
    TaskState.RETRYING: frozenset({TaskState.SENT, TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED, TaskState.DONE}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


def is_alive(state: AgentState) -> bool:
    return state in _ALIVE


class StateError(AssertionError):
    """An impossible state transition: a bug in guildcore, never user error."""


if TYPE_CHECKING:
    S = TypeVar("S", AgentState, TaskState)


def check_transition(what: str, current: S, new: S, table: Mapping[S, frozenset[S]]) -> None:
    if new is current:
        return
    if new not in table[current]:
        raise StateError(f"{what}: illegal transition {current.name} -> {new.name}")
