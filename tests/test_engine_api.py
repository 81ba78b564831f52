"""The Guild API: submit, map, starmap, imap, exceptions, priorities, start methods."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import faults
import pytest

import guildcore
from guildcore import Guild, SerializationError, ShutdownError

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("backend")]


@pytest.fixture
def guild(backend: str, dask_guild: Callable[..., Guild]) -> Iterator[Guild]:
    if backend == "local":
        with Guild(max_agents=2, min_agents=1) as g:
            yield g
    else:  # one LocalCluster for the module's tests of a plain Guild
        yield dask_guild(max_agents=2, min_agents=1)


@pytest.mark.local_only("start methods of local agents")
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_submit_and_map_under_each_start_method(method: str) -> None:
    with Guild(start_method=method, max_agents=2) as g:
        assert g.submit(faults.add, 2, b=3).result(timeout=30) == 5
        # An explicit chunksize keeps maps in the agents (routing could run them here).
        assert g.map(faults.inc, range(100), chunksize=10) == list(range(1, 101))
        assert g.starmap(faults.add, [(1, 2), (3, 4)], chunksize=1) == [3, 7]


def test_map_keeps_order_and_types(guild: Guild) -> None:
    items = [(1, "a"), {"k": {1, 2}}, b"bytes", 2**80, None]
    assert guild.map(_identity, items, chunksize=2) == items  # through agents and back
    assert [type(x) for x in guild.map(_identity, items, chunksize=2)] == [type(x) for x in items]


def _identity(x: object) -> object:
    return x


def test_map_chunksize_choices(guild: Guild) -> None:
    assert guild.map(faults.inc, range(50), chunksize=1) == list(range(1, 51))
    assert guild.map(faults.inc, range(50), chunksize=7) == list(range(1, 51))
    assert guild.map(faults.inc, []) == []
    with pytest.raises(guildcore.ConfigError, match="chunksize must be 'auto' or a whole number"):
        guild.map(faults.inc, range(3), chunksize=0)


def test_exception_keeps_type_and_remote_traceback(guild: Guild) -> None:
    with pytest.raises(ValueError, match="broken input") as info:
        guild.submit(faults.fail, "broken input").result(timeout=30)
    cause = info.value.__cause__
    assert cause is not None and "faults.py" in str(cause) and "in fail" in str(cause)
    # One failure does not poison the pool.
    assert guild.submit(faults.inc, 1).result(timeout=30) == 2


def test_map_raises_first_failing_item(guild: Guild) -> None:
    with pytest.raises(ValueError, match="x"):
        guild.map(faults.fail, ["x", "y"])


def test_unencodable_result_is_a_serialization_error(guild: Guild) -> None:
    with pytest.raises(SerializationError, match=r"result of task \d+ .*cannot be sent back"):
        guild.submit(faults.unencodable_result).result(timeout=30)
    assert guild.submit(faults.inc, 1).result(timeout=30) == 2


def test_lambda_and_closure_travel_by_value(guild: Guild) -> None:
    pytest.importorskip("cloudpickle")
    offset = 10
    assert guild.submit(lambda x: x + offset, 1).result(timeout=30) == 11

    def local(x: int) -> int:
        return x * offset

    assert guild.map(local, [1, 2], chunksize=1) == [10, 20]


def test_lambda_without_cloudpickle_says_how_to_fix(guild: Guild, monkeypatch: pytest.MonkeyPatch) -> None:
    from guildcore.engine import functions

    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    functions._spec_cache.clear()
    with pytest.raises(SerializationError, match=r"install cloudpickle"):
        guild.submit(lambda x: x, 1)


def test_priority_lower_number_runs_first(tmp_path: object) -> None:
    log = os.path.join(str(tmp_path), "order.txt")
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    with Guild(max_agents=1, min_agents=1, pool={"prefetch": 0}) as g:
        blocker = g.submit(faults.block, started, release)
        faults.wait_started(started)
        # The single agent is busy: these queue up and run by priority, FIFO within one.
        futs = [
            g.submit(faults.record, log, "low-1", priority=5),
            g.submit(faults.record, log, "high-1", priority=-1),
            g.submit(faults.record, log, "mid", priority=0),
            g.submit(faults.record, log, "high-2", priority=-1),
            g.submit(faults.record, log, "low-2", priority=5),
        ]
        faults.release(release)
        blocker.result(timeout=30)
        for f in futs:
            f.result(timeout=30)
    with open(log) as f:
        assert f.read().split() == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_queue_strategy_fifo_runs_in_submission_order_whatever_the_priority(tmp_path: object) -> None:
    log = os.path.join(str(tmp_path), "order.txt")
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    with Guild(max_agents=1, min_agents=1, pool={"prefetch": 0, "queue_strategy": "fifo"}) as g:
        blocker = g.submit(faults.block, started, release)
        faults.wait_started(started)
        futs = [
            g.submit(faults.record, log, name, priority=priority)
            for name, priority in [("low-1", 5), ("high-1", -1), ("mid", 0), ("high-2", -1), ("low-2", 5)]
        ]
        faults.release(release)
        blocker.result(timeout=30)
        for f in futs:
            f.result(timeout=30)
    with open(log) as f:
        assert f.read().split() == ["low-1", "high-1", "mid", "high-2", "low-2"]


def test_imap_consumes_an_infinite_generator_lazily(guild: Guild) -> None:
    consumed = itertools.count()

    def source() -> object:
        for i in itertools.count():
            next(consumed)
            yield i

    it = guild.imap(faults.inc, source(), window=4)
    first = list(itertools.islice(it, 50))
    assert first == list(range(1, 51))
    it.close()
    # Only a bounded read-ahead was pulled from the infinite input.
    assert next(consumed) < 50 + 4 * 8192


def test_imap_ordered_and_unordered(guild: Guild) -> None:
    assert list(guild.imap(faults.inc, range(30), chunksize=4)) == list(range(1, 31))
    assert sorted(guild.imap_unordered(faults.inc, iter(range(30)))) == list(range(1, 31))


def test_submit_after_shutdown_raises() -> None:
    g = Guild(max_agents=1)
    g.shutdown()
    with pytest.raises(ShutdownError, match="shut down") as info:
        g.submit(faults.inc, 1)
    assert isinstance(info.value, RuntimeError)


def test_shutdown_with_pending_work_finishes_it_or_cancels_it(tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    g = Guild(max_agents=1, min_agents=1, pool={"prefetch": 0})
    blocker = g.submit(faults.block, started, release)
    faults.wait_started(started)
    pending = [g.submit(faults.inc, i) for i in range(5)]
    g.shutdown(wait=False, cancel_futures=True)
    faults.release(release)
    g.shutdown(wait=True)
    assert blocker.result() == "released"  # running work finishes
    assert all(f.cancelled() for f in pending)  # queued work is cancelled

    g2 = Guild(max_agents=1)
    futs = [g2.submit(faults.inc, i) for i in range(10)]
    g2.shutdown(wait=True)
    assert [f.result() for f in futs] == list(range(1, 11))  # without cancel: all run


def test_futures_are_stdlib_futures(guild: Guild) -> None:
    fut = guild.submit(faults.inc, 41)
    assert isinstance(fut, Future)
    assert fut.result(timeout=30) == 42


def test_sequential_fallback_when_parallelization_is_disabled() -> None:
    with pytest.warns(RuntimeWarning, match="sequential fallback"), Guild(parallelization={"enabled": False}) as g:
        assert g.map(faults.inc, range(10)) == list(range(1, 11))
        assert g.submit(faults.pid).result(timeout=30) == os.getpid()
        with pytest.raises(ValueError, match="inline"):
            g.submit(faults.fail, "inline").result(timeout=30)


@pytest.mark.local_only("starting local agents")
def test_sequential_fallback_when_agents_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from guildcore.engine import pool

    def refuse(self: object, agent_id: int) -> object:
        raise pool.StartFailed("OSError: [Errno 11] Resource temporarily unavailable")

    monkeypatch.setattr(pool.AgentStarter, "start", refuse)
    with pytest.warns(RuntimeWarning, match="could not start agents"), Guild(max_agents=2) as g:
        assert g.map(faults.inc, range(5), chunksize=1) == [1, 2, 3, 4, 5]  # the pool's machinery
        assert g.stats()["inline"] is True


@pytest.mark.local_only("local agents that die starting")
def test_agents_that_die_before_ready_lose_no_task_and_shutdown_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A preloaded module that exits kills each (spawned) agent before READY,
    # as a script that fails at import does: tasks sent ahead to such agents
    # never ran, so they go back to the queue and run inline after the third
    # failed start; then shutdown must still return.
    (tmp_path / "exits_at_import.py").write_text("import os\nos._exit(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="3 agents in a row died before they were ready"):
        g = Guild(max_agents=1, start_method="spawn", optimization={"preload": ["exits_at_import"]})
        try:
            assert g.map(faults.inc, range(5), chunksize=1) == [1, 2, 3, 4, 5]
            assert g.stats()["counters"]["agents_died"] == 3
        finally:
            g.shutdown()


def _exits_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: str | None = None) -> str:
    """A module whose import ends the process: preloaded, it kills each (spawned) agent before READY."""
    wait = f"open({gate!r}, 'rb').read(1)\n" if gate else ""
    (tmp_path / "exits_at_import.py").write_text(f"import os\n{wait}os._exit(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "exits_at_import"


@pytest.mark.local_only("local agents that die starting")
def test_shutdown_returns_once_the_inline_fallback_drains_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _exits_at_import(tmp_path, monkeypatch)
    with pytest.warns(RuntimeWarning, match="died before they were ready"):
        g = Guild(max_agents=1, start_method="spawn", optimization={"preload": [module]})
        g.map(faults.inc, range(3), chunksize=1)  # three agents die; inline from here on
    futures = [g.submit(faults.sleep_then, 0.01, i) for i in range(50)]
    # The last inline batch empties the queue; the loop must notice before it waits.
    g.shutdown()
    assert sum(f.result(timeout=0) for f in futures) == sum(range(50))


@pytest.mark.local_only("local agents that die starting")
@pytest.mark.timeout(30)
def test_a_stream_cancelled_by_shutdown_stays_cancelled_when_its_agent_dies_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = faults.make_fifo(str(tmp_path / "gate"))
    module = _exits_at_import(tmp_path, monkeypatch, gate)
    g = Guild(max_agents=1, start_method="spawn", optimization={"preload": [module]})
    stream = g.stream(faults.gen_numbers, 5)
    deadline, tick = time.monotonic() + 20, threading.Event()
    while not any(a["held"] for a in g.stats()["agents"]):  # sent ahead to the starting agent
        assert time.monotonic() < deadline, "the stream never reached the starting agent"
        tick.wait(0.01)
    g.shutdown(wait=False)  # cancels the stream the starting agent holds
    faults.release(gate)  # that agent now dies before READY
    g.shutdown()
    with pytest.raises(guildcore.TaskCancelled):
        list(stream)
    assert g._supervisor.counters.agents_started == 1  # not revived in a new agent


@pytest.mark.local_only("local agents that die starting")
def test_an_initializer_that_kills_agents_breaks_the_pool() -> None:
    with Guild(max_agents=1, initializer=faults.exit_hard, initargs=(3,)) as g:
        with pytest.raises(guildcore.PoolBroken, match="died before they were ready"):
            g.map(faults.inc, range(5), chunksize=1)
        with pytest.raises(guildcore.PoolBroken):
            g.submit(faults.inc, 1).result(timeout=30)
        assert g.stats()["counters"]["agents_died"] == 3
        assert g.stats()["inline"] is False  # no task ran without its initializer


def test_initializer_runs_once_per_agent(tmp_path: object) -> None:
    log = os.path.join(str(tmp_path), "init.txt")
    with Guild(max_agents=1, min_agents=1, initializer=faults.record, initargs=(log, "init")) as g:
        g.map(faults.inc, range(20), chunksize=1)
    with open(log) as f:
        assert f.read().split() == ["init"]


def test_stats_after_shutdown_keep_the_final_counters() -> None:
    with Guild(max_agents=2) as g:
        g.map(faults.inc, range(10), chunksize=1)
        assert g.stats()["closed"] is False
    stats = g.stats()
    assert stats["closed"] is True
    assert stats["counters"]["done"] == 10 and stats["counters"]["agents_started"] >= 1
    assert stats["agents"] == [] and stats["queued"] == 0
    assert "routing" in stats and "context" in stats


def test_stats_report_agents_and_counters(guild: Guild) -> None:
    guild.map(faults.inc, range(10), chunksize=5)
    stats = guild.stats()
    assert stats["counters"]["done"] >= 1
    assert stats["agents"] and all(a["state"] in {"IDLE", "BUSY", "STARTING"} for a in stats["agents"])


@pytest.mark.local_only("pool.max_tasks_per_agent recycles local agents")
def test_recycling_after_max_tasks_per_agent() -> None:
    with Guild(max_agents=1, min_agents=1, pool={"max_tasks_per_agent": 3}) as g:
        pids = [g.submit(faults.pid).result(timeout=30) for _ in range(7)]
    # Three tasks per agent: agents 1, 2 and 3.
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] == pids[2] and pids[3] == pids[4] == pids[5]
