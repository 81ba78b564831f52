"""The ``concurrent.futures`` contract, for ``ProcessPoolExecutor`` and ``GuildExecutor`` alike.

Every test runs against both executors in the same parametrized function:
the stdlib is the reference. Where ``GuildExecutor`` differs on purpose the
test is marked ``documented_difference`` and asserts guildcore's behaviour,
and the README ("Deliberate differences") says why it is better.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import (
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    TimeoutError,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cfwork
import psutil
import pytest

from guildcore import AgentDied, GuildExecutor, PoolBroken

pytestmark = pytest.mark.timeout(90)

EXECUTORS: dict[str, type[Executor]] = {"ProcessPoolExecutor": ProcessPoolExecutor, "GuildExecutor": GuildExecutor}
both = pytest.mark.parametrize("kind", list(EXECUTORS))


def make(kind: str, *args: Any, **kwargs: Any) -> Executor:
    return EXECUTORS[kind](*args, **kwargs)


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """A file whose creation releases tasks waiting in cfwork.wait_for_file."""
    path = tmp_path / "release"
    yield path
    path.touch()  # never leave a worker waiting


# ------------------------------------------------------------------ submit


@both
def test_submit_returns_a_future_with_the_result(kind: str) -> None:
    with make(kind, 2) as ex:
        fut = ex.submit(cfwork.add, 2, b=3)
        assert isinstance(fut, Future)
        assert fut.result(timeout=30) == 5
        assert fut.done() and not fut.cancelled() and fut.exception() is None


@both
def test_an_exception_in_the_task_is_raised_as_itself(kind: str) -> None:
    with make(kind, 1) as ex:
        fut = ex.submit(cfwork.fail, "boom")
        with pytest.raises(ValueError, match=r"^boom$"):
            fut.result(timeout=30)
        assert isinstance(fut.exception(), ValueError)
        assert ex.submit(cfwork.square, 4).result(timeout=30) == 16


@both
def test_result_timeout_raises_timeout_error_and_the_task_goes_on(kind: str, release: Path) -> None:
    with make(kind, 1) as ex:
        fut = ex.submit(cfwork.wait_for_file, str(release))
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.1)
        release.touch()
        assert fut.result(timeout=30) == str(release)


@both
def test_done_callbacks_run_once_with_the_future(kind: str) -> None:
    with make(kind, 1) as ex:
        seen: list[Future[Any]] = []
        ran = threading.Event()

        def callback(f: Future[Any]) -> None:
            seen.append(f)
            ran.set()

        fut = ex.submit(cfwork.square, 3)
        fut.add_done_callback(callback)
        assert fut.result(timeout=30) == 9
        assert ran.wait(30)
        late: list[Future[Any]] = []
        fut.add_done_callback(late.append)  # added after done: runs at once, in this thread
        assert seen == [fut] and late == [fut]


@both
def test_a_pending_future_can_be_cancelled_a_running_one_cannot(kind: str, release: Path) -> None:
    with make(kind, 1) as ex:
        started = str(release) + ".started"
        running = ex.submit(cfwork.started_then_wait, started, str(release))
        cfwork.wait_until_exists(started)
        pending = [ex.submit(cfwork.square, i) for i in range(20)]
        assert not running.cancel()
        assert pending[-1].cancel()
        assert pending[-1].cancelled()
        with pytest.raises(CancelledError):
            pending[-1].result()
        release.touch()
        assert running.result(timeout=30) == str(release)
        assert [f.result(timeout=30) for f in pending[:-1]] == [i * i for i in range(19)]


@both
def test_wait_and_as_completed_work_with_its_futures(kind: str) -> None:
    with make(kind, 2) as ex:
        futures = [ex.submit(cfwork.square, i) for i in range(10)]
        done, not_done = wait(futures, timeout=30)
        assert len(done) == 10 and not not_done
        assert sorted(f.result() for f in as_completed(futures, timeout=30)) == [i * i for i in range(10)]


# --------------------------------------------------------------------- map


@both
@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_keeps_input_order_over_several_iterables(kind: str, chunksize: int) -> None:
    with make(kind, 2) as ex:
        assert list(ex.map(cfwork.square, range(20), chunksize=chunksize)) == [i * i for i in range(20)]
        assert list(ex.map(cfwork.add, range(5), range(10, 20), chunksize=chunksize)) == [10, 12, 14, 16, 18]
        assert list(ex.map(cfwork.square, [], chunksize=chunksize)) == []


@both
def test_map_raises_the_first_failure_when_reached(kind: str) -> None:
    with make(kind, 2) as ex:
        results = ex.map(cfwork.fail, ["first", "second"])
        with pytest.raises(ValueError, match="first"):
            list(results)


@both
def test_map_timeout_counts_from_the_call(kind: str) -> None:
    with make(kind, 1) as ex:
        results = ex.map(cfwork.sleep_then, [1.0], ["late"], timeout=0.2)
        with pytest.raises(TimeoutError):
            next(results)


@both
def test_map_with_a_bad_chunksize_is_a_value_error(kind: str) -> None:
    with make(kind, 1) as ex, pytest.raises(ValueError, match="chunksize must be >= 1"):
        ex.map(cfwork.square, [1], chunksize=0)


# ---------------------------------------------------------------- shutdown


@both
def test_submit_after_shutdown_is_a_runtime_error(kind: str) -> None:
    ex = make(kind, 1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(cfwork.square, 2)
    ex.shutdown()  # twice is fine


@both
def test_shutdown_wait_runs_what_was_submitted(kind: str) -> None:
    ex = make(kind, 2)
    futures = [ex.submit(cfwork.square, i) for i in range(30)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(30)]


@both
def test_shutdown_cancel_futures_cancels_what_has_not_started(kind: str, release: Path) -> None:
    ex = make(kind, 1)
    started = str(release) + ".started"
    running = ex.submit(cfwork.started_then_wait, started, str(release))
    cfwork.wait_until_exists(started)
    pending = [ex.submit(cfwork.square, i) for i in range(20)]
    # shutdown(wait=True) blocks on the running task: it runs in a thread, and
    # the task is released once the queued futures are cancelled.
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    cfwork.wait_until(pending[-1].cancelled)
    release.touch()
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    assert running.result(timeout=30) == str(release)
    assert pending[-1].cancelled()  # the stdlib may have queued the first few already
    assert all(f.cancelled() or f.result() == i * i for i, f in enumerate(pending))


# ------------------------------------------------------- constructor options


@both
@pytest.mark.parametrize("bad", [0, -1])
def test_bad_max_workers_is_a_value_error(kind: str, bad: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        make(kind, bad)


@both
def test_an_initializer_that_fails_breaks_the_pool(kind: str) -> None:
    with make(kind, 1, initializer=cfwork.failing_init) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(cfwork.square, 2).result(timeout=30)
        if kind == "GuildExecutor":
            with pytest.raises(PoolBroken, match=r"initializer failed with builtins\.ValueError"):
                ex.submit(cfwork.square, 3).result(timeout=30)


@both
def test_initializer_runs_in_every_worker_before_its_tasks(kind: str, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("forkserver")
    with make(kind, 1, mp_context=ctx, initializer=cfwork.record_init, initargs=(str(tmp_path),)) as ex:
        pid = ex.submit(cfwork.pid).result(timeout=30)
    assert (tmp_path / str(pid)).exists()


@both
def test_max_tasks_per_child_replaces_workers(kind: str) -> None:
    ctx = multiprocessing.get_context("spawn")  # the stdlib refuses it with fork
    with make(kind, 1, mp_context=ctx, max_tasks_per_child=2) as ex:
        pids = [ex.submit(cfwork.pid).result(timeout=60) for _ in range(6)]
    assert len(set(pids)) == 3


@both
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_mp_context_chooses_the_start_method(kind: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfwork, "MARK", "set in the caller")
    with make(kind, 1, mp_context=multiprocessing.get_context(method)) as ex:
        pid, ppid, mark = ex.submit(cfwork.whoami).result(timeout=60)
        grandparent = psutil.Process(ppid).ppid()
    assert pid != os.getpid()
    # Only a fork child sees what the caller set at run time; only a
    # forkserver child has a parent other than the caller. GuildExecutor's
    # fork children are forked from a template, itself a fork of the caller
    # (the README's "How agents start"): the caller is their grandparent,
    # or the parent of a later pool's first agent, which it forks itself.
    assert mark == ("set in the caller" if method == "fork" else "unset")
    if kind == "GuildExecutor" and method == "fork":
        assert os.getpid() in (ppid, grandparent)
    else:
        assert (ppid == os.getpid()) == (method != "forkserver")


# ------------------------------------------------------------ worker death


def _death(kind: str, release: Path) -> tuple[BaseException, Executor]:
    ex = make(kind, 1)
    fut = ex.submit(cfwork.exit_when, str(release))
    release.touch()
    with pytest.raises(BrokenProcessPool) as info:
        fut.result(timeout=30)
    return info.value, ex


def test_worker_death_breaks_the_stdlib_pool(release: Path) -> None:
    _err, ex = _death("ProcessPoolExecutor", release)
    with pytest.raises(BrokenProcessPool):
        ex.submit(cfwork.square, 2)
    ex.shutdown()


@pytest.mark.documented_difference
def test_worker_death_fails_only_its_task_in_guild_executor(release: Path) -> None:
    err, ex = _death("GuildExecutor", release)
    assert isinstance(err, AgentDied) and "exit code 7" in str(err)
    assert ex.submit(cfwork.square, 2).result(timeout=30) == 4  # the pool goes on
    ex.shutdown()


@pytest.mark.documented_difference
def test_guild_executor_sends_lambdas_and_closures_by_value() -> None:
    offset = 10
    with GuildExecutor(1) as ex:
        assert ex.submit(lambda x: x + offset, 1).result(timeout=30) == 11
    # The stdlib cannot pickle a local lambda (AttributeError: Can't pickle local object).
    with ProcessPoolExecutor(1) as ex, pytest.raises(AttributeError, match="Can't pickle local object"):
        ex.submit(lambda x: x + offset, 1).result(timeout=30)


@pytest.mark.documented_difference
def test_an_argument_that_cannot_be_unpickled_fails_only_its_task_in_guild_executor() -> None:
    with GuildExecutor(1) as ex:
        with pytest.raises(BrokenProcessPool, match="cannot be decoded in the agent"):
            ex.submit(cfwork.identity, cfwork.RefusesUnpickle()).result(timeout=30)
        assert ex.submit(cfwork.square, 5).result(timeout=30) == 25


