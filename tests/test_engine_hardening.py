"""The owner loop survives what user code and agents throw at it.

User code that raises ``BaseException`` where the loop runs it (decoding a
result, a done-callback, a task under ``strategy: sequential``), agents
that send frames the loop cannot use, work that must not run on the loop's
thread (cache writes, inline tasks), timeouts that start when a task
begins, chunks that are split on retry, and resources that must not leak.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import faults
import pytest

import guildcore
from guildcore import AgentDied, ConfigError, Guild, SerializationError, TaskTimeout

pytestmark = pytest.mark.timeout(90)


def _fifo(tmp_path: object, name: str) -> str:
    return faults.make_fifo(os.path.join(str(tmp_path), name))


# ------------------------------------------------ BaseException from user code


def test_a_result_whose_decoding_calls_sys_exit_fails_only_its_task() -> None:
    with Guild(max_agents=1) as g:
        with pytest.raises(SerializationError, match=r"could not be decoded") as info:
            g.submit(faults.exit_on_load).result(timeout=30)
        assert isinstance(info.value.__cause__, SystemExit)
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        assert g.map(faults.inc, range(50), chunksize=5) == list(range(1, 51))


def test_system_exit_in_a_sequential_task_fails_only_that_task() -> None:
    with pytest.warns(RuntimeWarning, match="sequential"):
        g = Guild(parallelization={"strategy": "sequential"})
    with g:
        with pytest.raises(SystemExit):
            g.submit(faults.raise_system_exit, 3).result(timeout=30)
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        assert g.map(faults.inc, range(5)) == [1, 2, 3, 4, 5]


def test_a_done_callback_that_exits_does_not_end_the_loop() -> None:
    with Guild(max_agents=1) as g:
        # Added before the result exists, so the owner loop runs the callback.
        fut = g.submit(faults.sleep_then, 0.2, "x")
        fut.add_done_callback(lambda _f: sys.exit(4))
        assert fut.result(timeout=30) == "x"
        assert g.submit(faults.inc, 1).result(timeout=30) == 2


def test_a_guild_whose_loop_has_ended_refuses_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from guildcore.engine.machine import Machine

    g = Guild(max_agents=1)
    try:
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        original = Machine.handle_batch

        def broken(self: Machine, *args: object, **kwargs: object) -> object:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(Machine, "handle_batch", broken)
        fut = g.submit(faults.inc, 2)
        with pytest.raises(guildcore.GuildError, match=r"supervisor loop crashed \(RuntimeError: injected fault\)"):
            fut.result(timeout=30)
        monkeypatch.setattr(Machine, "handle_batch", original)
        g._supervisor.join(30)
        with pytest.raises(guildcore.PoolBroken, match=r"supervisor loop stopped"):
            g.submit(faults.inc, 3)
        with pytest.raises(guildcore.PoolBroken, match=r"supervisor loop stopped"):
            g.map(faults.inc, range(3), chunksize=1)
    finally:
        g.shutdown()


# ------------------------------------------------------------- hostile frames


@pytest.mark.parametrize(
    "kind",
    ["short", "short-error", "short-ready", "wrong-type", "garbage", "not-a-frame", "supervisor-kind", "initializer-error", "oversized"],
)
def test_a_malformed_frame_kills_only_its_agent(kind: str, tmp_path: object) -> None:
    started = _fifo(tmp_path, "started")
    with Guild(max_agents=1, min_agents=1, per_agent="100MB", timeout=None) as g:
        before = g.submit(faults.pid).result(timeout=30)
        fut = g.submit(faults.send_raw, kind, started)
        assert faults.wait_started(started) == before
        with pytest.raises(AgentDied, match=r"sent a frame the supervisor could not read"):
            fut.result(timeout=30)
        after = g.submit(faults.pid).result(timeout=30)
        assert after != before
        assert g.map(faults.inc, range(20), chunksize=3) == list(range(1, 21))


# ------------------------------------------------ work off the owner thread


def test_cache_writes_do_not_stall_the_loop(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from guildcore.cache import TieredCache

    release = threading.Event()
    original = TieredCache.set_many

    def slow_set_many(self: TieredCache, *args: object, **kwargs: object) -> object:
        release.wait(30)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TieredCache, "set_many", slow_set_many)
    with Guild(max_agents=1, caching={"path": os.path.join(str(tmp_path), "cache")}) as g:
        try:
            assert g.map(faults.inc, range(10), cache=True, chunksize=5) == list(range(1, 11))
            # The store of those results is stuck; tasks must still run and finish.
            assert g.submit(faults.inc, 41).result(timeout=10) == 42
            assert g.stats()["counters"]["done"] >= 3
        finally:
            release.set()
    with Guild(max_agents=1, caching={"path": os.path.join(str(tmp_path), "cache")}) as g:
        assert g.map(faults.inc, range(10), cache=True) == list(range(1, 11))
        assert g.stats()["cache"]["items_hit"] == 10  # stored once released, before shutdown returned


def test_an_inline_task_does_not_stall_the_loop(tmp_path: object) -> None:
    started = _fifo(tmp_path, "started")
    release = _fifo(tmp_path, "release")
    with pytest.warns(RuntimeWarning, match="sequential"):
        g = Guild(parallelization={"strategy": "sequential"})
    with g:
        fut = g.submit(faults.block, started, release)
        faults.wait_started(started)
        # The loop answers while the inline task runs.
        assert g.stats()["counters"]["submitted"] == 1
        faults.release(release)
        assert fut.result(timeout=30) == "released"


@pytest.fixture(params=["agents cannot start", "strategy sequential"])
def fallback(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guild]:
    """A Guild that runs its tasks inline: agents refuse to start, or it was asked to."""
    from guildcore.engine import pool

    def refuse(self: object, agent_id: int) -> object:
        raise pool.StartFailed("OSError: [Errno 11] Resource temporarily unavailable")

    if request.param == "agents cannot start":
        monkeypatch.setattr(pool.AgentStarter, "start", refuse)
        warned = pytest.warns(RuntimeWarning, match="could not start agents")
        kwargs: dict[str, object] = {"max_agents": 2}
    else:
        warned = pytest.warns(RuntimeWarning, match="sequential")
        kwargs = {"parallelization": {"strategy": "sequential"}}
    with warned, Guild(**kwargs) as g:  # type: ignore[arg-type]
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        yield g


def test_an_inline_stream_finishes_and_frees_its_ring(fallback: Guild) -> None:
    it = fallback.stream(faults.gen_numbers, 5)
    assert list(it) == [0, 1, 2, 3, 4]
    assert it.future.result(timeout=10) is None
    prefix = f"guild_{os.getpid()}_"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def test_an_inline_stream_closed_early_is_cancelled(fallback: Guild) -> None:
    it = fallback.stream(faults.gen_numbers, 100)
    assert next(it) == 0
    it.close()
    with pytest.raises(guildcore.TaskCancelled):
        it.future.result(timeout=10)
    assert fallback.submit(faults.inc, 2).result(timeout=10) == 3


# ------------------------------------------------------------- timeouts


def test_the_timeout_clock_starts_when_the_agent_begins_the_task(tmp_path: object) -> None:
    started = _fifo(tmp_path, "init-started")
    release = _fifo(tmp_path, "init-release")
    with Guild(
        max_agents=1, min_agents=1, initializer=faults.gated_init, initargs=(started, release),
        limits={"timeout_grace": 0.1},
    ) as g:
        fast = g.submit(faults.inc, 1, timeout=0.3)
        slow = g.submit(faults.hang, None, timeout=0.3)
        faults.wait_started(started)  # the agent, sent both, runs its initializer
        # The initializer runs well past timeout + grace: nothing may be
        # killed for it (a wait that checks something does not happen).
        threading.Event().wait(1.5)
        faults.release(release)
        assert fast.result(timeout=30) == 2
        with pytest.raises(TaskTimeout, match=r"timed out after 0.3 s"):
            slow.result(timeout=30)
        assert g.stats()["counters"]["agents_died"] == 0


def test_an_agent_in_its_initializer_gives_back_the_tasks_sent_ahead(tmp_path: Path) -> None:
    # Agent 2 stays in its initializer until the test has every result: the
    # tasks sent ahead to it come back (WITHDRAW, answered by its reader
    # thread while the initializer runs) and agent 1 runs them all.
    release = str(tmp_path / "release")
    with Guild(max_agents=2, min_agents=2, initializer=faults.hold_agent, initargs=("guild-agent-2", release)) as g:
        try:
            futures = [g.submit(faults.nap, 0.02, i) for i in range(6)]
            assert [f.result(timeout=30) for f in futures] == list(range(6))
            states = {a["id"]: a["state"] for a in g.stats()["agents"]}
            assert states[2] == "STARTING", states  # it never took part
        finally:
            Path(release).touch()


def test_work_stealing_does_not_postpone_the_hard_kill(tmp_path: object) -> None:
    started = _fifo(tmp_path, "started")
    with Guild(max_agents=2, min_agents=2, limits={"timeout_grace": 0.2}) as g:
        assert g.map(faults.inc, range(4), chunksize=1) == [1, 2, 3, 4]  # both agents ready
        stubborn = g.submit(faults.hang_stubborn, started, timeout=0.3)
        faults.wait_started(started)
        # Keep short tasks coming: some are sent ahead to the stubborn task's
        # agent and taken back by the other one, again and again.
        # Each pair: one short task to the free agent, one sent ahead to the
        # stubborn task's agent, which the free one then takes back.
        shorts: list[Future[object]] = []
        tick = threading.Event()
        while not stubborn.done() and len(shorts) < 600:
            shorts += [g.submit(faults.sleep_then, 0.01, i) for i in range(2)]
            tick.wait(0.05)
        with pytest.raises(TaskTimeout, match=r"did not stop when asked"):
            stubborn.result(timeout=0)
        assert [f.result(timeout=30) for f in shorts] == [i for _ in range(len(shorts) // 2) for i in range(2)]
        assert g.stats()["counters"]["stolen"] >= 1


# ------------------------------------------------------------- bisection


def test_a_poison_item_ends_alone_and_every_innocent_item_completes(tmp_path: object) -> None:
    log = os.path.join(str(tmp_path), "done")
    items = [(i, log) for i in range(64)]
    with Guild(max_agents=2, pool={"quarantine_after": 2}) as g:
        with pytest.raises(AgentDied, match=r"quarantined after killing agents 2 times") as info:
            g.starmap(faults.die_on, [(i, 37, path) for i, path in items], chunksize=32, retries=3)
        assert "faults:die_on" in str(info.value)
        with open(log) as f:
            done = {int(x) for x in f.read().split()}  # items before 37 ran again after each split
        assert done == set(range(64)) - {37}
        assert g.stats()["counters"]["split"] >= 5


def test_a_chunk_killed_twice_is_split_not_quarantined(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "deaths")
    with Guild(max_agents=1, min_agents=1, pool={"quarantine_after": 2}) as g:
        # Item 0 kills its agent the first two times it runs, as an outside
        # SIGKILL would: the chunk is split, never quarantined.
        items = [(i, marker, 2) for i in range(10)]
        assert g.starmap(faults.die_first_times, items, chunksize=10, retries=1) == list(range(10))
        assert g.stats()["counters"]["agents_died"] == 2


# ------------------------------------------------------------- leaks


def test_a_context_hold_is_released_when_task_creation_fails() -> None:
    with Guild(max_agents=1) as g:
        g.share({"a": 1})
        with pytest.raises(ConfigError, match="timeout must be a positive number"):
            g.submit(faults.inc, 1, timeout=-1)
        g.share({"a": 2})
        assert g.stats()["context"]["live_generations"] == [2]


def test_peak_memory_per_agent_is_bounded() -> None:
    with Guild(max_agents=1, min_agents=1, pool={"max_tasks_per_agent": 1}, limits={"sample_interval": "1ms"}) as g:
        for _ in range(45):
            g.submit(faults.sleep_then, 0.02, None).result(timeout=30)
        stats = g.stats()
        assert stats["counters"]["agents_started"] >= 45
        assert 1 <= len(stats["peak_private_bytes"]) <= 32


def test_an_agent_that_stops_reading_does_not_stall_the_loop(tmp_path: object) -> None:
    started = [_fifo(tmp_path, f"started-{i}") for i in range(2)]
    release = [_fifo(tmp_path, f"release-{i}") for i in range(2)]
    with Guild(max_agents=2, min_agents=2, timeout=None) as g:
        assert g.map(faults.pid, range(4), chunksize=1)  # both agents ready
        first = g.submit(faults.block, started[0], release[0])
        stopped = faults.wait_started(started[0])
        second = g.submit(faults.block, started[1], release[1])
        faults.wait_started(started[1])
        os.kill(stopped, signal.SIGSTOP)  # its reader thread drains nothing any more
        try:
            # Sent ahead to the stopped agent (both hold one task): 8 MB do not fit in its pipe.
            big = g.submit(len, bytes(8 * 2**20))
            # The loop still answers and runs work elsewhere.
            assert g.stats()["counters"]["submitted"] >= 7
            faults.release(release[1])
            assert second.result(timeout=30) == "released"
            assert g.submit(faults.inc, 1).result(timeout=30) == 2
        finally:
            os.kill(stopped, signal.SIGCONT)
        faults.release(release[0])
        assert first.result(timeout=30) == "released"
        assert big.result(timeout=30) == 8 * 2**20
