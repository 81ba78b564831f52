"""Faults for real: killed agents, memory past the limit, timeouts, retries.

Every test waits for the task to signal that it started (a FIFO), then acts;
none sleeps to synchronise.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import faults
import pytest

from guildcore import AgentDied, Guild, MemoryLimitExceeded, TaskTimeout

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("backend")]


def _fifo(tmp_path: object, name: str = "started") -> str:
    return faults.make_fifo(os.path.join(str(tmp_path), name))


def test_sigkill_mid_task_fails_only_that_task(tmp_path: object) -> None:
    fifo = _fifo(tmp_path)
    with Guild(max_agents=1, min_agents=1, pool={"prefetch": 2}) as g:
        victim = g.submit(faults.hang, fifo, timeout=None)
        queued = [g.submit(faults.inc, i) for i in range(5)]
        pid = faults.wait_started(fifo)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(AgentDied, match=r"died with signal SIGKILL \(-9\) while running task \d+ \(faults:hang\)") as info:
            victim.result(timeout=30)
        err = info.value
        assert isinstance(err, BrokenProcessPool)
        assert err.pid == pid and err.exitcode == -9 and err.fn == "faults:hang"
        assert err.runtime_s is not None and err.runtime_s >= 0
        # Tasks queued or prefetched behind it run on the replacement agent.
        assert [f.result(timeout=30) for f in queued] == [1, 2, 3, 4, 5]
        new_pid = g.submit(faults.pid).result(timeout=30)
        assert new_pid != pid


@pytest.mark.local_only("the message names an agent id; on Dask the worker address (test_backend_dask)")
@pytest.mark.parametrize(
    ("fault", "args", "match"),
    [
        (faults.segfault, (), r"signal SIGSEGV"),
        (faults.exit_hard, (3,), r"exit code 3"),
    ],
)
def test_agent_crashes_are_post_mortems(fault: object, args: tuple[object, ...], match: str) -> None:
    with Guild(max_agents=1) as g:
        with pytest.raises(AgentDied, match=match) as info:
            g.submit(fault, *args).result(timeout=30)  # type: ignore[arg-type]
        assert f"agent {info.value.agent_id} (pid {info.value.pid})" in str(info.value)
        assert g.submit(faults.inc, 1).result(timeout=30) == 2


def test_memory_past_the_limit_is_sampled_and_the_agent_replaced(tmp_path: object) -> None:
    limit = 60 * 1000 * 1000
    with Guild(max_agents=1, per_agent=limit, timeout=None) as g:
        pid = g.submit(faults.pid).result(timeout=30)
        # Holds 80 MB until killed: only the sampler can end this task.
        fut = g.submit(faults.allocate, 80 * 1000 * 1000, True)
        with pytest.raises(MemoryLimitExceeded, match=r"over its 60.0 MB limit") as info:
            fut.result(timeout=30)
        err = info.value
        assert err.pid == pid and err.limit_bytes == limit
        assert err.peak_bytes is not None and err.peak_bytes > limit
        assert g.submit(faults.inc, 1).result(timeout=30) == 2


@pytest.mark.local_only("the RLIMIT_DATA hard cap of agents; on Dask the nanny restarts the worker (test_backend_dask)")
def test_runaway_allocation_hits_the_hard_cap_inside_the_task() -> None:
    with Guild(max_agents=1, per_agent="100MB") as g:
        # The message names the cap the agent hit and the limit the user set.
        match = r"ran out of memory under its hard cap of \d+\.\d MB \(the 100\.0 MB limits\.per_agent plus headroom"
        with pytest.raises(MemoryLimitExceeded, match=match) as info:
            g.submit(faults.allocate, 600 * 1000 * 1000).result(timeout=30)
        assert info.value.limit_bytes == 100 * 1000 * 1000
        assert g.submit(faults.inc, 1).result(timeout=30) == 2


@pytest.mark.local_only("SIGALRM interrupts time.sleep in an agent; on Dask the interrupt waits for Python code (test_backend_dask)")
def test_soft_timeout_runs_finally_and_keeps_the_agent(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "finally")
    with Guild(max_agents=1, min_agents=1) as g:
        pid = g.submit(faults.pid).result(timeout=30)
        with pytest.raises(TaskTimeout, match=r"timed out after 0.2 s") as info:
            g.submit(faults.finally_marker, marker, timeout=0.2).result(timeout=30)
        assert isinstance(info.value, TimeoutError)
        assert os.path.exists(marker)
        assert g.submit(faults.pid).result(timeout=30) == pid  # same agent survived


@pytest.mark.local_only("names the killed agent; on Dask the restarted worker (test_backend_dask)")
def test_stubborn_task_is_killed_after_the_grace(tmp_path: object) -> None:
    fifo = _fifo(tmp_path)
    with Guild(max_agents=1, limits={"timeout_grace": 0.2}) as g:
        fut = g.submit(faults.hang_stubborn, fifo, timeout=0.2)
        pid = faults.wait_started(fifo)
        with pytest.raises(TaskTimeout, match=r"did not stop when asked; agent \d+ \(pid \d+\) was killed"):
            fut.result(timeout=30)
        assert g.submit(faults.pid).result(timeout=30) != pid


def test_timeout_none_disables(tmp_path: object) -> None:
    with Guild(max_agents=1, timeout=None) as g:
        assert g.submit(faults.sleep_then, 0.3, "ok").result(timeout=30) == "ok"


def test_retries_rerun_a_task_whose_agent_died(tmp_path: object) -> None:
    # The task kills its agent the first time only (a marker file remembers).
    marker = os.path.join(str(tmp_path), "died-once")
    with Guild(max_agents=1) as g:
        assert g.submit(_die_once, marker, retries=1).result(timeout=30) == "second try"
        stats = g.stats()
        assert stats["counters"]["retried"] == 1 and stats["counters"]["agents_died"] == 1


def _die_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second try"


def test_quarantine_stops_retry_storms() -> None:
    with Guild(max_agents=1, pool={"quarantine_after": 2}) as g:
        with pytest.raises(AgentDied, match=r"quarantined after killing agents 2 times") as info:
            g.submit(faults.exit_hard, 1, retries=10).result(timeout=60)
        assert g.stats()["counters"]["agents_died"] == 2
        assert "attempt 2 of 11" in str(info.value) and "pass retries=N" not in str(info.value)
        with pytest.raises(AgentDied, match=r"pass retries=N to retry such tasks"):
            g.submit(faults.exit_hard, 1).result(timeout=60)


def test_initializer_failure_breaks_the_pool_without_respawning() -> None:
    from concurrent.futures import BrokenExecutor

    from guildcore import PoolBroken

    with Guild(max_agents=2, initializer=faults.fail, initargs=("no config file",)) as g:
        with pytest.raises(PoolBroken, match=r"initializer failed with builtins.ValueError: no config file") as info:
            g.submit(faults.inc, 1).result(timeout=30)
        assert isinstance(info.value, BrokenExecutor)
        with pytest.raises(PoolBroken):
            g.submit(faults.inc, 2).result(timeout=30)
        assert g.stats()["counters"]["agents_started"] <= 2


@pytest.mark.local_only("an agent dies decoding a frame under its hard cap; on Dask (no cap) it may fit (test_backend_dask)")
def test_arguments_too_big_for_an_agent_fail_that_task_and_nothing_else() -> None:
    with Guild(max_agents=1, min_agents=1) as g:
        # Over the limit as encoded: refused before sending, nothing wedges.
        with pytest.raises(MemoryLimitExceeded, match=r"was not sent: its arguments encode to 15\d\.\d MB"):
            g.submit(len, bytes(150 * 2**20)).result(timeout=60)
        # Under the limit as bytes, over it once decoded in the agent.
        with pytest.raises(MemoryLimitExceeded):
            g.submit(len, bytes(80 * 2**20)).result(timeout=60)
        assert g.submit(len, b"still here").result(timeout=30) == 10
        assert g.stats()["counters"]["agents_replaced_memory"] == 1  # the 80 MB one, however it was caught


@pytest.mark.local_only("the fork start method of local agents")
def test_forked_agents_are_limited_on_their_own_memory_not_the_parents() -> None:
    # A parent holding 150 MB forks agents whose RssAnon starts at 150 MB
    # (shared copy-on-write); the 100 MB limit applies above that baseline.
    ballast = bytearray(150 * 1000 * 1000)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    try:
        with Guild(max_agents=1, start_method="fork", per_agent="100MB") as g:
            assert g.submit(faults.allocate, 20 * 1000 * 1000).result(timeout=30) == 20 * 1000 * 1000
            with pytest.raises(MemoryLimitExceeded):
                g.submit(faults.allocate, 130 * 1000 * 1000, True, timeout=None).result(timeout=30)
    finally:
        del ballast
