"""GuildExecutor honours the concurrent.futures contract of ProcessPoolExecutor."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import BrokenExecutor, CancelledError, Executor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool

import faults
import pytest

from guildcore import GuildExecutor

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("backend")]


@pytest.mark.local_only("mp_context and max_tasks_per_child choose how agents start and recycle; refused on Dask")
def test_is_an_executor_with_the_stdlib_constructor() -> None:
    with GuildExecutor(2, multiprocessing.get_context("spawn"), None, (), max_tasks_per_child=5) as ex:
        assert isinstance(ex, Executor)
        assert ex.submit(faults.add, 1, 2).result(timeout=30) == 3
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        GuildExecutor(0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        GuildExecutor(1, initializer=42)  # type: ignore[arg-type]


def test_map_with_timeout_and_chunksize() -> None:
    with GuildExecutor(max_workers=2) as ex:
        assert list(ex.map(faults.add, range(10), range(10))) == [2 * i for i in range(10)]
        assert list(ex.map(faults.add, range(10), range(10), chunksize=3)) == [2 * i for i in range(10)]
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(faults.inc, [1], chunksize=0)
        with pytest.raises(TimeoutError):
            list(ex.map(faults.sleep_then, [1.0], ["late"], timeout=0.05))


def test_runtime_error_after_shutdown() -> None:
    ex = GuildExecutor(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(faults.inc, 1)


def test_futures_can_be_cancelled_before_they_start(tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    with GuildExecutor(max_workers=1, pool={"prefetch": 0}) as ex:
        running = ex.submit(faults.block, started, release)
        faults.wait_started(started)
        queued = ex.submit(faults.inc, 1)
        assert queued.cancel()
        assert not running.cancel()
        faults.release(release)
        assert running.result(timeout=30) == "released"
        with pytest.raises(CancelledError):
            queued.result()


@pytest.mark.parametrize("later", [False, True], ids=["first-call", "later-call"])
def test_shutdown_cancel_futures(tmp_path: object, later: bool) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    ex = GuildExecutor(max_workers=1, pool={"prefetch": 0})
    running = ex.submit(faults.block, started, release)
    faults.wait_started(started)
    queued = [ex.submit(faults.inc, i) for i in range(3)]
    if later:
        ex.shutdown(wait=False)  # the stdlib still honours cancel_futures in a second call
    ex.shutdown(wait=False, cancel_futures=True)
    faults.release(release)
    ex.shutdown(wait=True)
    assert running.result() == "released"
    assert all(f.cancelled() for f in queued)


def test_as_completed_and_wait_work() -> None:
    with GuildExecutor(max_workers=2) as ex:
        futs = [ex.submit(faults.inc, i) for i in range(8)]
        assert sorted(f.result() for f in as_completed(futs, timeout=30)) == list(range(1, 9))
        done, not_done = wait(futs, timeout=30)
        assert len(done) == 8 and not not_done


def test_dead_worker_fails_only_its_future_and_the_executor_survives(tmp_path: object) -> None:
    # The deliberate difference from the stdlib: the pool is not broken for good.
    with GuildExecutor(max_workers=2) as ex:
        doomed = ex.submit(faults.exit_hard, 7)
        with pytest.raises(BrokenProcessPool, match="exit code 7"):
            doomed.result(timeout=30)
        assert ex.submit(faults.inc, 1).result(timeout=30) == 2


def test_failing_initializer_breaks_the_executor_at_once() -> None:
    ex = GuildExecutor(max_workers=2, initializer=faults.fail, initargs=("cannot init",))
    try:
        with pytest.raises(BrokenExecutor, match="cannot init"):
            ex.submit(faults.inc, 1).result(timeout=30)
        with pytest.raises(BrokenExecutor):
            ex.submit(faults.inc, 2).result(timeout=30)
    finally:
        ex.shutdown()


def test_tasks_have_no_timeout_by_default() -> None:
    with GuildExecutor(max_workers=1) as ex:
        assert ex._guild.config.limits.timeout is None


def test_map_timeout_counts_from_the_call() -> None:
    import time

    with GuildExecutor(max_workers=1) as ex:
        results = ex.map(faults.sleep_then, [0.6, 0.6], ["a", "b"], timeout=1.0, chunksize=2)
        time.sleep(0.9)  # the caller is busy: the deadline keeps running, as in the stdlib
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            list(results)
        assert time.monotonic() - start < 0.6


def test_done_callbacks_may_read_stats_and_start_a_shutdown(tmp_path: object) -> None:
    import threading

    seen: list[object] = []
    done = threading.Event()
    ex = GuildExecutor(max_workers=1)
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))

    def callback(fut: object) -> None:
        try:
            seen.append(ex.stats()["counters"]["done"])
            try:
                ex.shutdown(wait=True)  # would wait on the thread running this callback
            except RuntimeError as exc:
                seen.append(str(exc))
            ex.shutdown(wait=False)
        finally:
            done.set()

    # The callback is added while the task runs: it then runs on the owner
    # thread (added to a done future, it would run here at once).
    fut = ex.submit(faults.block, started, release)
    faults.wait_started(started)
    fut.add_done_callback(callback)
    faults.release(release)
    assert done.wait(30)
    assert seen[0] == 1 and "done-callbacks" in str(seen[1])
    ex.shutdown(wait=True)


@pytest.mark.local_only("work stealing of tasks sent ahead: Dask is sent none ahead of a free thread")
def test_a_task_sent_ahead_moves_to_an_agent_that_frees_up(tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    with GuildExecutor(max_workers=2, pool={"min_agents": 2}) as ex:  # prefetch 2, the default
        assert list(ex.map(faults.inc, range(4))) == [1, 2, 3, 4]  # both agents ready
        blocked = ex.submit(faults.block, started, release)
        faults.wait_started(started)
        # Three tasks of two items, submitted at once: the second is sent ahead
        # to the blocked agent (both hold one task then); the free one takes it back.
        assert list(ex.map(faults.inc, range(6), chunksize=2, timeout=30)) == [1, 2, 3, 4, 5, 6]
        assert not blocked.done()
        assert ex.stats()["counters"]["stolen"] >= 1
        faults.release(release)
        assert blocked.result(timeout=30) == "released"
