"""Routing through the public API: inline while agents start, remembered decisions, chunk sizes.

Every Guild here has its own cache folder (``caching.path`` in ``tmp_path``),
so decisions of one test never reach another. Which process ran an item is
told by ``faults.pid_after``: the caller's pid means it ran inline.
``faults.pid_after(0.01)`` is deterministic in routing: 10 ms per item is
always worth the pool. Decisions for ``x + 1`` rest on timings and are only
checked where any outcome is right.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import faults
import pytest

import guildcore
from guildcore import Guild
from guildcore.engine import chunking, routing

pytestmark = pytest.mark.timeout(90)

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def _cache(tmp_path: Path, **namespace: Any) -> dict[str, Any]:
    caching: dict[str, Any] = {"path": str(tmp_path / "cache")}
    if namespace:
        caching["namespaces"] = {"routing": namespace}
    return {"caching": caching}


def _slow(n: int) -> list[tuple[float, int]]:
    return [(0.01, i) for i in range(n)]


# ------------------------------------------------------------------ decisions


def test_decide_from_measurements() -> None:
    assert routing.decide(item_s=60e-9, ipc_s=50e-9, n_items=200_000, agents=2).inline
    # Items dearer than shipping them (SHIP_FACTOR codec round trips) gain from two agents.
    ship = routing.SHIP_FACTOR * 50e-9
    assert routing.decide(item_s=1.9 * ship, ipc_s=50e-9, n_items=1000, agents=2).inline
    assert not routing.decide(item_s=2.1 * ship, ipc_s=50e-9, n_items=1000, agents=2).inline
    assert not routing.decide(item_s=50e-6, ipc_s=1e-3, n_items=10, agents=2).inline  # too slow to inline
    assert not routing.decide(item_s=1e-6, ipc_s=1e-5, n_items=2_000_000, agents=2).inline  # batch too long
    assert routing.decide(item_s=1e-6, ipc_s=1e-7, n_items=10, agents=1).inline  # one agent never gains
    big = routing.decide(item_s=1e-3, ipc_s=0.0, n_items=100, agents=2, result_bytes=2**20)
    assert big.route == routing.STREAM and "chunk by chunk" in big.reason


def test_chunk_sizes_come_from_one_policy() -> None:
    assert chunking.auto_size(200_000, 2) == 6250
    sizes = chunking.guided_sizes(1000, 10, agents=2, held=3)
    assert sum(sizes) == 1000 and sizes[0] > sizes[-1] and min(sizes[:-1]) >= 4  # ceil(10 / 3)
    # What one agent holds at the end (its last 3 chunks) is about one chunk of 10:
    # an agent done early waits no longer than without prefetch.
    assert sum(sizes[-3:]) <= 12 and sizes.count(4) >= 3
    assert chunking.guided_sizes(1000, 10, agents=2, held=1)[-2] == 10  # nothing prefetched: as before
    # Measured items: chunks long enough to hide the per-chunk cost, every agent busy.
    assert chunking.measured_size(1000, 2, item_s=1e-6) == 500
    assert chunking.measured_size(1000, 2, item_s=0.01) == chunking.auto_size(1000, 2)
    # Big results: a chunk brings back about STREAM_CHUNK_BYTES.
    assert chunking.measured_size(1000, 2, item_s=1e-6, result_bytes=2**20) == 4
    assert chunking.rate_size(0, 1.0, 2) == 1 and chunking.rate_size(10_000, 1.0, 2) == 100


# ------------------------------------------------------------ work while agents start


def test_a_first_map_runs_here_while_agents_start_and_slow_items_go_to_agents(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    # Agents wait at their initializer until the first item, run here, opens the gate.
    with Guild(max_agents=1, initializer=faults.wait_for_path, initargs=(gate,), **_cache(tmp_path)) as g:
        pids = g.starmap(faults.touch_then_pid, [(gate, 0.05)] * 40)
        stats = g.stats()["routing"]
    assert pids[0] == os.getpid()  # ran here while no agent was ready
    assert pids[-1] != os.getpid()  # the rest went to the agent once it was up
    assert stats["boot_items"] == pids.count(os.getpid()) < 40
    assert stats["handed_off"] == 40 - stats["boot_items"]
    assert stats["misses"] == 1


def test_tiny_items_finish_here_before_agents_are_ready(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")  # never opened: no agent is ever ready
    with Guild(max_agents=2, initializer=faults.wait_for_path, initargs=(gate,), **_cache(tmp_path)) as g:
        assert g.map(faults.inc, range(200_000)) == list(range(1, 200_001))
        stats = g.stats()["routing"]
        assert stats["boot_items"] == stats["inline_items"] == 200_000
        assert g.stats()["counters"]["submitted"] == 0
        open(gate, "w").close()  # let the agents go, so shutdown is quick


def test_explicit_options_and_strategy_pool_never_run_here(tmp_path: Path) -> None:
    here = os.getpid()
    with Guild(max_agents=2, **_cache(tmp_path)) as g:
        assert here not in g.starmap(faults.pid_after, [(0, i) for i in range(50)], chunksize=10)
        assert here not in g.starmap(faults.pid_after, [(0, i) for i in range(50)], timeout=5)
        assert here not in g.starmap(faults.pid_after, [(0, i) for i in range(50)], retries=1)
        assert g.stats()["routing"]["inline_batches"] == 0
    with Guild(max_agents=2, parallelization={"strategy": "pool"}, **_cache(tmp_path)) as g:
        assert here not in g.starmap(faults.pid_after, [(0, i) for i in range(50)])
        assert here not in g.starmap(faults.pid_after, [(0, i) for i in range(50)])
        assert g.stats()["routing"]["inline_batches"] == 0


def test_inline_items_see_the_shared_context(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    with Guild(max_agents=1, initializer=faults.wait_for_path, initargs=(gate,), **_cache(tmp_path)) as g:
        g.share({"k": 7})
        assert g.map(_plus_k, range(2000)) == [x + 7 for x in range(2000)]
        assert g.stats()["routing"]["boot_items"] == 2000
        from guildcore.context import view

        mapped_here = set(view.attached_names())
        g.share({"k": 8})  # the first generation goes: this process's mapping of it too
        assert g.map(_plus_k, range(2000)) == [x + 8 for x in range(2000)]
        assert not mapped_here & set(view.attached_names())
        second = set(view.attached_names())
        open(gate, "w").close()
    assert not second & set(view.attached_names())  # and the second with the Guild


def _plus_k(x: int) -> int:
    return x + guildcore.context()["k"]  # type: ignore[no-any-return]


def test_inline_failures_keep_their_type(tmp_path: Path) -> None:
    with Guild(max_agents=1, **_cache(tmp_path)) as g, pytest.raises(ValueError, match="x"):
        g.map(faults.fail, ["x"] * 10)


# ------------------------------------------------------------ remembered decisions


def test_decisions_persist_across_guilds_and_route_from_the_first_item(tmp_path: Path) -> None:
    with Guild(max_agents=2, **_cache(tmp_path)) as g:
        g.starmap(faults.pid_after, _slow(16))
        assert g.stats()["routing"]["misses"] == 1
    with Guild(max_agents=2, **_cache(tmp_path)) as g:
        pids = g.starmap(faults.pid_after, _slow(16))
        stats = g.stats()["routing"]
    assert os.getpid() not in pids  # remembered: pool from the first item, even while agents start
    assert (stats["hits"], stats["misses"], stats["hit_rate"], stats["boot_items"]) == (1, 0, 1.0, 0)


def test_an_unseen_size_borrows_the_nearest_known_size(tmp_path: Path) -> None:
    with Guild(max_agents=2, **_cache(tmp_path)) as g:
        g.starmap(faults.pid_after, _slow(64))
    with Guild(max_agents=2, **_cache(tmp_path)) as g:
        pids = g.starmap(faults.pid_after, _slow(5))
        stats = g.stats()["routing"]
    assert os.getpid() not in pids
    assert stats["hits"] == 1 and stats["similar"] == 1


def test_decisions_expire(tmp_path: Path) -> None:
    cfg = _cache(tmp_path, ttl="1ms")
    with Guild(max_agents=2, **cfg) as g:
        g.starmap(faults.pid_after, _slow(8))
    with Guild(max_agents=2, **cfg) as g:
        g.starmap(faults.pid_after, _slow(8))
        assert g.stats()["routing"]["misses"] == 1


@pytest.mark.parametrize(
    "change", [{"max_agents": 1}, {"start_method": "forkserver"}, {"per_agent": "200MB"}], ids=lambda c: next(iter(c))
)
def test_another_agent_set_finds_nothing(tmp_path: Path, change: dict[str, Any]) -> None:
    with Guild(max_agents=2, **_cache(tmp_path)) as g:
        g.starmap(faults.pid_after, _slow(8))
    with Guild(**{"max_agents": 2, **change}, **_cache(tmp_path)) as g:
        g.starmap(faults.pid_after, _slow(8))
        assert g.stats()["routing"]["misses"] == 1


def test_changed_code_finds_nothing(tmp_path: Path) -> None:
    module = tmp_path / "routed_work.py"
    module.write_text("import time\n\ndef work(x):\n    time.sleep(0.01)\n    return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module("routed_work")
        with Guild(max_agents=2, **_cache(tmp_path)) as g:
            g.map(mod.work, range(8))
        with Guild(max_agents=2, **_cache(tmp_path)) as g:
            g.map(mod.work, range(8))
            assert g.stats()["routing"]["hits"] == 1
        module.write_text("import time\n\ndef work(x):\n    time.sleep(0.01)\n    return x + 0\n")
        mod = importlib.reload(mod)
        with Guild(max_agents=2, **_cache(tmp_path)) as g:
            assert g.map(mod.work, range(8)) == list(range(8))
            assert g.stats()["routing"]["misses"] == 1
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("routed_work", None)


SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import faults
from guildcore import Guild

if __name__ == "__main__":
    with Guild(max_agents=2, caching={{"path": {cache!r}}}) as g:
        pids = g.starmap(faults.pid_after, [(0.01, i) for i in range(12)])
        r = g.stats()["routing"]
        print(os.getpid() in pids, r["hits"], r["misses"], r["boot_items"])
"""


def _run_script(tmp_path: Path) -> list[str]:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=TESTS, cache=str(tmp_path / "cache")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_a_second_run_routes_right_from_its_first_item_and_cache_clear_forgets(tmp_path: Path) -> None:
    first = _run_script(tmp_path)
    assert first[1:3] == ["0", "1"]  # measured: a miss
    assert _run_script(tmp_path) == ["False", "1", "0", "0"]  # another process: pool from the first item
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}, "GUILD_CACHING__PATH": str(tmp_path / "cache")}
    clear = subprocess.run(
        [sys.executable, "-m", "guildcore", "cache", "clear", "routing"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert clear.returncode == 0, clear.stderr
    assert _run_script(tmp_path)[1:3] == ["0", "1"]  # forgotten


def test_items_far_slower_than_remembered_leave_the_inline_path(tmp_path: Path) -> None:
    # With one agent, items measured under MAX_INLINE_ITEM_S always route
    # inline (no pool of one gains); then the same function meets slow items.
    with Guild(max_agents=1, **_cache(tmp_path)) as g:
        g.starmap(faults.nap, [(0.0, i) for i in range(1000)])
    with Guild(max_agents=1, **_cache(tmp_path)) as g:
        assert g.starmap(faults.nap, [(0.0, i) for i in range(1000)]) == list(range(1000))
        assert g.stats()["routing"]["inline_items"] == 1000  # remembered as tiny
        assert g.starmap(faults.nap, [(0.1, i) for i in range(4)]) == list(range(4))
        stats = g.stats()["routing"]
    assert stats["hits"] == 2  # both batches: same function, same argument types
    assert stats["handed_off"] == 3 and stats["inline_items"] == 1001  # one slice here, then the pool
