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
carried out (``supervisor``). Records are slotted, with ``__init__`` written
out (``_records``): tens of thousands are made per second on a busy pool,
and the dozens of classes here would cost ~12 ms at import as dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from guildcore._records import Frozen, Record
from guildcore.engine.task import Task

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.monitor import Readings, Transition

# ---------------------------------------------------------------- events


class Submitted(Record):
    """Tasks from a caller thread (``Guild.submit``, a map's chunks)."""

    _fields = ("tasks",)
    __slots__ = _fields
    tasks: list[Task]

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks


class FrameIn(Record):
    """A frame an agent sent, decoded: ``[kind, task_id, *fields]``."""

    _fields = ("agent_id", "kind", "task_id", "fields")
    __slots__ = _fields
    agent_id: int
    kind: int
    task_id: int
    fields: list[Any]

    def __init__(self, agent_id: int, kind: int, task_id: int, fields: list[Any]) -> None:
        self.agent_id = agent_id
        self.kind = kind
        self.task_id = task_id
        self.fields = fields


class FrameBad(Record):
    """Bytes from an agent that are no usable frame.

    ``kind`` and ``task_id`` are set when the frame's head could be read:
    a RESULT or ERROR whose value failed to decode here (a class missing in
    this process, an unpickling hook that raises or exits) fails its task
    and keeps the agent; anything else is a malformed frame and kills it.
    """

    _fields = ("agent_id", "why", "kind", "task_id", "error")
    __slots__ = _fields
    agent_id: int
    why: str
    kind: int | None
    task_id: int | None
    error: BaseException | None

    def __init__(
        self,
        agent_id: int,
        why: str,
        kind: int | None = None,
        task_id: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.why = why
        self.kind = kind
        self.task_id = task_id
        self.error = error


class AgentStarted(Record):
    _fields = ("agent_id", "pid")
    __slots__ = _fields
    agent_id: int
    pid: int

    def __init__(self, agent_id: int, pid: int) -> None:
        self.agent_id = agent_id
        self.pid = pid


class AgentStartFailed(Record):
    _fields = ("agent_id", "why")
    __slots__ = _fields
    agent_id: int
    why: str

    def __init__(self, agent_id: int, why: str) -> None:
        self.agent_id = agent_id
        self.why = why


class AgentExited(Record):
    """The agent's process ended (its sentinel fired); every frame it sent came before."""

    _fields = ("agent_id", "exitcode")
    __slots__ = _fields
    agent_id: int
    exitcode: int | None

    def __init__(self, agent_id: int, exitcode: int | None) -> None:
        self.agent_id = agent_id
        self.exitcode = exitcode


class AgentPipeClosed(Record):
    """The agent's pipe reached its end while its process still runs."""

    _fields = ("agent_id",)
    __slots__ = _fields
    agent_id: int

    def __init__(self, agent_id: int) -> None:
        self.agent_id = agent_id


class MemorySampled(Record):
    """Private memory read for agents (``SampleMemory``); None where unreadable."""

    _fields = ("readings",)
    __slots__ = _fields
    readings: list[tuple[int, int | None]]

    def __init__(self, readings: list[tuple[int, int | None]]) -> None:
        self.readings = readings


class CreditGranted(Record):
    """A stream's consumer took chunks: ``n`` more may come."""

    _fields = ("task", "n")
    __slots__ = _fields
    task: Task
    n: int

    def __init__(self, task: Task, n: int) -> None:
        self.task = task
        self.n = n


class StreamCancelled(Record):
    """A stream's consumer closed it."""

    _fields = ("task",)
    __slots__ = _fields
    task: Task

    def __init__(self, task: Task) -> None:
        self.task = task


class ShutdownRequested(Record):
    _fields = ("cancel_futures", "kill")
    __slots__ = _fields
    cancel_futures: bool
    kill: bool

    def __init__(self, cancel_futures: bool, kill: bool) -> None:
        self.cancel_futures = cancel_futures
        self.kill = kill


class CallRequested(Record):
    """Run ``fn`` on the owner thread (to read pool state safely) and set ``future``."""

    _fields = ("fn", "future")
    __slots__ = _fields
    fn: Callable[[], Any]
    future: Future[Any]

    def __init__(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        self.fn = fn
        self.future = future


class InlineFinished(Record):
    """The inline runner ended a task: ``ok`` and the value, or the exception.

    For a stream the runner only hands the generator to the consumer; this
    event comes when the consumer ends the stream, ``cancelled`` if it
    closed it early.
    """

    _fields = ("task", "ok", "value", "cancelled")
    __slots__ = _fields
    task: Task
    ok: bool
    value: Any
    cancelled: bool

    def __init__(self, task: Task, ok: bool, value: Any, cancelled: bool = False) -> None:
        self.task = task
        self.ok = ok
        self.value = value
        self.cancelled = cancelled


class ResultFetched(Record):
    """A result that came through shared memory (or as a stream) was read out."""

    _fields = ("task", "ok", "value")
    __slots__ = _fields
    task: Task
    ok: bool
    value: Any

    def __init__(self, task: Task, ok: bool, value: Any) -> None:
        self.task = task
        self.ok = ok
        self.value = value


class Admission(Frozen):
    """How much of the pool may take new work, set by whoever watches memory.

    ``working_agents``: at most this many agents take new tasks (1 is the
    sequential mode); the others finish what they hold and stop, down to
    ``min_agents``. ``may_start``: False forbids starting agents (no
    headroom for one more ``per_agent``); the pool runs on those it has.
    The default admits everything.
    """

    _fields = ("working_agents", "may_start")
    __slots__ = _fields
    working_agents: int | None
    may_start: bool

    def __init__(self, working_agents: int | None = None, may_start: bool = True) -> None:
        self._set("working_agents", working_agents)
        self._set("may_start", may_start)


class AdmissionChanged(Record):
    """Limits on taking work, from a memory monitor: see ``Admission``."""

    _fields = ("admission", "reason")
    __slots__ = _fields
    admission: Admission
    reason: str

    def __init__(self, admission: Admission, reason: str) -> None:
        self.admission = admission
        self.reason = reason


class StopIdleAgents(Record):
    """Stop the agents idle now, down to ``min_agents`` (a memory monitor's cleanup)."""

    _fields = ("reason",)
    __slots__ = _fields
    reason: str

    def __init__(self, reason: str) -> None:
        self.reason = reason


class MonitorRead:
    """The monitor's probe was read (``ReadMonitor``); ``readings`` None if the read failed."""

    __slots__ = ("readings",)

    def __init__(self, readings: Readings | None) -> None:
        self.readings = readings


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
    | MonitorRead
)

# ---------------------------------------------------------------- actions


class Send(Record):
    """Write an encoded frame to the agent's pipe."""

    _fields = ("agent_id", "frame", "reason")
    __slots__ = _fields
    agent_id: int
    frame: bytes
    reason: str

    def __init__(self, agent_id: int, frame: bytes, reason: str) -> None:
        self.agent_id = agent_id
        self.frame = frame
        self.reason = reason


class SignalAgent(Record):
    _fields = ("agent_id", "signum", "reason")
    __slots__ = _fields
    agent_id: int
    signum: int
    reason: str

    def __init__(self, agent_id: int, signum: int, reason: str) -> None:
        self.agent_id = agent_id
        self.signum = signum
        self.reason = reason


class StartAgent(Record):
    """Start agent ``agent_id``; answer with ``AgentStarted`` or ``AgentStartFailed``."""

    _fields = ("agent_id", "reason")
    __slots__ = _fields
    agent_id: int
    reason: str

    def __init__(self, agent_id: int, reason: str) -> None:
        self.agent_id = agent_id
        self.reason = reason


class SampleMemory(Record):
    """Read these agents' private memory; answer with ``MemorySampled``."""

    _fields = ("agent_ids",)
    __slots__ = _fields
    agent_ids: list[int]

    def __init__(self, agent_ids: list[int]) -> None:
        self.agent_ids = agent_ids


class FetchResult(Record):
    """Read a result out of shared memory (or wrap it as a stream); answer with ``ResultFetched``."""

    _fields = ("task", "fields")
    __slots__ = _fields
    task: Task
    fields: list[Any]

    def __init__(self, task: Task, fields: list[Any]) -> None:
        self.task = task
        self.fields = fields


class DiscardResult(Record):
    """Unlink the result segment of a task nobody will read (it failed, or was cancelled)."""

    _fields = ("task_id",)
    __slots__ = _fields
    task_id: int

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id


class Resolve(Record):
    """The task is DONE: set its future's result, then run its ``on_done``."""

    _fields = ("task", "value")
    __slots__ = _fields
    task: Task
    value: Any

    def __init__(self, task: Task, value: Any) -> None:
        self.task = task
        self.value = value


class Fail(Record):
    """The task FAILED: set its future's exception, then run its ``on_done``."""

    _fields = ("task", "error")
    __slots__ = _fields
    task: Task
    error: BaseException

    def __init__(self, task: Task, error: BaseException) -> None:
        self.task = task
        self.error = error


class Cancel(Record):
    """The task is CANCELLED: cancel its future (or fail it with ``error`` if it ran)."""

    _fields = ("task", "error")
    __slots__ = _fields
    task: Task
    error: BaseException

    def __init__(self, task: Task, error: BaseException) -> None:
        self.task = task
        self.error = error


class RunInline(Record):
    """Run the task in the supervisor's process (the inline runner); answer with ``InlineFinished``."""

    _fields = ("task",)
    __slots__ = _fields
    task: Task

    def __init__(self, task: Task) -> None:
        self.task = task


class RunCall(Record):
    _fields = ("fn", "future")
    __slots__ = _fields
    fn: Callable[[], Any]
    future: Future[Any]

    def __init__(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        self.fn = fn
        self.future = future


class Warn(Record):
    """A ``RuntimeWarning`` for the caller (once per cause)."""

    _fields = ("message",)
    __slots__ = _fields
    message: str

    def __init__(self, message: str) -> None:
        self.message = message


class Log(Record):
    _fields = ("level", "message")
    __slots__ = _fields
    level: int
    message: str

    def __init__(self, level: int, message: str) -> None:
        self.level = level
        self.message = message


class TaskMoved(Record):
    """Record: a task changed state (``old`` -> ``new``) for ``reason``."""

    _fields = (
        "task_id", "fn_name", "old", "new", "reason", "agent_id", "queued", "error", "n_items",
        "part",
    )  # fmt: skip
    __slots__ = _fields
    task_id: int
    fn_name: str
    old: str
    new: str
    reason: str
    agent_id: int | None
    queued: int  # tasks in the queue after the move
    error: str | None  # the error type's name, for FAILED and RETRYING
    n_items: int
    part: bool  # a part of a split chunk (its chunk is the task callers see)

    def __init__(
        self,
        task_id: int,
        fn_name: str,
        old: str,
        new: str,
        reason: str,
        agent_id: int | None,
        queued: int,
        error: str | None = None,
        n_items: int = 1,
        part: bool = False,
    ) -> None:
        self.task_id = task_id
        self.fn_name = fn_name
        self.old = old
        self.new = new
        self.reason = reason
        self.agent_id = agent_id
        self.queued = queued
        self.error = error
        self.n_items = n_items
        self.part = part


class AgentMoved(Record):
    """Record: an agent changed state (``old`` -> ``new``) for ``reason``."""

    _fields = ("agent_id", "pid", "old", "new", "reason", "began", "cause", "exitcode")
    __slots__ = _fields
    agent_id: int
    pid: int | None
    old: str
    new: str
    reason: str
    began: bool  # it had sent READY (False: died or stopped while starting)
    cause: tuple[str, object] | None  # why the supervisor ended it (lifecycle.MEMORY, ...)
    exitcode: int | None  # for STOPPED and DEAD

    def __init__(
        self,
        agent_id: int,
        pid: int | None,
        old: str,
        new: str,
        reason: str,
        began: bool = True,
        cause: tuple[str, object] | None = None,
        exitcode: int | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.pid = pid
        self.old = old
        self.new = new
        self.reason = reason
        self.began = began
        self.cause = cause
        self.exitcode = exitcode


class TaskRan(Record):
    """Record: an agent's own timing of a task (its STATS frame: run s, CPU s, start)."""

    _fields = ("task_id", "agent_id", "fields")
    __slots__ = _fields
    task_id: int
    agent_id: int
    fields: list[Any]

    def __init__(self, task_id: int, agent_id: int, fields: list[Any]) -> None:
        self.task_id = task_id
        self.agent_id = agent_id
        self.fields = fields


class MemoryNoted(Record):
    """Record: an agent's private memory (above its baseline) and its peak so far."""

    _fields = ("agent_id", "private_bytes", "peak_bytes")
    __slots__ = _fields
    agent_id: int
    private_bytes: int
    peak_bytes: int

    def __init__(self, agent_id: int, private_bytes: int, peak_bytes: int) -> None:
        self.agent_id = agent_id
        self.private_bytes = private_bytes
        self.peak_bytes = peak_bytes


# ---------------------------------------------------------------- the monitor's actions
# Plain slotted classes: made a few times a second at most, and no dataclass
# machinery to pay for at import.


class ReadMonitor:
    """Read the monitor's probe for these agents (pid -> private bytes at start); answer with ``MonitorRead``."""

    __slots__ = ("baselines",)

    def __init__(self, baselines: dict[int, int]) -> None:
        self.baselines = baselines


class ShrinkCaches:
    """Cut the supervisor's in-process cache tiers to ``keep`` of what they hold (0: empty them)."""

    __slots__ = ("keep", "reason")

    def __init__(self, keep: float, reason: str) -> None:
        self.keep = keep
        self.reason = reason


class SetCaching:
    """The supervisor's caches: writes on or off, in-process budget at ``budget`` of the configured one."""

    __slots__ = ("budget", "reason", "writes")

    def __init__(self, writes: bool, budget: float, reason: str) -> None:
        self.writes = writes
        self.budget = budget
        self.reason = reason


class ReleaseMemory:
    """Collect garbage and give free heap pages back to the OS, in the supervisor's process."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ModeChanged:
    """The monitor changed mode: log it, and raise an alert if ``alert`` (``monitoring.alerts``).

    Not only a record: its log line and alert are for people, so it is
    made whether or not anyone observes. ``pressure`` and ``threshold`` are
    fractions (of ``limits.total_system``, ``limits.cache_size`` or the host).
    """

    __slots__ = ("alert", "pressure", "threshold", "transition")

    def __init__(self, transition: Transition, alert: bool, pressure: float, threshold: float) -> None:
        self.transition = transition
        self.alert = alert
        self.pressure = pressure
        self.threshold = threshold


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
    | ReadMonitor
    | ShrinkCaches
    | SetCaching
    | ReleaseMemory
    | ModeChanged
)
