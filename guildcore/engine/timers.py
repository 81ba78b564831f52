"""The supervisor's clocks: deadlines kept in state, compared with ``now``.

This module covers when the supervisor acts on time: the hard deadline of a
running task, the grace between SIGTERM and SIGKILL, how long a stopping
agent gets, and the earliest of an agent's deadlines. Every function takes
the clock reading as an argument; nothing here reads a clock, so the rules
are tested with a fake one. It does not cover what happens at a deadline
(``machine``) nor the soft timeout inside the agent (``agent._Timer``).

A task's clock starts when its agent begins it (``Task.started_at``, set by
the machine when the task becomes RUNNING), not when it was sent: an agent
still starting, or running an initializer, or running the task before it,
costs the task nothing. Time a stream waits for its consumer does not count
either (``StreamState.resume`` moves ``started_at`` on; a stream with a ring
counts its pauses in the ring, ``StreamState.paused_total_s``).
"""

from __future__ import annotations

from guildcore.engine.lifecycle import AgentRecord
from guildcore.engine.states import TaskState
from guildcore.engine.task import Task, budget

# After SIGTERM, how long an agent gets before SIGKILL.
KILL_GRACE_S = 1.0
# How long an agent told to stop (SHUTDOWN) gets to exit before SIGKILL.
STOP_DEADLINE_S = 5.0


def hard_deadline(task: Task, grace_s: float) -> float | None:
    """When the supervisor stops waiting for ``task`` to obey its own timeout.

    The agent raises ``TaskTimeout`` inside the task after ``timeout_s``
    (per item for a chunk); a task that catches it and goes on is ended
    from outside ``grace_s`` later. None while the task has not begun, has
    no timeout, or is a stream paused by its consumer.
    """
    if task.timeout_s is None or task.started_at is None or task.state is not TaskState.RUNNING:
        return None
    paused_s = 0.0
    if task.stream is not None:
        if task.stream.paused_since is not None:
            return None
        # A stream with a ring: its agent keeps the time it waited for the
        # consumer in the ring (the frame channel moves started_at instead).
        paused_s = task.stream.paused_total_s
    return task.started_at + budget(task) + grace_s + paused_s


def agent_deadline(agent: AgentRecord, grace_s: float) -> float | None:
    """The earliest moment the machine must look at ``agent`` again, if any."""
    due: float | None = None
    for t in (agent.kill_at, agent.stop_deadline):
        if t is not None and (due is None or t < due):
            due = t
    if agent.held and agent.exit_reason is None:
        t = hard_deadline(agent.held[0], grace_s)
        if t is not None and (due is None or t < due):
            due = t
    return due
