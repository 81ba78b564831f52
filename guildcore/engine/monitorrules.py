"""The state machine's rules for the memory monitor: when to read, and what a reading changes.

This module covers ``MonitorRules``: the monitor's clock (a first reading
``FIRST_READING_S`` after the pool starts, or one ``check_interval`` if that
is shorter, or at once when more agents would start before it, then every
``monitoring.check_interval``, while ``monitoring.enabled``) and what each
reading does, through the pure
decisions of ``guildcore.monitor`` (``Monitor``, ``adaptive_plan``,
``may_start_agent``):

- a mode change makes ``ModeChanged``: a log line, and an alert when
  ``monitoring.alerts`` is on;
- cleanup: the supervisor's in-process caches cut to half (``warning``) or
  emptied (``critical``) (``ShrinkCaches``); garbage collected and the heap
  trimmed in the supervisor (``ReleaseMemory``) and in every idle agent (a
  TRIM frame, which cuts that agent's own caches the same way); idle agents
  above ``min_agents`` stopped;
- caching: writes off in ``critical`` and under an adaptive plan without
  caching; the in-process budget at half under a conservative plan
  (``SetCaching`` for the supervisor's caches, a CACHING frame to every
  agent, and to every agent that starts while it holds);
- admission: one agent takes new work in ``critical`` (sequential mode), at
  most the plan's agents under ``strategy: adaptive``; an agent outside the
  working set gives back the tasks sent ahead that it has not begun,
  finishes the one it runs, and stops;
- starting: no agent starts while the headroom under ``limits.total_system``
  is less than one ``limits.per_agent`` (the pool's first agents always
  do; the ones after them wait for the first reading).

It does not cover the decisions themselves (``guildcore.monitor``) nor the
I/O (reading the probe, touching caches, logging: ``monitorio`` on the loop).

Invariant: a mode change neither loses nor fails a task: a task given back
goes to the front of the queue, and an agent outside the working set stops
only once it holds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from guildcore import codec
from guildcore.codec import Kind
from guildcore.engine.agent import MODE_STREAM
from guildcore.engine.events import (
    Admission,
    AdmissionChanged,
    Log,
    ModeChanged,
    MonitorRead,
    ReadMonitor,
    ReleaseMemory,
    Send,
    SetCaching,
    ShrinkCaches,
)
from guildcore.engine.lifecycle import AgentRecord
from guildcore.engine.states import AgentState
from guildcore.engine.supsettings import SupervisorSettings
from guildcore.engine.taskrules import TaskRules

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.monitor import AdaptivePlan, Mode, Monitor

# ``guildcore.monitor`` is imported at the first reading (``_monitor``), not
# with the machine: the machine is on the way to every script's first
# result, and the monitor (its module, the probe's /proc reads and imports,
# ~2 ms of the owner thread) need not be. No reading at the start could
# hold back the first agents anyway: they start in the pool's first turn,
# before any answer.

# The first reading: this long after the pool starts (or one check_interval, if shorter).
FIRST_READING_S = 0.1

# The caches' state outside any pressure: writes on, the whole configured budget.
FULL_CACHING = (True, 1.0)


class MonitorRules(TaskRules):
    """The monitor's clock, and what each reading changes (see the module docstring)."""

    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        new_task_id: Callable[[], int],
        has_initializer: bool = False,
    ) -> None:
        super().__init__(settings, new_task_id=new_task_id, has_initializer=has_initializer)
        self.monitor: Monitor | None = None  # made at the first reading (``_monitor``)
        self.next_check_at: float | None = None  # None: set at the next settle (the pool starts)
        self.reading_out = False  # a ReadMonitor was asked and not answered yet
        self.first_answered = False  # a reading came back (or failed): starts past the first ones may be judged
        self._answered = False  # a MonitorRead was handled in this turn
        self._read_ids: frozenset[int] = frozenset()  # agents the last reading counted
        self._asked_ids: frozenset[int] = frozenset()  # agents the reading out will count
        self.sequential = False  # critical: one agent takes new work
        self.writes_off = False  # critical: nothing new is cached
        self.plan: AdaptivePlan | None = None  # strategy: adaptive, from the last reading
        self.caching = FULL_CACHING  # (writes, budget) the caches were last set to
        self.posted = Admission()  # from AdmissionChanged (what steers the pool from beside it)
        self.starts_held: str | None = None  # why no agent may start now, while that holds

    # ------------------------------------------------------------ the clock

    @property
    def monitoring(self) -> bool:
        """Whether this pool has a memory monitor (``monitoring.enabled``, a local pool)."""
        return self.settings.monitor is not None

    def _monitor(self) -> Monitor:
        """The monitor's decisions and state, made (and imported) at the first reading or read of them."""
        mon = self.monitor
        if mon is None:
            from guildcore.monitor import Monitor

            limits = self.settings.monitor
            assert limits is not None, "only a monitoring machine has a monitor"
            mon = self.monitor = Monitor(limits)
        return mon

    def _check_monitor(self) -> None:
        """Ask for a reading when one is due (one at a time)."""
        limits = self.settings.monitor
        if limits is None or self.reading_out:
            return
        if self.next_check_at is None:  # the pool starts: the first reading comes a little later
            self.next_check_at = self.now + min(FIRST_READING_S, limits.check_interval_s)
            return
        if self._answered:
            # Invariant: never a reading in the turn that handled one. Its
            # answer comes back at once, so a reading (with the cleanup it
            # may run) slower than check_interval would otherwise chain
            # readings forever without the loop reading an agent's pipe.
            self._answered = False
            return
        due = self.next_check_at
        if due is not None and self.now < due:
            return
        self.next_check_at = self.now + limits.check_interval_s
        self.reading_out = True
        # Only ready agents: a starting one has not told its baseline yet, and
        # a forked one holds the caller's pages until it does.
        counted = {a.id: a for a in self.agents.values() if a.ready and a.pid is not None and a.live}
        self._asked_ids = frozenset(counted)
        self._out.append(ReadMonitor({a.pid: a.baseline_private for a in counted.values() if a.pid is not None}))

    def monitor_deadline(self) -> float | None:
        """When the next reading is due (None: no monitor, or a reading is out)."""
        if not self.monitoring or self.reading_out:
            return None
        return self.next_check_at if self.next_check_at is not None else self.now

    # ------------------------------------------------------------ a reading

    def _on_monitor_read(self, event: MonitorRead) -> None:
        self.reading_out = False
        self._answered = True
        self.first_answered = True
        readings = event.readings
        if not self.monitoring or readings is None:
            return
        mon = self._monitor()
        from guildcore.monitor import RECOVERY_MARGIN, Action, Mode, adaptive_plan

        self._read_ids = self._asked_ids
        decision = mon.observe(readings, self.now)
        actions = decision.actions
        mode = decision.mode
        reason = f"memory {decision.reason}"
        if decision.changed:
            lim = mon.limits
            if _rank(mode) > _rank(decision.previous):
                threshold = lim.critical if mode is Mode.CRITICAL else lim.warning
            else:
                threshold = (lim.warning if mode is Mode.NORMAL else lim.critical) - RECOVERY_MARGIN
            self._out.append(ModeChanged(mon.timeline[-1], Action.ALERT in actions, decision.pressure, threshold))
        for action in actions:
            if action is Action.SEQUENTIAL_ON:
                self.sequential = True
            elif action is Action.SEQUENTIAL_OFF:
                self.sequential = False
            elif action is Action.CACHE_WRITES_OFF:
                self.writes_off = True
            elif action is Action.CACHE_WRITES_ON:
                self.writes_off = False
        if Action.STOP_IDLE in actions:
            self._stop_idle(reason)
        keep = 0.0 if Action.EVICT_ALL in actions else 0.5 if Action.EVICT_HALF in actions else None
        if keep is not None:
            self._out.append(ShrinkCaches(keep, reason))
        if Action.TRIM in actions:
            self._out.append(ReleaseMemory(reason))
            frame = codec.encode_frame(Kind.TRIM, 0, 1.0 if keep is None else keep)
            for agent in self.agents.values():
                if agent.state is AgentState.IDLE and agent.ready and not agent.held:
                    self._out.append(Send(agent.id, frame, "trim"))
        if self.settings.adaptive:
            running = sum(1 for a in self.agents.values() if a.held and a.ready)
            self.plan = adaptive_plan(readings, mode, mon.limits, running=running)
        self._update_caching(reason)
        self._update_admission(reason)

    # ------------------------------------------------------------ caching

    def _caching_now(self) -> tuple[bool, float]:
        plan = self.plan
        if plan is None:
            return not self.writes_off, 1.0
        from guildcore.monitor import CachingLevel

        writes = not self.writes_off and plan.caching is not CachingLevel.OFF
        budget = 0.5 if plan.caching is CachingLevel.CONSERVATIVE else 1.0
        return writes, budget

    def _update_caching(self, reason: str) -> None:
        caching = self._caching_now()
        if caching == self.caching:
            return
        self.caching = writes, budget = caching
        self._out.append(SetCaching(writes, budget, reason))
        frame = codec.encode_frame(Kind.CACHING, 0, writes, budget)
        for agent in self.agents.values():
            if agent.live:
                self._out.append(Send(agent.id, frame, "caching"))

    def _start_agent(self, reason: str) -> AgentRecord:
        agent = super()._start_agent(reason)
        if self.caching != FULL_CACHING:  # it starts with the caching in force (its pipe is open once started)
            writes, budget = self.caching
            self._out.append(Send(agent.id, codec.encode_frame(Kind.CACHING, 0, writes, budget), "caching"))
        return agent

    # ------------------------------------------------------------ admission

    def _on_admission(self, event: AdmissionChanged) -> None:
        self.posted = event.admission
        self._update_admission(event.reason)

    def _update_admission(self, reason: str) -> None:
        caps = [self.posted.working_agents]
        if self.sequential:
            caps.append(1)
        if self.plan is not None and self.plan.agents < self.settings.max_agents:
            caps.append(self.plan.agents)
        working = min((c for c in caps if c is not None), default=None)
        admission = Admission(working, self.posted.may_start)
        if admission == self.admission:
            return
        self.admission = admission
        shown = "every agent takes" if working is None else f"{working} agent{' takes' if working == 1 else 's take'}"
        starts = "" if admission.may_start else "; no agent may start"
        self._out.append(Log(logging.INFO, f"{shown} new work{starts} ({reason})"))
        if working is not None:
            self._withdraw_outside(working)

    def _withdraw_outside(self, working: int) -> None:
        """Agents outside the working set give back what they have not begun."""
        live = sorted((a for a in self.agents.values() if a.live), key=lambda a: a.id)
        for agent in live[working:]:
            begun = 1 if agent.ready else 0  # the head of a ready agent runs; a starting one began nothing
            for task in list(agent.held)[begun:]:
                if task.withdrawing or task.mode == MODE_STREAM:
                    continue
                task.withdrawing = True
                self._out.append(Send(agent.id, codec.encode_frame(Kind.WITHDRAW, task.id), "outside the working set"))

    def _admit(self, starts: int, live: int) -> int:
        starts = super()._admit(starts, live)
        if not self.monitoring or starts <= 0:
            return starts
        if not self.first_answered:
            if live == 0:  # the pool's first agents start whatever a reading would say
                return starts
            # More agents before the first reading: it is taken now (not at
            # FIRST_READING_S), and they wait the one loop turn its answer takes.
            if not self.reading_out:
                self.next_check_at = self.now
            return 0
        mon = self.monitor
        if mon is None or mon.last is None:  # the probe failed: nothing to judge by
            return starts
        from guildcore.monitor import may_start_agent

        # Agents the last reading did not count (started, or not ready, since)
        # are reserved at their whole per_agent.
        unread = sum(1 for a in self.agents.values() if a.live and a.id not in self._read_ids)
        allowed = 0
        why = ""
        while allowed < starts:
            ok, why = may_start_agent(mon.last, mon.limits, alive=live + allowed, started_since=unread + allowed)
            if not ok:
                break
            allowed += 1
        if allowed < starts and self.starts_held is None:
            self.starts_held = why
            self._out.append(Log(logging.INFO, f"no more agents start for now: {why}"))
        elif allowed == starts and self.starts_held is not None:
            self.starts_held = None
        return allowed

    # ------------------------------------------------------------ stats

    def monitor_snapshot(self) -> dict[str, Any] | None:
        if not self.monitoring:
            return None
        snap = self._monitor().snapshot()
        writes, budget = self.caching
        snap["working_agents"] = self.admission.working_agents
        snap["starts_held"] = self.starts_held
        snap["caching"] = {"writes": writes, "budget": budget}
        snap["adaptive"] = None if self.plan is None else self.plan.to_dict() | {"caching": self.plan.caching.value}
        return snap


def _rank(mode: Mode) -> int:
    """normal 0, warning 1, critical 2: how far up a mode is."""
    return ("normal", "warning", "critical").index(mode.value)
