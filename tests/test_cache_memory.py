"""The in-process tiers: namespace entry caps in L1 and L2, and shrinking them under pressure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from guildcore.cache import CachePolicy, TieredCache
from guildcore.cache.l1 import MISS, L1Cache
from guildcore.cache.l2 import L2Cache
from guildcore.config import load_config


def nk(ns: str, i: int) -> tuple[str, bytes]:
    return (ns, i.to_bytes(4, "big"))


def test_l1_cap_keeps_the_newest_of_a_namespace() -> None:
    l1 = L1Cache(100, caps={"few": 3})
    for i in range(10):
        l1.set(nk("few", i), i, 0.0)
        l1.set(nk("many", i), i, 0.0)
    assert [l1.get(nk("few", i), 0) for i in range(10)] == [MISS] * 7 + [7, 8, 9]
    assert l1.count("few") == 3 and l1.count("many") == 10
    l1.set(nk("few", 7), "again", 0.0)  # rewritten: now the newest of its namespace
    l1.set(nk("few", 10), 10, 0.0)
    assert [l1.get(nk("few", i), 0) for i in (7, 8, 9, 10)] == ["again", MISS, 9, 10]


def test_l1_cap_survives_deletes_expiry_and_global_eviction() -> None:
    l1 = L1Cache(8, caps={"few": 2})
    l1.set(nk("few", 1), 1, 5.0)
    l1.set(nk("few", 2), 2, 0.0)
    assert l1.get(nk("few", 1), now=6.0) is MISS  # expired: no longer counted
    assert l1.count("few") == 1
    for i in range(20):  # global eviction drops the namespace's entries too
        l1.set(nk("other", i), i, 0.0)
    assert l1.count("few") == 0
    l1.set(nk("few", 3), 3, 0.0)
    l1.set(nk("few", 4), 4, 0.0)
    l1.delete(nk("few", 3))
    assert l1.count("few") == 1
    l1.clear()
    assert l1.count("few") == 0


def test_l1_set_cap_later_trims_at_once() -> None:
    l1 = L1Cache(100)
    for i in range(6):
        l1.set(nk("ns", i), i, 0.0)
    l1.set_cap("ns", 2)
    assert [l1.get(nk("ns", i), 0) for i in range(6)] == [MISS] * 4 + [4, 5]
    l1.set_cap("ns", None)
    for i in range(6):
        l1.set(nk("ns", i), i, 0.0)
    assert l1.count("ns") == 6
    with pytest.raises(ValueError, match="entry cap of namespace 'ns' must be >= 1, not 0"):
        l1.set_cap("ns", 0)


def test_l2_cap_bytes_stay_exact() -> None:
    l2 = L2Cache(100, 10_000, caps={"few": 3})
    for i in range(10):
        l2.set(nk("few", i), i, 0.0, 100)
    assert len(l2) == 3 and l2.nbytes == 300
    assert [l2.get(nk("few", i), 0) for i in range(10)] == [MISS] * 7 + [7, 8, 9]
    l2.set(nk("few", 8), "x", 0.0, 50)  # rewrite: newest, and its new size
    l2.set(nk("few", 11), 11, 0.0, 100)
    assert [l2.get(nk("few", i), 0) for i in (7, 8, 9, 11)] == [MISS, "x", 9, 11]
    assert l2.nbytes == 250 and l2.usage("few") == (3, 250)


def test_l2_cap_with_lru_and_byte_evictions() -> None:
    l2 = L2Cache(4, 1000, caps={"few": 2})
    l2.set(nk("few", 1), 1, 0.0, 10)
    for i in range(6):  # LRU entry-count eviction pushes "few" out through the callback
        l2.set(nk("other", i), i, 0.0, 10)
    assert l2.usage("few") == (0, 0)
    l2.set(nk("few", 2), 2, 0.0, 10)
    l2.set(nk("few", 3), 3, 0.0, 10)
    l2.set(nk("big", 0), 0, 0.0, 990)  # byte budget eviction: least recent first
    assert l2.usage("few") == (1, 10) and l2.nbytes == 1000
    assert l2.get(nk("few", 3), 0) == 3
    l2.set(nk("few", 4), 4, 0.0, 1)
    l2.set(nk("few", 5), 5, 0.0, 1)
    l2.set(nk("few", 6), 6, 0.0, 1)
    assert l2.usage("few") == (2, 2)


def test_l1_shrink_drops_oldest() -> None:
    l1 = L1Cache(100)
    for i in range(10):
        l1.set(nk("a", i), i, 0.0)
    assert l1.shrink(4) == 6
    assert [l1.get(nk("a", i), 0) for i in range(10)] == [MISS] * 6 + [6, 7, 8, 9]
    assert l1.shrink(10) == 0


def test_l2_shrink_meets_both_budgets() -> None:
    l2 = L2Cache(100, 10_000)
    for i in range(10):
        l2.set(nk("a", i), i, 0.0, 100 * (i + 1))  # 100 .. 1000 bytes
    assert l2.nbytes == 5500
    l2.get(nk("a", 0), 0)  # read: now the most recent
    dropped = l2.shrink(max_bytes=2750, max_entries=5)
    assert l2.nbytes <= 2750 and len(l2) <= 5 and dropped == 10 - len(l2)
    assert l2.get(nk("a", 0), 0) == 0  # the recently read entry stayed


def test_l2_values_dropped_by_budget_are_freed() -> None:
    """What ``shrink`` and the byte budget drop is no longer referenced (a leak here kept every value)."""
    import sys
    import weakref

    class Value:
        pass

    l2 = L2Cache(100, 1000)
    refs = []
    for i in range(6):
        v = Value()
        refs.append(weakref.ref(v))
        l2.set(nk("a", i), v, 0.0, 300)  # the budget holds three: 0, 1, 2 go as 3, 4, 5 come
        del v
    l2.shrink(max_bytes=300, max_entries=100)  # 3 and 4 go
    assert [r() is None for r in refs] == [True, True, True, True, True, False]
    assert sys.getrefcount(l2.get(nk("a", 5), 0)) <= 3


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[TieredCache]:
    with TieredCache(str(tmp_path / "store"), map_size=2**24, memory_entries=800) as c:
        yield c


def test_tiered_shrink_memory_halves_and_l3_keeps_all(tiers: TieredCache) -> None:
    tiers.set_many("result", [(f"k{i}".encode(), b"x" * 200) for i in range(40)])
    before = tiers.memory_bytes()
    dropped = tiers.shrink_memory(0.5)
    assert dropped > 0 and tiers.memory_bytes() <= before // 2
    assert all(tiers.get("result", f"k{i}".encode()) == b"x" * 200 for i in range(40))


def test_declare_caps_memory_tiers(tiers: TieredCache) -> None:
    tiers.declare("sess", CachePolicy(max_entries=2, scope="session"))
    for i in range(5):
        tiers.set("sess", bytes([i]), i)
    assert [tiers.get("sess", bytes([i])) for i in range(5)] == [None, None, None, 3, 4]


@pytest.mark.parametrize("cap", [2, 5])
def test_process_namespace_cap_from_config_caps_memory(tmp_path: Path, cap: int) -> None:
    """``caching.namespaces.process.max_entries`` (a session namespace: memory only) caps L1 and L2."""
    (tmp_path / ".guild").mkdir()
    config = load_config(
        {"caching": {"namespaces": {"process": {"max_entries": cap}}}}, cwd=tmp_path, environ={}
    )
    with TieredCache.from_config(config) as cache:
        for i in range(10):
            cache.set("process", bytes([i]), object())
        kept = [i for i in range(10) if cache.get("process", bytes([i])) is not None]
        assert kept == list(range(10 - cap, 10))
        assert cache.stats()["namespaces"]["process"]["l2"]["entries"] == cap
