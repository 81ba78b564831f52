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


def add(a: int, b: int) -> int:
    return a + b


def pid(_: object = None) -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


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
