"""When to start and stop agents: a pure decision from a snapshot and ``now``.

The owner loop builds a ``PoolView`` and carries out the returned
``ScalingPlan``; nothing here starts or stops a process, so the rules are
tested with a fake clock and no agents at all.

Rules:
- keep at least ``min_agents`` alive (replacements for dead agents too);
- add one agent while the queue is longer than ``scale_up_queue_length`` and
  fewer than ``max_agents`` are alive, one start at a time (a start costs a
  few milliseconds through the forkserver, and the queue is re-read after);
- an agent idle for longer than ``idle_timeout`` is stopped, down to
  ``min_agents``; the one idle longest goes first.
"""

from __future__ import annotations

from collections.abc import Sequence

from guildcore._records import Frozen


class AgentView(Frozen):
    _fields = ("agent_id", "starting", "idle_since")
    __slots__ = _fields
    agent_id: int
    starting: bool
    idle_since: float | None  # None while it holds a task or is starting

    def __init__(self, agent_id: int, starting: bool, idle_since: float | None) -> None:
        self._set("agent_id", agent_id)
        self._set("starting", starting)
        self._set("idle_since", idle_since)


class PoolView(Frozen):
    _fields = (
        "queued", "agents", "min_agents", "max_agents", "scale_up_queue_length", "idle_timeout_s",
    )  # fmt: skip
    __slots__ = _fields
    queued: int
    agents: Sequence[AgentView]  # alive and not draining
    min_agents: int
    max_agents: int
    scale_up_queue_length: int
    idle_timeout_s: float

    def __init__(
        self,
        queued: int,
        agents: Sequence[AgentView],
        min_agents: int,
        max_agents: int,
        scale_up_queue_length: int,
        idle_timeout_s: float,
    ) -> None:
        self._set("queued", queued)
        self._set("agents", agents)
        self._set("min_agents", min_agents)
        self._set("max_agents", max_agents)
        self._set("scale_up_queue_length", scale_up_queue_length)
        self._set("idle_timeout_s", idle_timeout_s)


class ScalingPlan(Frozen):
    _fields = ("start", "stop", "next_check_at")
    __slots__ = _fields
    start: int
    stop: tuple[int, ...]
    next_check_at: float | None  # when an idle agent will pass its timeout

    def __init__(
        self,
        start: int = 0,
        stop: tuple[int, ...] = (),
        next_check_at: float | None = None,
    ) -> None:
        self._set("start", start)
        self._set("stop", stop)
        self._set("next_check_at", next_check_at)


def decide(view: PoolView, now: float) -> ScalingPlan:
    alive = len(view.agents)
    starting = sum(1 for a in view.agents if a.starting)
    if alive < view.min_agents:
        return ScalingPlan(start=view.min_agents - alive)
    # Queue pressure: one more agent, one start at a time.
    if alive < view.max_agents and starting == 0 and view.queued > view.scale_up_queue_length:
        return ScalingPlan(start=1)
    if alive == 0 and view.queued > 0 and view.max_agents > 0:
        return ScalingPlan(start=1)
    idle = sorted(
        (a for a in view.agents if a.idle_since is not None), key=lambda a: a.idle_since or 0.0
    )
    removable = alive - view.min_agents
    stop: list[int] = []
    next_check: float | None = None
    if view.queued == 0:
        for a in idle:
            assert a.idle_since is not None
            due = a.idle_since + view.idle_timeout_s
            if due <= now and len(stop) < removable:
                stop.append(a.agent_id)
            elif len(stop) < removable:
                next_check = due if next_check is None else min(next_check, due)
    return ScalingPlan(stop=tuple(stop), next_check_at=next_check)
