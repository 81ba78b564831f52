"""Which agent gets the next task: a pure decision, no side effects.

The owner loop hands in a snapshot of candidate agents (id, tasks held,
whether it runs a stream) and acts on the answer; tests call ``choose``
directly without starting a process.
"""

from __future__ import annotations

from collections.abc import Sequence

from guildcore._records import Frozen

LEAST_LOADED = "least_loaded"
ROUND_ROBIN = "round_robin"


class Slot(Frozen):
    """One agent as dispatch sees it."""

    _fields = ("agent_id", "held", "streaming")
    __slots__ = _fields
    agent_id: int
    held: int  # tasks sent and not finished (running + prefetched)
    streaming: bool  # runs a stream: takes nothing else until it ends

    def __init__(self, agent_id: int, held: int, streaming: bool = False) -> None:
        self._set("agent_id", agent_id)
        self._set("held", held)
        self._set("streaming", streaming)


def choose(
    slots: Sequence[Slot],
    *,
    capacity: int,
    strategy: str = LEAST_LOADED,
    last_id: int = -1,
    for_stream: bool = False,
) -> int | None:
    """The agent id to send the next task to, or None if every agent is full.

    ``capacity`` is 1 + prefetch: how many tasks an agent may hold. A stream
    only goes to an agent that holds nothing, and an agent running a stream
    takes nothing else: a task prefetched behind a stream would wait on the
    stream's consumer, who may be waiting on that very task.
    """
    limit = 1 if for_stream else capacity
    open_slots = [s for s in slots if not s.streaming and s.held < limit]
    if not open_slots:
        return None
    if strategy == ROUND_ROBIN:
        after = [s for s in open_slots if s.agent_id > last_id]
        pick = min(after or open_slots, key=lambda s: s.agent_id)
        # Round robin still fills empty agents first: sending a second task
        # to a busy agent while another sits idle only adds latency.
        empties = [s for s in open_slots if s.held == 0]
        if pick.held > 0 and empties:
            after_empty = [s for s in empties if s.agent_id > last_id]
            pick = min(after_empty or empties, key=lambda s: s.agent_id)
        return pick.agent_id
    return min(open_slots, key=lambda s: (s.held, s.agent_id)).agent_id
