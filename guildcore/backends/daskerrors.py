"""Post-mortems on Dask: the error a task ends with when its run there fails.

The counterpart of ``engine.postmortem`` for tasks run by the Dask backend:
the same error types with the same wording, naming the Dask worker (its
address, and its pid where known) instead of an agent. Every function is
pure: it reads the task and what Dask or the worker reported, and returns
an exception; retrying and counting stay with ``dask.DaskPool``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from typing import Any

from guildcore.engine.agent import FLAG_MEMORY, FLAG_TIMEOUT
from guildcore.engine.task import Task, budget
from guildcore.errors import (
    AgentDied,
    MemoryLimitExceeded,
    RemoteTraceback,
    TaskError,
    TaskTimeout,
    describe_exitcode,
    format_bytes,
)


def _ran(task: Task, now: float) -> str:
    return f"{now - task.started_at:.2f} s" if task.started_at else "an unknown time"


def _next_step(task: Task) -> str:
    return "pass retries=N to retry such tasks" if task.retries == 0 else f"attempt {task.attempts} of {task.retries + 1}"


def worker_died(task: Task, address: str, pid: int | None, exitcode: int | None = None, *, now: float | None = None) -> AgentDied:
    """The worker running ``task`` died (its connection to the scheduler closed).

    ``exitcode`` is known where the worker's nanny runs in this process (dask-local).
    """
    now = time.monotonic() if now is None else now
    who = f"Dask worker {address}" + (f" (pid {pid})" if pid else "")
    how = f"died with {describe_exitcode(exitcode)}" if exitcode is not None else "died"
    likely = "; see the worker's log for why"
    if exitcode == -signal.SIGKILL:
        likely = "; the OS may have killed it for memory, or something sent it SIGKILL"
    elif exitcode == -signal.SIGSEGV:
        likely = "; a C extension probably crashed"
    elif exitcode is not None:
        likely = ""
    err = AgentDied(
        f"{who} {how} while running task {task.id} ({task.fn_name}) for {_ran(task, now)}{likely}; "
        "its nanny, if it has one, starts a new worker; " + _next_step(task),
        task_id=task.id,
        fn=task.fn_name,
        pid=pid,
        exitcode=exitcode,
        runtime_s=(now - task.started_at) if task.started_at else None,
    )
    err.address = address
    return err


def memory_restart(
    task: Task, address: str, pid: int | None, used: int, limit_bytes: int | None, memory_limit: int | None, *, local: bool
) -> MemoryLimitExceeded:
    """A nanny restarted the worker running ``task`` for its memory.

    ``local``: a dask-local nanny, which restarts a worker whose private
    memory grew by ``used`` past ``limits.per_agent``; otherwise Dask's own,
    past 95% of the worker's memory limit, measured as RSS.
    """
    who = f"Dask worker {address}" + (f" (pid {pid})" if pid else "")
    if local:
        what = f"grew by {format_bytes(used)} of private memory, over its {format_bytes(limit_bytes)} limit,"
    else:
        what = f"used {format_bytes(used)} of memory (RSS), past 95% of its Dask memory limit of {format_bytes(memory_limit)},"
    err = MemoryLimitExceeded(
        f"{who} {what} while running task {task.id} ({task.fn_name}); its nanny restarted it; "
        "raise limits.per_agent or lower the task's memory",
        task_id=task.id,
        fn=task.fn_name,
        pid=pid,
        limit_bytes=limit_bytes,
        peak_bytes=used,
    )
    err.address = address
    return err


def timed_out_stuck(task: Task, address: str | None, restarted: bool) -> TaskTimeout:
    """``task`` ran past its timeout and grace without stopping; its worker was restarted."""
    if address is None:
        what = "its worker is unknown to the scheduler"
    elif restarted:
        what = f"Dask worker {address} was restarted"
    else:
        what = f"Dask worker {address} could not be restarted (it has no nanny) and keeps the task's thread busy"
    if task.stream is not None:
        ran = f"stream task {task.id} ({task.fn_name}) timed out after {budget(task):.1f} s of production"
    else:
        ran = f"task {task.id} ({task.fn_name}) timed out after {budget(task):.1f} s"
    err = TaskTimeout(
        f"{ran} (limits.timeout) and did not stop when asked; {what}; raise the timeout or make "
        "the task check for interruption",
        task_id=task.id,
        fn=task.fn_name,
        timeout_s=task.timeout_s,
    )
    err.address = address
    return err


def reported(task: Task, record: list[Any], limit_bytes: int | None) -> BaseException:
    """The error a worker reported for ``task``: ``[ERROR, exc, tb, type, message, flags, facts]``."""
    _kind, exc_obj, tb, type_name, message, flags, facts = record
    facts = facts if isinstance(facts, Mapping) else {}
    address = facts.get("address")
    err: BaseException
    if flags & FLAG_MEMORY:
        who = f"Dask worker {address} (pid {facts.get('pid')})"
        if facts.get("interrupted"):
            peak = facts.get("peak")
            what = f"grew by {format_bytes(peak)} of private memory, over its {format_bytes(limit_bytes)} limit,"
            outcome = "the task was stopped and the worker kept"
        else:
            peak = None
            what = f"ran out of memory ({message or 'MemoryError'})"
            outcome = "the worker was kept"
        err = MemoryLimitExceeded(
            f"{who} {what} while running task {task.id} ({task.fn_name}); {outcome}; "
            "raise limits.per_agent or lower the task's memory",
            task_id=task.id,
            fn=task.fn_name,
            pid=facts.get("pid"),
            limit_bytes=limit_bytes,
            peak_bytes=peak,
        )
        err.address = address
    elif isinstance(exc_obj, BaseException):
        err = exc_obj
    else:
        err = TaskError(f"task {task.id} ({task.fn_name}) raised {type_name}: {message}", task_id=task.id, fn=task.fn_name)
    err.__cause__ = RemoteTraceback(tb)
    if flags & FLAG_TIMEOUT and isinstance(err, TaskTimeout):
        err.address = address
    return err


def not_run(task: Task, exc: BaseException) -> TaskError:
    """Dask could not run ``task`` at all (the worker cannot load guildcore, a lost scheduler)."""
    hint = ""
    if isinstance(exc, ModuleNotFoundError | ImportError):
        hint = "; install guildcore (and your task's modules) on every worker"
    err = TaskError(
        f"task {task.id} ({task.fn_name}) could not run on Dask: {type(exc).__name__}: {exc}{hint}",
        task_id=task.id,
        fn=task.fn_name,
    )
    err.__cause__ = exc
    return err
