"""Retry policy: retry, split, or fail a task its agent could not finish.

This module covers the one decision taken when a task fails in a way worth
another try (its agent died, went over its memory limit, or the task timed
out): ``decide`` says whether to run it again, split it, or let it fail,
and ``split`` cuts a map chunk in two parts. It does not cover which
failures qualify (``machine``) nor the errors' wording (``postmortem``).

Rules:

- a map chunk of several items with ``retries`` > 0 is **split** in two
  halves, each a task of its own with the chunk's whole retry budget. A
  split costs no attempt: whatever killed the chunk, an outside SIGKILL or
  one poison item, the halves that do not hold the culprit complete, and the
  culprit ends alone after at most log2(n) splits;
- a single task (a call, or a chunk of one item) is **retried** while it
  has attempts left (``attempts <= retries``) and is not quarantined;
- **quarantine** applies to single tasks only: one that has killed
  ``pool.quarantine_after`` agents is not retried again, so one poison item
  cannot take agents down for ever; a chunk is split instead;
- nothing is retried while the pool stops, and streams never are (their
  consumer has seen chunks already).
"""

from __future__ import annotations

from concurrent.futures import Future

from guildcore.engine.agent import MODE_MAP, MODE_STARMAP
from guildcore.engine.task import Task
from guildcore.errors import GuildError

RETRY = "retry"
SPLIT = "split"
FAIL = "fail"


def decide(task: Task, *, quarantine_after: int, stopping: bool) -> str:
    """RETRY, SPLIT or FAIL for ``task``, whose latest attempt just failed.

    ``task.agent_kills`` already counts this failure if it killed an agent.
    """
    if stopping or task.stream is not None:
        return FAIL
    if task.n_items > 1 and task.retries > 0 and task.mode in (MODE_MAP, MODE_STARMAP):
        return SPLIT
    if task.attempts <= task.retries and not quarantined(task, quarantine_after):
        return RETRY
    return FAIL


def quarantined(task: Task, quarantine_after: int) -> bool:
    return task.agent_kills >= quarantine_after


def note_quarantine(err: BaseException, task: Task) -> None:
    """Say in ``err``'s message that ``task`` was quarantined, not out of retries."""
    if isinstance(err, GuildError) and err.args:
        err.args = (
            f"{err.args[0]}; task {task.id} was quarantined after killing agents {task.agent_kills} times "
            "(pool.quarantine_after) and is not retried again",
        )


def split(task: Task, new_id: int, second_id: int) -> tuple[Task, Task]:
    """Cut a map chunk in two parts, which inherit everything but their items.

    The chunk becomes their parent: it keeps its future and ends when both
    have (``Task.parts``).
    """
    items = task.payload
    half = len(items) // 2
    task.parts = [None, None]
    task.parts_left = 2
    return _part(task, new_id, 0, items[:half]), _part(task, second_id, 1, items[half:])


def _part(parent: Task, task_id: int, index: int, items: list[object]) -> Task:
    return Task(
        id=task_id,
        fn_name=parent.fn_name,
        spec=parent.spec,
        mode=parent.mode,
        payload=items,
        future=Future(),  # private: a part's result goes to its parent, never to a caller
        priority=parent.priority,
        timeout_s=parent.timeout_s,
        retries=parent.retries,
        n_items=len(items),
        ctx_ref=parent.ctx_ref,  # held for the parent, released when it ends
        future_started=True,
        parent=parent,
        part=index,
    )
