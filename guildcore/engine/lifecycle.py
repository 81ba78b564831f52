"""An agent's life as the state machine sees it: states, what it holds, its timers.

This module covers ``AgentRecord``, the machine's whole knowledge of one
agent: its state (STARTING -> IDLE <-> BUSY -> DRAINING -> STOPPED, or
DEAD), the tasks it holds in the order it runs them, its memory readings,
why the supervisor is ending it, and its deadlines; plus the rule that
turns agents dying at start into a verdict (``start_verdict``). It does
not cover the process itself (``pool.AgentHandle``: pid, pipe, sentinel,
owned by the loop) nor what to do with its tasks (``machine``).

Invariant: an agent runs the tasks it was sent strictly in order, so the task
it runs is always the head of ``held``; a RESULT, ERROR or END frame always
finishes that head, and the head has begun once the agent is ``ready``.
"""

from __future__ import annotations

from collections import deque

from guildcore.engine.states import AGENT_TRANSITIONS, AgentState, check_transition
from guildcore.engine.task import Task
from guildcore.errors import format_bytes

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

# Consecutive agents that die before READY before the pool gives up on
# agents: it runs tasks inline (sequential fallback), or breaks when an
# initializer is configured (the likely killer; inline tasks would miss it).
MAX_START_FAILURES = 3

LIVE = frozenset({AgentState.STARTING, AgentState.IDLE, AgentState.BUSY})

# Why the supervisor is ending an agent (``exit_reason[0]``); the post-mortem
# of the task it ran depends on it.
MEMORY = "memory"  # over limits.per_agent in a sample: SIGKILL
MEMORY_REPORTED = "memory-reported"  # MemoryError at its hard cap: it exits by itself
TIMEOUT = "timeout"  # past its task's timeout + grace: SIGTERM, then SIGKILL
MALFORMED = "malformed"  # sent a frame the supervisor could not read: SIGKILL
INITIALIZER = "initializer"  # its initializer raised: it exits by itself
SHUTDOWN = "shutdown"  # shutdown(kill): SIGTERM, then SIGKILL


class AgentRecord:
    """What the machine knows of one agent. Owner thread only."""

    __slots__ = (
        "baseline_private",
        "exit_reason",
        "held",
        "id",
        "idle_since",
        "kill_at",
        "last_private",
        "peak_private",
        "pid",
        "pipe_closed",
        "ready",
        "shutdown_sent",
        "started_at",
        "state",
        "stop_deadline",
        "tasks_done",
    )

    def __init__(self, agent_id: int, now: float) -> None:
        self.id = agent_id
        self.pid: int | None = None  # known once the loop started the process
        self.state = AgentState.STARTING
        self.ready = False  # READY received: initializer done, runs what it holds in order
        self.held: deque[Task] = deque()
        self.tasks_done = 0
        self.started_at = now
        self.idle_since: float | None = None
        self.last_private: int | None = None
        self.peak_private: int | None = None
        self.baseline_private = 0  # private bytes inherited at start (fork only)
        self.exit_reason: tuple[str, Any] | None = None
        self.kill_at: float | None = None  # SIGKILL after a SIGTERM that was not obeyed
        self.stop_deadline: float | None = None  # SIGKILL if still alive after SHUTDOWN
        self.shutdown_sent = False
        self.pipe_closed = False  # its pipe ended before its process did

    @property
    def live(self) -> bool:
        """It may take new tasks (not draining, not gone)."""
        return self.state in LIVE

    def set_state(self, new: AgentState) -> AgentState:
        """Move to ``new``; returns the state it left."""
        old = self.state
        check_transition(f"agent {self.id}", old, new, AGENT_TRANSITIONS)
        self.state = new
        return old

    def find(self, task_id: int) -> Task | None:
        for task in self.held:
            if task.id == task_id:
                return task
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "state": self.state.name,
            "held": [t.id for t in self.held],
            "tasks_done": self.tasks_done,
            "private_bytes": self.last_private,
            "peak_private_bytes": self.peak_private,
        }

    def __repr__(self) -> str:
        task = f" task={self.held[0].id}" if self.held else ""
        mem = f" private={format_bytes(self.last_private)}" if self.last_private else ""
        return f"<Agent {self.id} pid={self.pid} {self.state.name}{task}{mem}>"


GO_ON = "go on"
GO_INLINE = "inline"
BREAK = "break"


def start_verdict(failures: int, *, has_initializer: bool) -> str:
    """What the pool does after ``failures`` agents in a row failed to get READY.

    Below ``MAX_START_FAILURES`` it goes on starting agents. At it, tasks run
    inline, unless an initializer is configured: inline tasks would run
    without its state, and it is the likely killer, so the pool breaks.
    """
    if failures < MAX_START_FAILURES:
        return GO_ON
    return BREAK if has_initializer else GO_INLINE
