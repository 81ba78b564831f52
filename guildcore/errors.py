"""The one exception hierarchy of guildcore.

Every failure a user can see is a ``GuildError`` whose message says, in this
order: what happened, the facts with units, the likely cause, the setting or
action that fixes it. Errors carry their facts as attributes too, so code can
react without parsing text.

    GuildError
     ├── ConfigError            bad setting or argument: file, line, key path, value, hint
     │    └── ConfigTypeError   of the wrong type (also builtins.TypeError)
     ├── SerializationError     a value the codec cannot encode or a bad frame
     ├── ContextError           shared context: too big, unencodable, unlinked
     ├── CacheError             a cache store that cannot be opened or used
     ├── TaskError              something went wrong with one task
     │    ├── TaskTimeout       (also builtins.TimeoutError)
     │    ├── TaskCancelled     (also concurrent.futures.CancelledError)
     │    └── AgentError        the agent running the task failed
     │         ├── AgentDied    (also BrokenProcessPool)
     │         └── MemoryLimitExceeded
     ├── PoolBroken             agents cannot start at all (also BrokenProcessPool)
 ├── ProcessFailed          a step of a process failed: the partial run, each failure
     └── ShutdownError          work submitted after shutdown (also RuntimeError)

Where the stdlib's contract names a builtin type, the guildcore error is
also an instance of it: ``ConfigError`` is a ``ValueError``,
``SerializationError`` a ``TypeError`` (and, for a value that failed to
pickle, an instance of the error the value raised), ``ShutdownError`` a
``RuntimeError``. The few builtin errors raised on purpose are protocol
answers (``KeyError`` from a mapping, ``AttributeError`` from
``__getattr__``, ``ValueError`` from a closed stream), never failures.

``AgentDied`` and ``PoolBroken`` subclass
``concurrent.futures.process.BrokenProcessPool`` (a ``BrokenExecutor``), so
code written for the stdlib keeps catching them.

Most classes live in ``guildcore._errors``, which agents import without
pulling in ``concurrent.futures``; this module adds the three with stdlib
executor parents. ``AgentDied`` and ``PoolBroken`` are defined in
``guildcore._broken`` and loaded when first named here (PEP 562): their
parent's module imports ``multiprocessing`` (~15 ms), which a script's
first result does not otherwise need. Import errors from here.
"""

from __future__ import annotations

from concurrent.futures import CancelledError

from guildcore._errors import (
    AgentError,
    CacheError,
    ConfigError,
    ConfigTypeError,
    ContextError,
    GuildError,
    MemoryLimitExceeded,
    RemoteTraceback,
    SerializationError,
    ShutdownError,
    TaskError,
    TaskTimeout,
    _rebuild,  # older pickles of errors name it here
    _rebuild_serialization,  # noqa: F401  # pickles of errors may name it here
    describe_exitcode,
    format_bytes,
)

__all__ = [
    "AgentDied",
    "AgentError",
    "CacheError",
    "ConfigError",
    "ConfigTypeError",
    "ContextError",
    "GuildError",
    "MemoryLimitExceeded",
    "PoolBroken",
    "ProcessFailed",
    "RemoteTraceback",
    "SerializationError",
    "ShutdownError",
    "TaskCancelled",
    "TaskError",
    "TaskTimeout",
    "describe_exitcode",
    "format_bytes",
]


class TaskCancelled(TaskError, CancelledError):
    """A task was cancelled before it finished (shutdown, Ctrl-C, a closed stream)."""


class ProcessFailed(GuildError):
    """One or more steps of a process failed; the steps that could finish did.

    ``run`` is the partial ``ProcessRun`` (outputs of the steps that finished,
    the step timeline); ``failures`` maps each failed step to its exception,
    which is also the ``__cause__`` when one step failed.
    """

    def __init__(self, message: str, *, run: object = None, failures: dict[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.run = run
        self.failures = dict(failures or {})

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


TYPE_CHECKING = False  # mypy reads this name as typing's
if TYPE_CHECKING:
    from guildcore._broken import AgentDied, PoolBroken
else:

    def __getattr__(name: str) -> object:
        if name in ("AgentDied", "PoolBroken"):
            from guildcore import _broken

            value = getattr(_broken, name)
            globals()[name] = value  # later lookups skip __getattr__
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
