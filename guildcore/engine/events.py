"""What goes into the supervisor's state machine, and what comes out.

This module covers two families of small records:

- **events** (stimuli): something happened that the machine must account
  for. The owner loop makes them from what it sees (a frame read, a
  sentinel, a request from a caller thread, the result of an action it
  carried out) and feeds them, with the clock reading, to
  ``Machine.handle_batch``.
- **actions** (instructions): something the loop must do, because only the
  loop does I/O: write a frame, signal an agent, start one, read memory,
  resolve a future. Each carries why. *Records* (``TaskMoved``,
  ``AgentMoved``, ``TaskRan``, ``MemoryNoted``) are actions with nothing to do: they
  exist for observers (metrics), and the machine makes them only while
  someone observes (``Machine.trace``).

It does not cover what an event causes (``machine``) nor how an action is
carried out (``supervisor``). Records are plain slotted dataclasses: tens of
thousands are made per second on a busy pool.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from guildcore.engine.task import Task

# ---------------------------------------------------------------- events


@dataclass(slots=True)
class Submitted:
    """Tasks from a caller thread (``Guild.submit``, a map's chunks)."""

    tasks: list[Task]


@dataclass(slots=True)
class FrameIn:
    """A frame an agent sent, decoded: ``[kind, task_id, *fields]``."""

    agent_id: int
    kind: int
    task_id: int
    fields: list[Any]


@dataclass(slots=True)
class FrameBad:
    """Bytes from an agent that are no usable frame.

    ``kind`` and ``task_id`` are set when the frame's head could be read:
    a RESULT or ERROR whose value failed to decode here (a class missing in
    this process, an unpickling hook that raises or exits) fails its task
    and keeps the agent; anything else is a malformed frame and kills it.
    """

    agent_id: int
    why: str
    kind: int | None = None
    task_id: int | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class AgentStarted:
    agent_id: int
    pid: int


@dataclass(slots=True)
class AgentStartFailed:
    agent_id: int
    why: str


@dataclass(slots=True)
class AgentExited:
    """The agent's process ended (its sentinel fired); every frame it sent came before."""

    agent_id: int
    exitcode: int | None


@dataclass(slots=True)
class AgentPipeClosed:
    """The agent's pipe reached its end while its process still runs."""

    agent_id: int


@dataclass(slots=True)
class MemorySampled:
    """Private memory read for agents (``SampleMemory``); None where unreadable."""

    readings: list[tuple[int, int | None]]


@dataclass(slots=True)
class CreditGranted:
    """A stream's consumer took chunks: ``n`` more may come."""

    task: Task
    n: int


@dataclass(slots=True)
class StreamCancelled:
    """A stream's consumer closed it."""

    task: Task


@dataclass(slots=True)
class ShutdownRequested:
    cancel_futures: bool
    kill: bool


@dataclass(slots=True)
class CallRequested:
    """Run ``fn`` on the owner thread (to read pool state safely) and set ``future``."""

    fn: Callable[[], Any]
    future: Future[Any]


@dataclass(slots=True)
class InlineFinished:
    """The inline runner ended a task: ``ok`` and the value, or the exception.

    For a stream the runner only hands the generator to the consumer; this
    event comes when the consumer ends the stream, ``cancelled`` if it
    closed it early.
    """

    task: Task
    ok: bool
    value: Any
    cancelled: bool = False


@dataclass(slots=True)
class ResultFetched:
    """A result that came through shared memory (or as a stream) was read out."""

    task: Task
    ok: bool
    value: Any


@dataclass(frozen=True, slots=True)
class Admission:
    """How much of the pool may take new work, set by whoever watches memory.

    ``working_agents``: at most this many agents take new tasks (1 is the
    sequential mode); the others finish what they hold and stop, down to
    ``min_agents``. ``may_start``: False forbids starting agents (no
    headroom for one more ``per_agent``); the pool runs on those it has.
    The default admits everything.
    """

    working_agents: int | None = None
    may_start: bool = True


@dataclass(slots=True)
class AdmissionChanged:
    """Limits on taking work, from a memory monitor: see ``Admission``."""

    admission: Admission
    reason: str


@dataclass(slots=True)
class StopIdleAgents:
    """Stop the agents idle now, down to ``min_agents`` (a memory monitor's cleanup)."""

    reason: str


Event = (
    Submitted
    | FrameIn
    | FrameBad
    | AgentStarted
    | AgentStartFailed
    | AgentExited
    | AgentPipeClosed
    | MemorySampled
    | CreditGranted
    | StreamCancelled
    | ShutdownRequested
    | CallRequested
    | InlineFinished
    | ResultFetched
    | AdmissionChanged
    | StopIdleAgents
)

# ---------------------------------------------------------------- actions


@dataclass(slots=True)
class Send:
    """Write an encoded frame to the agent's pipe."""

    agent_id: int
    frame: bytes
    reason: str


@dataclass(slots=True)
class SignalAgent:
    agent_id: int
    signum: int
    reason: str


@dataclass(slots=True)
class StartAgent:
    """Start agent ``agent_id``; answer with ``AgentStarted`` or ``AgentStartFailed``."""

    agent_id: int
    reason: str


@dataclass(slots=True)
class SampleMemory:
    """Read these agents' private memory; answer with ``MemorySampled``."""

    agent_ids: list[int]


@dataclass(slots=True)
class FetchResult:
    """Read a result out of shared memory (or wrap it as a stream); answer with ``ResultFetched``."""

    task: Task
    fields: list[Any]


@dataclass(slots=True)
class DiscardResult:
    """Unlink the result segment of a task nobody will read (it failed, or was cancelled)."""

    task_id: int


@dataclass(slots=True)
class Resolve:
    """The task is DONE: set its future's result, then run its ``on_done``."""

    task: Task
    value: Any


@dataclass(slots=True)
class Fail:
    """The task FAILED: set its future's exception, then run its ``on_done``."""

    task: Task
    error: BaseException


@dataclass(slots=True)
class Cancel:
    """The task is CANCELLED: cancel its future (or fail it with ``error`` if it ran)."""

    task: Task
    error: BaseException


@dataclass(slots=True)
class RunInline:
    """Run the task in the supervisor's process (the inline runner); answer with ``InlineFinished``."""

    task: Task


@dataclass(slots=True)
class RunCall:
    fn: Callable[[], Any]
    future: Future[Any]


@dataclass(slots=True)
class Warn:
    """A ``RuntimeWarning`` for the caller (once per cause)."""

    message: str


@dataclass(slots=True)
class Log:
    level: int
    message: str


@dataclass(slots=True)
class TaskMoved:
    """Record: a task changed state (``old`` -> ``new``) for ``reason``."""

    task_id: int
    fn_name: str
    old: str
    new: str
    reason: str
    agent_id: int | None
    queued: int  # tasks in the queue after the move
    error: str | None = None  # the error type's name, for FAILED and RETRYING
    n_items: int = 1
    part: bool = False  # a part of a split chunk (its chunk is the task callers see)


@dataclass(slots=True)
class AgentMoved:
    """Record: an agent changed state (``old`` -> ``new``) for ``reason``."""

    agent_id: int
    pid: int | None
    old: str
    new: str
    reason: str
    began: bool = True  # it had sent READY (False: died or stopped while starting)
    cause: tuple[str, object] | None = None  # why the supervisor ended it (lifecycle.MEMORY, ...)
    exitcode: int | None = None  # for STOPPED and DEAD


@dataclass(slots=True)
class TaskRan:
    """Record: an agent's own timing of a task (its STATS frame: run s, CPU s, start)."""

    task_id: int
    agent_id: int
    fields: list[Any]


@dataclass(slots=True)
class MemoryNoted:
    """Record: an agent's private memory (above its baseline) and its peak so far."""

    agent_id: int
    private_bytes: int
    peak_bytes: int


Action = (
    Send
    | SignalAgent
    | StartAgent
    | SampleMemory
    | FetchResult
    | DiscardResult
    | Resolve
    | Fail
    | Cancel
    | RunInline
    | RunCall
    | Warn
    | Log
    | TaskMoved
    | AgentMoved
    | TaskRan
    | MemoryNoted
)
