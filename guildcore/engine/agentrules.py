"""The state machine's rules for agents: starting, ready, dying, memory, time, scale.

This module covers ``AgentRules``: what the machine does when an agent
starts (or cannot), sends READY, ends (stopped, died, killed by us, died
before it was ready), has its memory sampled, passes a deadline (a task past
its timeout, a SIGTERM not obeyed, a SHUTDOWN not obeyed, a pipe closed),
and how many agents there should be (``scaling``, under the ``Admission`` a
memory monitor sets). It does not cover what agents run (``taskrules``).
"""

from __future__ import annotations

import logging
import signal

from guildcore.engine import lifecycle, scaling, timers
from guildcore.engine.events import (
    AdmissionChanged,
    AgentExited,
    AgentMoved,
    AgentPipeClosed,
    AgentStarted,
    AgentStartFailed,
    DiscardResult,
    Log,
    MemoryNoted,
    MemorySampled,
    SampleMemory,
    SignalAgent,
    StopIdleAgents,
)
from guildcore.engine.lifecycle import AgentRecord
from guildcore.engine.poolstate import PEAKS_KEPT, PoolState
from guildcore.engine.states import AgentState
from guildcore.engine.task import ENDED, Task
from guildcore.errors import MemoryLimitExceeded, TaskTimeout, describe_exitcode

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any


class AgentRules(PoolState):
    """Agent events and the pool's clocks and size (see the module docstring)."""

    def _on_ready(self, agent: AgentRecord, fields: list[Any]) -> None:
        if agent.ready:
            return
        agent.ready = True
        agent.baseline_private = int(fields[1]) if len(fields) > 1 else 0
        self.start_failures = 0
        if agent.state is AgentState.STARTING:
            self._agent_to(agent, AgentState.BUSY if agent.held else AgentState.IDLE, "ready")
            agent.idle_since = self.now
        if agent.held:
            self._begin(agent.held[0])

    def _on_started(self, event: AgentStarted) -> None:
        agent = self.agents.get(event.agent_id)
        if agent is None:
            return
        agent.pid = event.pid
        self.counters.agents_started += 1
        if self.trace:
            self._out.append(AgentMoved(agent.id, agent.pid, "NEW", agent.state.name, "started"))

    def _on_start_failed(self, event: AgentStartFailed) -> None:
        agent = self.agents.pop(event.agent_id, None)
        if agent is None:
            return
        for task in list(agent.held):
            self._unsend(task, "its agent could not start")
        agent.held.clear()
        self.start_failures += 1
        self._out.append(Log(logging.WARNING, f"agent {agent.id} could not start: {event.why}"))
        if lifecycle.start_verdict(self.start_failures, has_initializer=False) != lifecycle.GO_ON or not self.agents:
            self._go_inline(event.why)

    def _on_pipe_closed(self, event: AgentPipeClosed) -> None:
        """Its pipe ended: an agent that is dying (its sentinel comes in a moment), or
        one whose pipe something closed. The first exits within the grace; the
        second is killed at its end, with that reason."""
        agent = self.agents.get(event.agent_id)
        if agent is not None and agent.exit_reason is None:
            agent.pipe_closed = True
            agent.kill_at = self.now + timers.KILL_GRACE_S

    def _on_exited(self, event: AgentExited) -> None:
        """The agent's process ended: account for every task it held."""
        agent = self.agents.pop(event.agent_id, None)
        if agent is None:
            return
        exitcode = event.exitcode
        expected = agent.state is AgentState.DRAINING and agent.shutdown_sent
        died_starting = not agent.ready  # it began nothing
        if agent.exit_reason is not None and agent.exit_reason[0] == lifecycle.MALFORMED and exitcode != -signal.SIGKILL:
            agent.exit_reason = None  # it ended on its own before the kill for its frame
        self._agent_to(
            agent, AgentState.STOPPED if expected else AgentState.DEAD,
            "stopped" if expected else f"died ({describe_exitcode(exitcode)})", exitcode,
        )
        held = list(agent.held)
        agent.held.clear()
        if expected:
            # Invariant: an agent told to stop runs nothing more; whatever it
            # still held had not begun, so it goes back to the queue.
            for task in held:
                self._unsend(task, "its agent stopped")
            return
        self.counters.agents_died += 1
        if died_starting:
            # It never sent READY, so it never began what it was sent ahead of
            # time: back to the queue, unless shutdown already cancelled it.
            self.start_failures += 1
            for task in held:
                if self.stopping and task.stream is not None:
                    self._finish_cancelled(task, "the pool stops")
                elif task.state not in ENDED:
                    self._unsend(task, "its agent died starting")
        elif held:
            running, prefetched = held[0], held[1:]
            self._out.append(DiscardResult(running.id))  # a big result it may have been writing
            err = self._death_error(agent, running, exitcode)
            if isinstance(err, MemoryLimitExceeded):
                self.counters.agents_replaced_memory += 1
            elif isinstance(err, TaskTimeout):
                self.counters.agents_replaced_timeout += 1
            running.agent_id = None
            self._retry_or_fail(running, err, agent_killed=True)
            for task in prefetched:
                if task.state not in ENDED:
                    self._unsend(task, "its agent died")
        if self.inline or self.broken is not None:
            return
        verdict = lifecycle.start_verdict(self.start_failures, has_initializer=self._has_initializer)
        if verdict != lifecycle.GO_ON:
            why = (
                f"{self.start_failures} agents in a row died before they were ready "
                f"(last: {describe_exitcode(exitcode)})"
            )
            if verdict == lifecycle.GO_INLINE:
                self._go_inline(why)
            else:
                from guildcore.engine import postmortem

                self._break(postmortem.agents_die_at_start(why))

    def _death_error(self, agent: AgentRecord, task: Task, exitcode: int | None) -> BaseException:
        from guildcore.engine import postmortem  # deaths only: not on a first result's path

        return postmortem.death_error(agent, task, exitcode, self.settings.limit_bytes, self.now)

    def _on_memory(self, event: MemorySampled) -> None:
        limit = self.settings.limit_bytes
        for agent_id, reading in event.readings:
            agent = self.agents.get(agent_id)
            if agent is None or reading is None or not agent.ready:
                continue
            private = max(0, reading - agent.baseline_private)
            agent.last_private = private
            agent.peak_private = peak = max(agent.peak_private or 0, private)
            self._note_peak(agent.id, peak)
            if self.trace:
                self._out.append(MemoryNoted(agent.id, private, peak))
            if limit and private > limit and agent.exit_reason is None and agent.held:
                agent.exit_reason = (lifecycle.MEMORY, private)
                self._out.append(SignalAgent(agent.id, signal.SIGKILL, "over its memory limit"))

    def _note_peak(self, agent_id: int, peak: int) -> None:
        peaks = self.counters.peak_private_bytes
        if agent_id in peaks or len(peaks) < PEAKS_KEPT:
            peaks[agent_id] = peak
            return
        low_id, low = min(peaks.items(), key=lambda kv: kv[1])
        if peak > low:
            del peaks[low_id]
            peaks[agent_id] = peak

    def _check_timers(self) -> None:
        now = self.now
        grace = self.settings.timeout_grace_s
        if now >= self.next_sample_at:
            busy = [a.id for a in self.agents.values() if a.held and a.ready and a.state is not AgentState.DEAD]
            if busy:
                self.next_sample_at = now + self.settings.sample_interval_s
                self._out.append(SampleMemory(busy))
        for agent in self.agents.values():
            if agent.kill_at is not None and now >= agent.kill_at:
                agent.kill_at = None
                if agent.pipe_closed and agent.exit_reason is None:
                    self._malformed(agent, "its pipe closed while it still ran")
                else:
                    self._out.append(SignalAgent(agent.id, signal.SIGKILL, "did not stop after SIGTERM"))
                continue
            if agent.stop_deadline is not None and now >= agent.stop_deadline:
                agent.stop_deadline = None
                self._out.append(SignalAgent(agent.id, signal.SIGKILL, "did not stop after SHUTDOWN"))
                continue
            if not agent.held or agent.exit_reason is not None:
                continue
            head = agent.held[0]
            due = timers.hard_deadline(head, grace)
            if due is not None and now >= due:
                agent.exit_reason = (lifecycle.TIMEOUT, head.id)
                agent.kill_at = now + timers.KILL_GRACE_S
                self._out.append(SignalAgent(agent.id, signal.SIGTERM, "task past its timeout and grace"))

    def _scale(self) -> None:
        if self.inline or self.broken is not None:
            return
        if self.stopping:
            self.next_scale_check = None
            if self.queue and not any(a.live for a in self.agents.values()):
                self._start_agent("work is left while stopping")
            return
        # Waiting work: the queue plus tasks prefetched behind a running one.
        waiting = len(self.queue) + sum(max(0, len(a.held) - 1) for a in self.agents.values())
        live = [a for a in self.agents.values() if a.live]
        lo, hi = self.settings.min_agents, self.settings.max_agents
        working = self.admission.working_agents
        if working is not None:
            # Agents beyond the working set take nothing new: once idle they stop.
            lo, hi = min(lo, working), min(hi, max(1, working))
            for agent in sorted(live, key=lambda a: a.id)[working:]:
                if agent.state is AgentState.IDLE:
                    self._drain_agent(agent, "outside the working set (admission)")
            live = [a for a in live if a.live]
        view = scaling.PoolView(
            queued=waiting,
            agents=[
                scaling.AgentView(a.id, a.state is AgentState.STARTING, a.idle_since if a.state is AgentState.IDLE else None)
                for a in live
            ],
            min_agents=lo,
            max_agents=hi,
            scale_up_queue_length=self.settings.scale_up_queue_length,
            idle_timeout_s=self.settings.idle_timeout_s,
        )
        plan = scaling.decide(view, self.now)
        starts = self._admit(plan.start, len(live)) if plan.start else 0
        for _ in range(starts):
            self._start_agent("queue pressure" if live else "min_agents")
        for agent_id in plan.stop:
            self._drain_agent(self.agents[agent_id], "idle past idle_timeout")
        self.next_scale_check = plan.next_check_at

    def _admit(self, starts: int, live: int) -> int:
        """How many of ``starts`` agents may start now, ``live`` being alive (the monitor adds its headroom rule)."""
        if not self.admission.may_start:
            return min(starts, 0 if live else 1)  # the first agent still starts: queued work must run
        return starts

    def _on_admission(self, event: AdmissionChanged) -> None:
        self.admission = event.admission
        self._out.append(Log(logging.INFO, f"admission changed: {event.admission} ({event.reason})"))

    def _on_stop_idle(self, event: StopIdleAgents) -> None:
        self._stop_idle(event.reason)

    def _stop_idle(self, reason: str) -> None:
        """Stop the agents idle now, longest idle first, down to ``min_agents``."""
        live = sum(1 for a in self.agents.values() if a.live)
        for agent in sorted(self.agents.values(), key=lambda a: a.idle_since or 0.0):
            if live <= self.settings.min_agents:
                return
            if agent.state is AgentState.IDLE and not agent.held:
                self._drain_agent(agent, reason)
                live -= 1
