"""Agent and task states, and the only transitions allowed between them.

A state change goes through ``check_transition(what, current, new, table)`` so an
impossible move (a DONE task running again, a DEAD agent becoming IDLE) is
caught where it happens instead of corrupting pool state silently.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class AgentState(enum.Enum):
    STARTING = "STARTING"  # process started, READY not yet received
    IDLE = "IDLE"  # alive, holds no task
    BUSY = "BUSY"  # holds one running task and maybe prefetched ones
    DRAINING = "DRAINING"  # takes no new task; stops once it holds none
    STOPPED = "STOPPED"  # exited after SHUTDOWN
    DEAD = "DEAD"  # exited on its own or was killed


class TaskState(enum.Enum):
    PENDING = "PENDING"  # queued in the supervisor
    SENT = "SENT"  # sent to an agent that has not begun it (starting, or it runs another task)
    RUNNING = "RUNNING"  # begun: its agent is ready and runs it (or inline); its clock runs
    RETRYING = "RETRYING"  # failed in a way worth another try: queued again, or split in parts
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


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


TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import TypeVar

    S = TypeVar("S", AgentState, TaskState)


def check_transition(what: str, current: S, new: S, table: Mapping[S, frozenset[S]]) -> None:
    if new is current:
        return
    if new not in table[current]:
        raise StateError(f"{what}: illegal transition {current.name} -> {new.name}")
