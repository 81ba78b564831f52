"""The part of the error hierarchy that agents need, without stdlib executor parents.

Agents raise and encode these (``SerializationError``, ``TaskTimeout``,
``ContextError``), so the modules an agent imports take them from here.
``guildcore.errors`` is the public home of every error and adds the three
whose parents live in ``concurrent.futures`` (``TaskCancelled``,
``AgentDied``, ``PoolBroken``): importing ``concurrent.futures.process``
costs every agent about 0.8 MB of private memory and 6 ms of start-up for
classes it never raises. Each class here names ``guildcore.errors`` as its
module, so tracebacks and pickles show the public path.

This module imports nothing of guildcore's.
"""

from __future__ import annotations

import signal


def format_bytes(n: float | None) -> str:
    """Render a byte count the way the messages do: ``131.2 MB``."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def describe_exitcode(exitcode: int | None) -> str:
    """Say how an agent ended: ``exit code 3`` or ``signal SIGKILL (-9)``."""
    if exitcode is None:
        return "no exit code (still running or unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"signal {name} ({exitcode})"
    return f"exit code {exitcode}"


class GuildError(Exception):
    """Base of every error guildcore raises on purpose."""


class ConfigError(GuildError, ValueError):
    """A setting is unknown, of the wrong type or impossible.

    ``source`` is the file (or ``environment`` / ``keyword arguments``),
    ``line`` the line in that file where known, ``key`` the dotted key path.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
        value: object = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.key = key
        self.value = value


class ConfigTypeError(ConfigError, TypeError):
    """A setting or argument of the wrong type (also a ``TypeError``, as Python's own are)."""


class SerializationError(GuildError, TypeError):
    """A value cannot be encoded, or bytes received are not a valid frame.

    ``stage`` says which value: ``"arguments"``, ``"result"`` or None;
    ``decoding`` whether reading it failed (rather than writing it);
    ``original`` is the exception the value itself raised, when it travels.

    Code written for the stdlib catches the error the object raised while
    it was pickled (``pickle.PicklingError``, ``TypeError: cannot pickle
    ...``, ``RuntimeError`` for a ``multiprocessing.Event``): ``because``
    makes an error that is a ``SerializationError`` and an instance of that
    type too, so both ``except`` clauses match.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        decoding: bool = False,
        original: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.decoding = decoding
        self.original = original

    @classmethod
    def because(
        cls, message: str, raised: BaseException, *, stage: str | None = None, decoding: bool = False
    ) -> SerializationError:
        """The error for a value that raised ``raised``; also an instance of its type.

        ``raised`` may itself be a ``SerializationError`` (from the codec):
        the value's own exception is then taken from it.
        """
        if isinstance(raised, SerializationError):
            stage = stage or raised.stage
            decoding = decoding or raised.decoding
            original = raised.original
        else:
            original = raised
        mixed = _also(type(original)) if original is not None and not decoding else SerializationError
        return mixed(message, stage=stage, decoding=decoding, original=original)

    def also(self, extra: type[BaseException]) -> SerializationError:
        """This error, as an instance of ``extra`` too (``BrokenProcessPool`` for the stdlib face)."""
        twin = _also(extra)(*self.args)
        twin.__dict__.update(self.__dict__)
        twin.__cause__ = self.__cause__
        return twin

    def __reduce__(self) -> tuple[object, ...]:
        # The mixed-in type and the original travel when they pickle (by
        # reference); otherwise the error arrives as a plain one.
        import pickle

        extra = next((b for b in type(self).__bases__ if b is not SerializationError), None)
        state = dict(self.__dict__)
        for name, value in (("extra", extra), ("original", state.get("original"))):
            try:
                pickle.dumps(value)
            except Exception:
                if name == "extra":
                    extra = None
                else:
                    state["original"] = None
        return (_rebuild_serialization, (extra, self.args, state))


# Mixed classes made by SerializationError.because/also, one per extra type.
_ALSO: dict[type[BaseException], type[SerializationError]] = {}


def _also(extra: type[BaseException]) -> type[SerializationError]:
    """``SerializationError`` that is also an ``extra``, where Python allows it.

    Only ``Exception`` types are mixed in: a ``SerializationError`` that is a
    ``SystemExit`` would escape ``except Exception``. A type that cannot be
    a base (a layout conflict, a final class) leaves the plain error.
    """
    if issubclass(SerializationError, extra) or not issubclass(extra, Exception):
        return SerializationError
    mixed = _ALSO.get(extra)
    if mixed is None:
        try:
            mixed = type("SerializationError", (SerializationError, extra), {"__module__": "guildcore.errors"})
        except TypeError:
            return SerializationError
        _ALSO[extra] = mixed
    return mixed


def _rebuild_serialization(
    extra: type[BaseException] | None, args: tuple[object, ...], state: dict[str, object]
) -> SerializationError:
    cls = _also(extra) if extra is not None else SerializationError
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class ContextError(GuildError):
    """Shared context cannot be written, attached or read."""


class CacheError(GuildError):
    """A cache store cannot be opened or used, and could not be rebuilt."""


class TaskError(GuildError):
    """Something went wrong with one task; ``task_id`` and ``fn`` say which.

    ``address`` names the Dask worker involved, for tasks run on Dask.
    """

    address: str | None = None

    def __init__(self, message: str, *, task_id: int | None = None, fn: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.fn = fn

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the fields across pickling (errors travel between processes).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]) -> BaseException:
    try:
        err = cls.__new__(cls)
    except TypeError:
        # MemoryLimitExceeded: lookup finds MemoryError.__new__, which refuses
        # a subclass whose first base is a Python class. BaseException's is safe.
        err = BaseException.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class TaskTimeout(TaskError, TimeoutError):
    """A task ran past its timeout (``limits.timeout`` or ``submit(timeout=)``)."""

    def __init__(
        self,
        message: str,
        *,
        task_id: int | None = None,
        fn: str | None = None,
        timeout_s: float | None = None,
        agent_id: int | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, fn=fn)
        self.timeout_s = timeout_s
        self.agent_id = agent_id


class AgentError(TaskError):
    """The agent running a task failed; carries the agent's post-mortem facts."""

    def __init__(
        self,
        message: str,
        *,
        task_id: int | None = None,
        fn: str | None = None,
        agent_id: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        runtime_s: float | None = None,
        private_bytes: int | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, fn=fn)
        self.agent_id = agent_id
        self.pid = pid
        self.exitcode = exitcode
        self.runtime_s = runtime_s
        self.private_bytes = private_bytes


class MemoryLimitExceeded(AgentError, MemoryError):
    """An agent's private memory went past ``limits.per_agent``; it was replaced."""

    def __init__(
        self,
        message: str,
        *,
        limit_bytes: int | None = None,
        peak_bytes: int | None = None,
        **facts: object,
    ) -> None:
        super().__init__(message, **facts)  # type: ignore[arg-type]
        self.limit_bytes = limit_bytes
        self.peak_bytes = peak_bytes


class ShutdownError(GuildError, RuntimeError):
    """Work was submitted to a Guild that is shut down or shutting down."""


class RemoteTraceback(Exception):
    """Carries an agent-side traceback as the ``__cause__`` of a re-raised error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


# The public path, for tracebacks and pickles (guildcore.errors re-exports all).
for _cls in [v for v in globals().values() if isinstance(v, type) and issubclass(v, BaseException)]:
    _cls.__module__ = "guildcore.errors"
del _cls
