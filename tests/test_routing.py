"""Routing: tiny items run inline once agents have measured them; everything else in the pool."""

from __future__ import annotations

import os

import faults
import pytest

import guildcore
from guildcore import Guild
from guildcore.engine import routing

pytestmark = pytest.mark.timeout(60)


def test_decide_from_measurements() -> None:
    assert not routing.decide(item_s=None, ipc_s=1e-6, n_items=10, agents=2).inline
    assert routing.decide(item_s=60e-9, ipc_s=250e-9, n_items=200_000, agents=2).inline
    # Items dearer than twice the codec work gain from two agents.
    assert not routing.decide(item_s=600e-9, ipc_s=250e-9, n_items=1000, agents=2).inline
    assert not routing.decide(item_s=50e-6, ipc_s=1e-3, n_items=10, agents=2).inline  # too slow to inline
    assert not routing.decide(item_s=1e-6, ipc_s=1e-5, n_items=2_000_000, agents=2).inline  # batch too long
    assert routing.decide(item_s=1e-6, ipc_s=1e-7, n_items=10, agents=1).inline  # one agent never gains


def test_router_averages_observations() -> None:
    r = routing.Router()
    r.observe("m:f", 100, 100e-6)
    r.observe("m:f", 100, 300e-6)
    assert r.item_s("m:f") == pytest.approx(2e-6)
    r.forget()
    assert r.item_s("m:f") is None


def test_first_batch_in_the_pool_then_inline() -> None:
    with Guild(max_agents=2) as g:
        assert g.map(faults.inc, range(5000)) == list(range(1, 5001))
        stats = g.stats()["routing"]
        assert stats["inline_batches"] == 0
        assert stats["measured_functions"] == 1
        measured = g._router.item_s("faults:inc")
        assert measured is not None and 0 < measured < 1e-3
        # Agents time items in wall-clock time, so on a loaded host they may
        # measure x + 1 as dear enough for the pool (the safe direction).
        # Pin the measurement to what a quiet host sees to test the inline path.
        g._router.forget()
        g._router.observe("faults:inc", 1000, 60e-6)
        assert g.map(faults.inc, range(5000)) == list(range(1, 5001))
        assert g.stats()["routing"]["inline_items"] == 5000
        # Inline items run in the caller: same results, same exceptions.
        assert set(g.map(faults.pid, range(3000))) != {os.getpid()}  # first batch of pid: pool
        with pytest.raises(ValueError, match="x"):
            g.map(faults.fail, ["x"] * 10)


def test_explicit_options_and_strategy_pool_keep_the_pool() -> None:
    with Guild(max_agents=2) as g:
        g.map(faults.inc, range(2000))
        g.map(faults.inc, range(2000), chunksize=100)
        g.map(faults.inc, range(2000), timeout=5)
        assert g.stats()["routing"]["inline_batches"] == 0
    with Guild(max_agents=2, parallelization={"strategy": "pool"}) as g:
        g.map(faults.inc, range(2000))
        g.map(faults.inc, range(2000))
        assert g.stats()["routing"]["inline_batches"] == 0


def test_inline_items_see_the_shared_context() -> None:
    with Guild(max_agents=2) as g:
        g.share({"k": 7})
        assert g.map(_plus_k, range(2000)) == [x + 7 for x in range(2000)]
        # A context read costs about a microsecond, so agents may measure
        # _plus_k as worth the pool; pin the measurement to test the inline path.
        g._router.forget()
        g._router.observe("test_routing:_plus_k", 1, 1e-9)
        assert g.map(_plus_k, range(2000)) == [x + 7 for x in range(2000)]
        assert g.stats()["routing"]["inline_batches"] == 1


def _plus_k(x: int) -> int:
    return x + guildcore.context()["k"]  # type: ignore[no-any-return]


def test_items_far_slower_than_measured_leave_the_inline_path() -> None:
    with Guild(max_agents=2) as g:
        g._router.observe("faults:sleep_then", 1000, 1e-6)  # measured tiny earlier
        args = [(0.1, i) for i in range(6)]
        assert g.starmap(faults.sleep_then, args) == list(range(6))
        stats = g.stats()["routing"]
        assert stats["inline_batches"] == 1 and stats["inline_items"] == 1  # one slice, then the pool
        assert stats["pool_batches"] == 1
        assert (g._router.item_s("faults:sleep_then") or 0) > routing.MAX_INLINE_ITEM_S  # learned
        assert g.starmap(faults.sleep_then, args) == list(range(6))
        assert g.stats()["routing"]["inline_batches"] == 1  # the next batch went straight to the pool
