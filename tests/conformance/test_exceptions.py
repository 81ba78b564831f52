"""Exception types: ``GuildExecutor`` raises what ``ProcessPoolExecutor`` raises.

Every case runs against the real ``ProcessPoolExecutor`` too, in the same
test, so the expectation is the stdlib's behaviour, not our reading of it.
An instance of the same type is enough (guildcore raises a subclass that
carries its own facts as well). ``Guild`` keeps guildcore's own types.
"""

from __future__ import annotations

import copyreg
import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cfwork
import pytest

from guildcore import Guild, GuildExecutor, SerializationError

pytestmark = pytest.mark.timeout(60)

EXECUTORS: dict[str, Callable[[], Executor]] = {
    "ProcessPoolExecutor": lambda: ProcessPoolExecutor(1),
    "GuildExecutor": lambda: GuildExecutor(1),
}

# (name, function, argument factory, the stdlib's exception type)
CASES: list[tuple[str, Callable[..., Any], Callable[[], tuple[Any, ...]], type[BaseException]]] = [
    ("argument refuses pickle", cfwork.identity, lambda: (cfwork.RefusesPickle(),), pickle.PicklingError),
    ("argument holds a lock", cfwork.identity, lambda: (cfwork.HoldsLock(),), TypeError),
    ("result refuses pickle", cfwork.make, lambda: ("refuses",), pickle.PicklingError),
    ("result holds a lock", cfwork.make, lambda: ("lock",), TypeError),
    ("result calls sys.exit when pickled", cfwork.make, lambda: ("exits",), SystemExit),
    ("argument cannot be unpickled", cfwork.identity, lambda: (cfwork.RefusesUnpickle(),), BrokenProcessPool),
    ("result cannot be unpickled", cfwork.make, lambda: ("unpickle",), BrokenProcessPool),
    ("multiprocessing.Event argument", cfwork.identity, lambda: (multiprocessing.Event(),), RuntimeError),
    ("result is a generator", cfwork.numbers, lambda: (3,), TypeError),
]


def _raised(ex: Executor, fn: Callable[..., Any], args: tuple[Any, ...]) -> BaseException:
    future = ex.submit(fn, *args)
    try:
        future.result(timeout=30)
    except BaseException as exc:  # SystemExit included: that is the point
        return exc
    raise AssertionError(f"{fn.__name__}{args!r} did not fail")


@pytest.mark.parametrize("executor", list(EXECUTORS))
@pytest.mark.parametrize(("name", "fn", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_same_exception_type_as_the_stdlib(
    executor: str, name: str, fn: Callable[..., Any], args: Callable[[], tuple[Any, ...]], expected: type[BaseException]
) -> None:
    with EXECUTORS[executor]() as ex:
        exc = _raised(ex, fn, args())
    assert isinstance(exc, expected), f"{executor}: {name}: {type(exc).__mro__} is not a {expected.__name__}"
    # Importing distributed (the Dask backend's tests) installs tblib's
    # exception pickling for the whole process, which loses SystemExit.code
    # on the stdlib's way back; guildcore's own way keeps it.
    stdlib_pickling = SystemExit not in copyreg.dispatch_table
    if expected is SystemExit and (executor != "ProcessPoolExecutor" or stdlib_pickling):
        assert isinstance(exc, SystemExit) and exc.code == 3


def test_pickling_errors_carry_the_objects_own_error_and_guildcore_facts() -> None:
    with GuildExecutor(1) as ex:
        exc = _raised(ex, cfwork.identity, (cfwork.RefusesPickle(),))
    assert isinstance(exc, SerializationError) and isinstance(exc, pickle.PicklingError)
    assert "RefusesPickle refuses to be pickled" in str(exc)
    assert "cfwork:identity" in str(exc)


# Guild keeps guildcore's own types: SerializationError (a TypeError) with the facts.
GUILD_CASES = [
    ("argument refuses pickle", cfwork.identity, (cfwork.RefusesPickle(),), SerializationError, "cannot be sent to an agent"),
    ("result refuses pickle", cfwork.make, ("refuses",), SerializationError, "cannot be sent back"),
    ("result calls sys.exit when pickled", cfwork.make, ("exits",), SerializationError, r"SystemExit: 3"),
    ("argument cannot be unpickled", cfwork.identity, (cfwork.RefusesUnpickle(),), SerializationError, "cannot be decoded in the agent"),
    ("result cannot be unpickled", cfwork.make, ("unpickle",), SerializationError, "could not be decoded in the caller"),
    ("result is a generator", cfwork.numbers, (3,), SerializationError, r"g\.stream\("),
]


@pytest.mark.parametrize(("name", "fn", "args", "expected", "match"), GUILD_CASES, ids=[c[0] for c in GUILD_CASES])
def test_guild_keeps_its_own_types(
    name: str, fn: Callable[..., Any], args: tuple[Any, ...], expected: type[BaseException], match: str
) -> None:
    with Guild(max_agents=1) as g:
        with pytest.raises(expected, match=match):
            g.submit(fn, *args).result(timeout=30)
        assert g.submit(cfwork.square, 7).result(timeout=30) == 49  # the Guild goes on
