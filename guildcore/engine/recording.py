"""Metrics from the state machine: its records, reported to a ``RunRecorder``.

This module covers ``RecorderObserver``, the supervisor observer (see
``supervisor``) that turns the machine's records into the recorder's
reports: a task queued, sent, timed by its agent, retried or split,
finished with its outcome and error type; an agent started, ready, stopped
or dead with why; each memory sample; each change of the monitor's mode
(its alert reaches the recorder through ``monitorio``). It does not cover what the recorder
does with them (``metrics``) nor when it ticks (the owner loop).

Parts of a split chunk are not reported as tasks of their own: callers
submitted the chunk, whose split is reported as a retry.
"""

from __future__ import annotations

from guildcore.engine.events import AgentMoved, MemoryNoted, ModeChanged, TaskMoved, TaskRan

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.metrics.recorder import RunRecorder

_ENDED = {"DONE": "done", "FAILED": "failed", "CANCELLED": "cancelled"}


class RecorderObserver:
    """``observer(now, action)`` for ``Supervisor.observe``: records in, reports out."""

    def __init__(self, recorder: RunRecorder) -> None:
        from guildcore.metrics.recorder import exit_reason

        self.recorder = recorder
        self._exit_reason = exit_reason

    def __call__(self, now: float, action: Any) -> None:
        kind = type(action)
        if kind is TaskMoved:
            self._task(now, action)
        elif kind is AgentMoved:
            self._agent(now, action)
        elif kind is TaskRan:
            self.recorder.task_ran(action.task_id, action.agent_id, action.fields, now)
        elif kind is MemoryNoted:
            self.recorder.memory_sample(action.agent_id, action.private_bytes, now)
        elif kind is ModeChanged:
            self.recorder.mode_changed(action.transition.mode.value, action.transition.reason, now)

    def _task(self, now: float, moved: TaskMoved) -> None:
        if moved.part:
            return
        rec = self.recorder
        if moved.old == "NEW":
            rec.task_queued(moved.task_id, moved.fn_name, moved.n_items, now)
        elif moved.new == "SENT" and moved.agent_id is not None:
            rec.task_sent(moved.task_id, moved.agent_id, now)
        elif moved.new == "RETRYING":
            rec.task_retried(moved.task_id, moved.error or moved.reason, now)
        elif moved.new in _ENDED:
            rec.task_finished(moved.task_id, _ENDED[moved.new], moved.error if moved.new == "FAILED" else None, now)

    def _agent(self, now: float, moved: AgentMoved) -> None:
        rec = self.recorder
        if moved.old == "NEW":
            rec.agent_started(moved.agent_id, moved.pid or 0, now)
        elif moved.reason == "ready":
            rec.agent_ready(moved.agent_id, now)
        elif moved.new in ("STOPPED", "DEAD"):
            why = self._exit_reason(moved.new == "STOPPED", not moved.began, moved.cause, moved.exitcode)
            rec.agent_exited(moved.agent_id, why, now)
