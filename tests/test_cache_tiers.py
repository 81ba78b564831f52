"""Tiered cache: promotion, TTLs on a fake clock, caps, tags, batches, stats."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from guildcore.cache import CachePolicy, TieredCache
from guildcore.cache.l1 import MISS


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(tmp_path: Path, clock: FakeClock) -> Iterator[TieredCache]:
    with TieredCache(str(tmp_path / "store"), map_size=2**24, clock=clock) as c:
        yield c


def test_get_promotes_from_l3_to_l2_and_l1(cache: TieredCache) -> None:
    cache.set("result", b"k", {"v": (1, 2)})
    cache.evict_memory()
    nk = ("result", b"k")
    assert cache._l1.get(nk, 0) is MISS and cache._l2.get(nk, 0) is MISS
    assert cache.get("result", b"k") == {"v": (1, 2)}  # served by L3
    assert cache._l1.get(nk, 0) == {"v": (1, 2)} and cache._l2.get(nk, 0) == {"v": (1, 2)}
    cache._l1.clear()
    assert cache.get("result", b"k") == {"v": (1, 2)}  # served by L2, promoted again
    assert cache._l1.get(nk, 0) == {"v": (1, 2)}
    assert cache.get("result", b"k") == {"v": (1, 2)}  # served by L1
    ns = cache.stats()["namespaces"]["result"]
    assert (ns["l1"]["hits"], ns["l2"]["hits"], ns["l3"]["hits"], ns["misses"]) == (1, 1, 1, 0)
    assert ns["hit_rate"] == 1.0


def test_miss_returns_default_and_counts(cache: TieredCache) -> None:
    assert cache.get("result", b"nope") is None
    assert cache.get("result", "nope", 7) == 7
    stats = cache.stats()
    assert stats["misses"] == 2 and stats["hit_rate"] == 0.0


def test_ttl_expiry_on_fake_clock_in_every_tier(cache: TieredCache, clock: FakeClock) -> None:
    cache.set("result", b"k", "v", ttl=10)
    clock.advance(9.9)
    assert cache.get("result", b"k") == "v"
    clock.advance(0.2)
    assert cache.get("result", b"k") is None  # L1 and L2 entries expired
    cache.evict_memory()
    assert cache.get("result", b"k") is None  # L3 entry expired: a miss
    assert cache.l3.stats()["namespaces"]["result"]["entries"] == 1
    assert cache.sweep() == 1
    assert cache.l3.stats()["namespaces"]["result"]["entries"] == 0


def test_namespace_ttl_and_never(cache: TieredCache, clock: FakeClock) -> None:
    cache.set("routing", b"r", 1)  # 1800 s
    cache.set("agent", b"a", 2)  # no TTL
    cache.set("result", b"n", 3, ttl=math.inf)
    clock.advance(1801)
    cache.evict_memory()
    assert cache.get("routing", b"r") is None
    assert cache.get("agent", b"a") == 2 and cache.get("result", b"n") == 3


def test_opportunistic_sweep_on_write(cache: TieredCache, clock: FakeClock) -> None:
    cache.set_many("result", [(bytes([i]), i) for i in range(3)], ttl=1)
    clock.advance(2)
    cache.set("result", b"new", 1)
    assert cache.l3.stats()["namespaces"]["result"]["entries"] == 1


def test_cap_evicts_oldest_first(tmp_path: Path, clock: FakeClock) -> None:
    policies = {"small": CachePolicy(ttl_s=None, max_entries=3)}
    with TieredCache(str(tmp_path / "s"), policies=policies, clock=clock, map_size=2**24) as c:
        for i in range(5):
            clock.advance(1)
            c.set("small", bytes([i]), i)
        c.set("small", bytes([2]), "rewritten")  # now the newest
        clock.advance(1)
        c.set("small", bytes([9]), 9)
        c.evict_memory()
        assert [c.get("small", bytes([i])) for i in (0, 1, 2, 3, 4, 9)] == [
            None, None, "rewritten", None, 4, 9,
        ]  # fmt: skip


def test_tags_invalidate_everything_tagged(cache: TieredCache) -> None:
    cache.set("result", b"a", 1, tags=("agents-v3",))
    cache.set("research", b"b", 2, tags=("agents-v3", "other"))
    cache.set("result", b"c", 3)
    cache.set("result", b"d", 4, tags=("agents-v3",))
    cache.set("result", b"d", 5)  # rewritten without the tag: must survive
    assert cache.invalidate_tag("agents-v3") == 2
    assert cache.get("result", b"a") is None and cache.get("research", b"b") is None
    assert cache.get("result", b"c") == 3 and cache.get("result", b"d") == 5
    assert cache.invalidate_tag("other") == 0


def test_batches_get_many_set_many(cache: TieredCache) -> None:
    cache.set_many("result", {f"k{i}": i for i in range(100)})
    cache.evict_memory()
    got = cache.get_many("result", [f"k{i}" for i in range(0, 120, 2)])
    assert got == {f"k{i}": i for i in range(0, 100, 2)}
    assert cache.stats()["namespaces"]["result"]["misses"] == 10


def test_delete_and_clear(cache: TieredCache) -> None:
    cache.set("result", b"a", 1)
    cache.set("agent", b"b", 2)
    assert cache.delete("result", b"a") and not cache.delete("result", b"a")
    assert cache.get("result", b"a") is None
    cache.set("result", b"a", 1)
    cache.clear("result")
    assert cache.get("result", b"a") is None and cache.get("agent", b"b") == 2
    cache.clear()
    assert cache.get("agent", b"b") is None


def test_session_namespace_stays_in_memory(cache: TieredCache) -> None:
    fn = lambda: 1  # noqa: E731 - unencodable on purpose
    cache.set("process", b"f", fn)
    assert cache.get("process", b"f") is fn
    assert "process" not in cache.l3.namespaces()


def test_unknown_namespace_says_how_to_declare(cache: TieredCache) -> None:
    with pytest.raises(
        ValueError, match=r"unknown cache namespace 'mine'; declare it with declare\('mine'"
    ):
        cache.set("mine", b"k", 1)
    cache.declare("mine", CachePolicy(ttl_s=5, max_entries=2))
    cache.set("mine", b"k", 1)
    cache.evict_memory()
    assert cache.get("mine", b"k") == 1


def test_long_and_str_keys(cache: TieredCache) -> None:
    long = "x" * 2000
    cache.set("result", long, "long")
    cache.evict_memory()
    assert cache.get("result", long) == "long"
    assert cache.get("result", long.encode()) == "long"


def test_l2_bounded_by_bytes(tmp_path: Path) -> None:
    with TieredCache(str(tmp_path / "s"), memory_bytes=10_000, map_size=2**24) as c:
        for i in range(10):
            c.set("result", bytes([i]), b"x" * 3000)
        assert c.stats()["tiers"]["l2"]["bytes"] <= 10_000
        assert len(c._l2) == 3


def test_disabled_cache_is_a_no_op(tmp_path: Path) -> None:
    with TieredCache(str(tmp_path / "s"), enabled=False) as c:
        c.set("result", b"k", 1)
        assert c.get("result", b"k") is None and c.get_many("result", [b"k"]) == {}


def test_pickled_values_round_trip_signed(cache: TieredCache) -> None:
    from fractions import Fraction

    cache.set("result", b"f", Fraction(1, 3))
    cache.evict_memory()
    assert cache.get("result", b"f") == Fraction(1, 3)


def test_compressed_values_round_trip(cache: TieredCache) -> None:
    text = "def f(x):\n    return x + 1\n" * 2000
    cache.set("result", b"src", text)
    cache.evict_memory()
    assert cache.get("result", b"src") == text
    assert cache.l3.stats()["namespaces"]["result"]["bytes"] < len(text) / 2


def test_stats_are_flushed_into_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with TieredCache(path) as c:
        c.set("result", b"k", 1)
        c.get("result", b"k")
        c.get("result", b"nope")
    with TieredCache(path) as c:
        assert c.stats()["stored"]["result"] == {"hits": 1, "misses": 1, "hit_rate": 0.5}


def test_sweep_finds_namespace_ttl_entries_by_age(cache: TieredCache, clock: FakeClock) -> None:
    cache.set_many("routing", [(bytes([i]), i) for i in range(5)])  # 1800 s, no hint of its own
    cache.set("routing", b"long", "kept", ttl=7200)
    clock.advance(1801)
    assert cache.sweep() == 5
    cache.evict_memory()
    assert cache.get("routing", b"long") == "kept"
    assert cache.l3.stats()["namespaces"]["routing"]["entries"] == 1


def test_big_values_enter_memory_on_their_second_read(cache: TieredCache) -> None:
    big = os.urandom(6000)  # incompressible: stored over PROMOTE_ON_SECOND_READ_BYTES
    cache.set("result", b"big", big)
    cache.set("result", b"small", b"s")
    cache.evict_memory()
    nk = ("result", b"big")
    assert cache.get("result", b"big") == big  # first read: from L3, not kept
    assert cache._l2.get(nk, 0) is MISS and cache._l1.get(nk, 0) is MISS
    assert cache.get("result", b"big") == big  # second read: kept in L2 and L1
    assert cache._l2.get(nk, 0) == big and cache._l1.get(nk, 0) == big
    assert cache.get("result", b"small") == b"s"  # small values on their first read
    assert cache._l1.get(("result", b"small"), 0) == b"s"
    ns = cache.stats()["namespaces"]["result"]
    assert (ns["l1"]["hits"], ns["l2"]["hits"], ns["l3"]["hits"]) == (0, 0, 3)
