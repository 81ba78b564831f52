"""``@cached``: memoization across agents, code-change invalidation, the default cache."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guildcore import CacheError
from guildcore.cache import (
    TieredCache,
    cache_clear,
    cache_compact,
    cache_stats,
    cached,
    close_default_cache,
    configure_default_cache,
    default_cache,
)

TESTS = str(Path(__file__).resolve().parent)
REPO = str(Path(TESTS).parent)


@cached
def slow_square(x: int, counter: str) -> int:
    """Counts its runs in a file, so runs in any agent are seen."""
    with open(counter, "a") as f:
        f.write("ran\n")
    return x * x


@pytest.fixture
def default_at(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "store")
    configure_default_cache(path=path, map_size=2**24)
    yield path
    configure_default_cache()  # back to load_config(), closing ours


def test_child_computes_parent_hits(default_at: str, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from guildcore.cache import configure_default_cache, close_default_cache
        configure_default_cache(path={default_at!r}, map_size=2**24)
        import test_cache_cached as m
        print(m.slow_square(12, {str(counter)!r}))
        close_default_cache()
    """)
    out = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "144"
    assert slow_square(12, str(counter)) == 144
    assert slow_square(12, str(counter)) == 144
    assert counter.read_text() == "ran\n"
    assert slow_square(13, str(counter)) == 169
    assert counter.read_text() == "ran\nran\n"


def _define(source: str, cache: TieredCache) -> Any:
    namespace: dict[str, Any] = {"__name__": "user_module"}
    exec(compile(source, "user_module.py", "exec"), namespace)
    return cached(cache=cache)(namespace["work"])


def test_changed_code_is_a_miss(tmp_path: Path) -> None:
    with TieredCache(str(tmp_path / "s"), map_size=2**24) as c:
        v1 = _define("def work(x):\n    return x + 1\n", c)
        v2 = _define("def work(x):\n    return x + 2\n", c)
        assert v1.__qualname__ == v2.__qualname__ == "work"
        assert v1(1) == 2 and v1(1) == 2
        assert v2(1) == 3
        same_as_v1 = _define("def work(x):\n    return x + 1\n", c)
        assert same_as_v1(1) == 2 and c.stats()["namespaces"]["result"]["hits"] == 2


def test_kwargs_order_does_not_matter_and_values_do(tmp_path: Path) -> None:
    calls = []
    with TieredCache(str(tmp_path / "s"), map_size=2**24) as c:

        @cached(cache=c, namespace="research", ttl=60)
        def f(a: int, *, b: int = 0, d: int = 0) -> int:
            calls.append((a, b, d))
            return a + b + d

        assert f(1, b=2, d=3) == 6 and f(1, d=3, b=2) == 6
        assert f(1, b=3, d=2) == 6
        assert calls == [(1, 2, 3), (1, 3, 2)]


def test_unstorable_result_still_returns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with TieredCache(str(tmp_path / "s"), map_size=2**24) as c:

        @cached(cache=c)
        def make(x: int) -> Any:
            return lambda: x

        with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
            assert make(1)() == 1
        assert "result not cached" in caplog.text


def test_default_cache_is_configurable_and_closable(default_at: str) -> None:
    c = default_cache()
    assert c.path == default_at and default_cache() is c
    close_default_cache()
    assert default_cache() is not c and default_cache().path == default_at


def test_cli_functions(tmp_path: Path) -> None:
    from guildcore.config import load_config

    (tmp_path / ".guild").mkdir()
    cfg = load_config({"caching": {"path": str(tmp_path / "store")}}, cwd=str(tmp_path), environ={})
    assert cache_stats(cfg)["exists"] is False
    with TieredCache.from_config(cfg) as c:
        c.set_many("result", [(bytes([i]), "x" * 1000) for i in range(200)])
        c.get("result", b"\x01")
    stats = cache_stats(cfg)
    assert stats["namespaces"]["result"]["l3"]["entries"] == 200
    assert stats["stored"]["result"]["hits"] == 1
    cache_clear(cfg, "result")
    assert cache_stats(cfg)["namespaces"]["result"]["l3"]["entries"] == 0
    before, after = cache_compact(cfg)
    assert after < before
    with pytest.raises(CacheError, match="no cache namespace 'nope'"):
        cache_clear(cfg, "nope")


@pytest.mark.parametrize(("ttl", "seconds"), [("1h", 3600.0), ("30min", 1800.0), ("250ms", 0.25), (90, 90.0), (2.5, 2.5)])
def test_ttl_is_a_config_duration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ttl: object, seconds: float
) -> None:
    now = [1_000_000.0]
    runs: list[int] = []
    with TieredCache(str(tmp_path / "s"), map_size=2**24, clock=lambda: now[0]) as store:

        @cached(ttl=ttl, cache=store)  # type: ignore[call-overload]
        def double(x: int) -> int:
            runs.append(x)
            return 2 * x

        with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
            assert [double(4), double(4)] == [8, 8]
            assert runs == [4]  # the second call was a hit
            now[0] += seconds * 0.99
            assert double(4) == 8 and runs == [4]  # still fresh
            now[0] += seconds * 0.02
            assert double(4) == 8 and runs == [4, 4]  # expired after exactly ttl
        assert caplog.text == ""


@pytest.mark.parametrize("ttl", ["soon", "-5s", 0, "1 fortnight", True])
def test_bad_ttl_is_refused_at_decoration_naming_the_function(ttl: object) -> None:
    from guildcore import ConfigError

    with pytest.raises(ConfigError, match=r"@cached\(ttl=\) of test_cache_cached\..*\.plain") as info:

        @cached(ttl=ttl)  # type: ignore[call-overload]
        def plain(x: int) -> int:
            return x

    assert info.value.key == "ttl"
