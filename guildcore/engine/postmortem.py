"""Post-mortems: the error a task ends with when its agent fails it.

This module covers turning what the owner loop knows after the fact (the
agent's handle and exit code, the task, an ERROR frame's fields) into the
exception the caller sees, worded as STYLE.md asks: what happened, the facts
with units, the likely cause, the setting to change. Every function here is
pure: it reads the agent and the task and returns an exception.

It does not cover deciding anything: killing or replacing agents, retrying,
quarantine and counters stay with the owner loop (``supervisor``), which
calls in here and acts on the result.
"""

from __future__ import annotations

import signal

from guildcore import errors  # errors.AgentDied and PoolBroken load when first raised
from guildcore.engine import limits
from guildcore.engine.agent import EXIT_NO_MEMORY, FLAG_MEMORY, FLAG_TIMEOUT
from guildcore.engine.task import budget
from guildcore.errors import (
    MemoryLimitExceeded,
    RemoteTraceback,
    TaskError,
    TaskTimeout,
    describe_exitcode,
    format_bytes,
)

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.engine.lifecycle import AgentRecord as AgentHandle
    from guildcore.engine.task import Task
    from guildcore.errors import AgentDied, PoolBroken


def memory_exceeded(
    agent: AgentHandle,
    task: Task,
    limit_bytes: int | None,
    *,
    reported: str | None = None,
    exitcode: int | None = None,
    now: float | None = None,
) -> MemoryLimitExceeded:
    """The agent went over its memory limit while running ``task``.

    ``reported`` is the agent's own MemoryError message when the agent hit its
    hard cap (``RLIMIT_DATA``) and said so; None when the owner loop's sample
    saw it over ``limits.per_agent`` and killed it (then ``exitcode`` and
    ``now`` give the exit and the run time).
    """
    facts: dict[str, Any] = {}
    if reported is not None:
        if limit_bytes:
            cap = format_bytes(limits.hard_cap_bytes(limit_bytes))
            what = (
                f"ran out of memory under its hard cap of {cap} (the {format_bytes(limit_bytes)} "
                "limits.per_agent plus headroom for the interpreter)"
            )
        else:
            what = "ran out of memory"
        detail, outcome = f": {reported}", "the agent was replaced"
    else:
        what = f"used {format_bytes(agent.peak_private)} of private memory, over its {format_bytes(limit_bytes)} limit,"
        detail, outcome = "", "it was killed and replaced"
        facts = {"exitcode": exitcode, "runtime_s": _runtime_s(task, now), "private_bytes": agent.last_private}
    return MemoryLimitExceeded(
        f"agent {agent.id} (pid {agent.pid}) {what} while running task {task.id} ({task.fn_name}){detail}; "
        f"{outcome}; raise limits.per_agent or lower the task's memory",
        **_who(agent, task),
        limit_bytes=limit_bytes,
        peak_bytes=agent.peak_private,
        **facts,
    )


def death_error(
    agent: AgentHandle, task: Task, exitcode: int | None, limit_bytes: int | None, now: float
) -> MemoryLimitExceeded | TaskTimeout | AgentDied:
    """The error of the task ``agent`` was running when its process ended.

    ``agent.exit_reason`` says why the owner loop killed it, if it did:
    over its memory limit, or past the task's timeout; otherwise it died.
    """
    reason = agent.exit_reason[0] if agent.exit_reason else None
    if reason == "memory":
        return memory_exceeded(agent, task, limit_bytes, exitcode=exitcode, now=now)
    if exitcode == EXIT_NO_MEMORY:
        why = "a task frame sent to it (this task's or one sent ahead) did not fit while being received"
        return memory_exceeded(agent, task, limit_bytes, reported=why)
    if reason == "timeout":
        return TaskTimeout(
            f"task {task.id} ({task.fn_name}) timed out after {budget(task):.1f} s (limits.timeout) and did not "
            f"stop when asked; agent {agent.id} (pid {agent.pid}) was killed ({describe_exitcode(exitcode)}) "
            "and replaced; raise the timeout or make the task check for interruption",
            task_id=task.id,
            fn=task.fn_name,
            timeout_s=task.timeout_s,
            agent_id=agent.id,
        )
    ran = f"{now - task.started_at:.2f} s" if task.started_at else "an unknown time"
    if reason == "malformed":
        # Killed by the owner loop for a frame it could not use (short, of the
        # wrong kind or types, not msgpack, too long): a broken agent, or task
        # code that wrote to its pipe. A result that merely fails to decode
        # here fails its task and keeps the agent.
        return errors.AgentDied(
            f"agent {agent.id} (pid {agent.pid}) sent a frame the supervisor could not read "
            f"({agent.exit_reason[1] if agent.exit_reason else '?'}) while running task {task.id} "
            f"({task.fn_name}); it was killed and replaced; something in the task wrote to the agent's "
            "pipe, or the agent is broken",
            **_who(agent, task),
            exitcode=exitcode,
            runtime_s=_runtime_s(task, now),
            private_bytes=agent.last_private,
        )
    likely = ""
    if exitcode == -signal.SIGKILL:
        likely = "; the OS may have killed it for memory, or something sent it SIGKILL"
    elif exitcode == -signal.SIGSEGV:
        likely = "; a C extension probably crashed"
    return errors.AgentDied(
        f"agent {agent.id} (pid {agent.pid}) died with {describe_exitcode(exitcode)} while running task "
        f"{task.id} ({task.fn_name}) for {ran}; last private memory {format_bytes(agent.last_private)}"
        f"{likely}; the agent was replaced; "
        + ("pass retries=N to retry such tasks" if task.retries == 0 else f"attempt {task.attempts} of {task.retries + 1}"),
        **_who(agent, task),
        exitcode=exitcode,
        runtime_s=_runtime_s(task, now),
        private_bytes=agent.last_private,
    )


def reported_error(agent: AgentHandle, task: Task, fields: list[Any], limit_bytes: int | None) -> BaseException:
    """The error of an ERROR frame the agent sent for ``task``, its traceback as ``__cause__``.

    ``fields`` are the frame's ``[exception or None, traceback text, type
    name, message, flags]``; the flags mark a MemoryError at the agent's hard
    cap (``FLAG_MEMORY``) and a timeout the agent enforced (``FLAG_TIMEOUT``).
    """
    exc_obj, tb, type_name, message, flags = fields
    err: BaseException
    if flags & FLAG_MEMORY:
        err = memory_exceeded(agent, task, limit_bytes, reported=message or "MemoryError")
    elif isinstance(exc_obj, BaseException):
        err = exc_obj
    else:
        err = TaskError(f"task {task.id} ({task.fn_name}) raised {type_name}: {message}", task_id=task.id, fn=task.fn_name)
    err.__cause__ = RemoteTraceback(tb)
    if flags & FLAG_TIMEOUT and isinstance(err, TaskTimeout):
        err.agent_id = agent.id
    return err


def initializer_failed(fields: list[Any]) -> PoolBroken:
    """The pool's error when the agent initializer raised (an ERROR frame for task 0)."""
    exc_obj, tb, type_name, message, _flags = fields
    broken = errors.PoolBroken(
        f"the agent initializer failed with {type_name}: {message}; agents cannot start, so every "
        "pending and later task fails; fix the initializer or its initargs"
    )
    broken.__cause__ = exc_obj if isinstance(exc_obj, BaseException) else RemoteTraceback(tb)
    if isinstance(exc_obj, BaseException):
        exc_obj.__cause__ = RemoteTraceback(tb)
    return broken


def arguments_too_big(task: Task, nbytes: int, limit_bytes: int) -> MemoryLimitExceeded:
    """A task whose encoded arguments alone exceed the agents' memory limit."""
    return MemoryLimitExceeded(
        f"task {task.id} ({task.fn_name}) was not sent: its arguments encode to {format_bytes(nbytes)}, "
        f"more than an agent may hold (limits.per_agent = {format_bytes(limit_bytes)}); share big read-only "
        "data once with g.share(), pass a path, or raise limits.per_agent",
        task_id=task.id,
        fn=task.fn_name,
        limit_bytes=limit_bytes,
        peak_bytes=nbytes,
    )


def agents_die_at_start(why: str) -> PoolBroken:
    """The pool's error when agents with an initializer keep dying before they are ready."""
    return errors.PoolBroken(
        f"{why}, with an agent initializer configured; it may be what kills them (a crash, "
        "os._exit or a signal, which cannot be reported as an exception). Agents cannot start, "
        "so every pending and later task fails; fix the initializer or its initargs"
    )


def _who(agent: AgentHandle, task: Task) -> dict[str, Any]:
    """The facts every agent error carries: which task, which agent."""
    return {"task_id": task.id, "fn": task.fn_name, "agent_id": agent.id, "pid": agent.pid}


def _runtime_s(task: Task, now: float | None) -> float | None:
    return (now - task.started_at) if task.started_at and now is not None else None
