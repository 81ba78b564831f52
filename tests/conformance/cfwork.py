"""Functions and values the conformance tests send to agents and workers.

Module-level, so that both ``ProcessPoolExecutor`` workers and guildcore
agents can import them by reference.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time

from faults import add, fail, pid  # noqa: F401  # the tests call them as cfwork.add, ...


class RefusesPickle:
    """Pickling raises the object's own ``PicklingError``."""

    def __reduce__(self) -> tuple[object, ...]:
        raise pickle.PicklingError("RefusesPickle refuses to be pickled")


class HoldsLock:
    """Pickling raises ``TypeError: cannot pickle '_thread.lock' object``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


class ExitsWhenPickled:
    """Pickling calls ``sys.exit(3)``."""

    def __reduce__(self) -> tuple[object, ...]:
        sys.exit(3)


def _refuse_unpickle() -> None:
    raise ValueError("this value cannot be unpickled")


class RefusesUnpickle:
    """Pickles fine; unpickling raises ``ValueError``."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_unpickle, ())


def identity(x: object) -> object:
    return x


def make(kind: str) -> object:
    return {"refuses": RefusesPickle, "lock": HoldsLock, "exits": ExitsWhenPickled, "unpickle": RefusesUnpickle}[kind]()


def numbers(n: int) -> object:
    yield from range(n)


def square(x: int) -> int:
    return x * x


def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def wait_for_file(path: str) -> str:
    """Block until ``path`` exists (the test creates it): a release, not a sleep."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return path


def exit_hard(code: int) -> None:
    os._exit(code)


def failing_init() -> None:
    raise ValueError("the initializer failed")


def start_method(_: object = None) -> str:
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=True) or "?"


MARK = "unset"  # the tests set it in the caller: a forked worker sees the caller's value


def whoami(_: object = None) -> tuple[int, int, str]:
    """``(pid, parent pid, MARK)`` of the worker running this."""
    return os.getpid(), os.getppid(), MARK


def exit_when(path: str) -> None:
    """Exit the worker abruptly once ``path`` exists: a death the test controls."""
    wait_for_file(path)
    os._exit(7)


def record_init(folder: str) -> None:
    """An initializer that leaves a file named after its worker's pid."""
    open(os.path.join(folder, str(os.getpid())), "w").close()


def started_then_wait(started: str, release: str) -> str:
    """Say the task began (create ``started``), then wait for ``release``."""
    open(started, "w").close()
    return wait_for_file(release)


def wait_until_exists(path: str, timeout_s: float = 30.0) -> None:
    """Caller side: block until a task created ``path``, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not created within {timeout_s} s")
        time.sleep(0.005)


def wait_until(predicate: object, timeout_s: float = 30.0) -> None:
    """Caller side: block until ``predicate()`` holds, with a deadline.

    For states no waiter hears of: ``Future.cancel()`` does not wake
    ``concurrent.futures.wait`` (only set_running_or_notify_cancel does).
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{predicate!r} did not hold within {timeout_s} s")
        time.sleep(0.005)
