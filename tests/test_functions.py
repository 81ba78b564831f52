"""How functions travel: closures that change, references resolved in one place."""

from __future__ import annotations

import pytest

from guildcore import ConfigError, Guild, SerializationError
from guildcore.engine.functions import resolve_reference, spec_for
from guildcore.keys import fingerprint, resolve_ref


def test_a_closure_whose_captured_name_is_rebound_gets_a_new_fingerprint_and_payload() -> None:
    factor = 2

    def scale(x: int) -> int:
        return x * factor

    first_fp, first_spec = fingerprint(scale), spec_for(scale)
    assert (fingerprint(scale), spec_for(scale)) == (first_fp, first_spec)  # cached while unchanged
    factor = 10
    assert fingerprint(scale) != first_fp
    assert spec_for(scale) != first_spec


def test_a_closure_over_a_mutable_value_is_never_stale() -> None:
    seen = [1]

    def total() -> int:
        return sum(seen)

    first_fp, first_spec = fingerprint(total), spec_for(total)
    seen.append(41)
    assert fingerprint(total) != first_fp
    assert spec_for(total) != first_spec


def test_agents_run_a_rebound_closure_with_its_new_value(tmp_path: object) -> None:
    factor = 2

    def scale(x: int) -> int:
        return x * factor

    with Guild(max_agents=1, caching={"path": str(tmp_path)}) as g:
        assert g.submit(scale, 3).result(timeout=30) == 6
        assert g.map(scale, [1, 2], cache=True) == [2, 4]
        factor = 10
        assert g.submit(scale, 3).result(timeout=30) == 30
        assert g.map(scale, [1, 2], cache=True) == [10, 20]  # not the results cached for factor 2


def test_stream_result_with_cache_is_refused_up_front_hit_or_miss(tmp_path: object) -> None:
    with Guild(max_agents=1, caching={"path": str(tmp_path)}) as g:
        with pytest.raises(ConfigError, match="stream_result=True cannot be combined with cache=True"):
            g.submit(abs, -3, cache=True, stream_result=True)  # a miss
        assert g.submit(abs, -3, cache=True).result(timeout=30) == 3  # now cached
        with pytest.raises(ConfigError, match="stream_result=True cannot be combined with cache=True"):
            g.submit(abs, -3, cache=True, stream_result=True)  # a hit


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("no-colon", "expected 'module:qualname'"),
        ("mod:<lambda>", "lambdas and functions defined inside"),
        ("no_such_module_here:f", "importing 'no_such_module_here' failed"),
        ("os.path:nope", "missing 'nope'"),
        ("os:sep", "it names a str, not a callable"),
    ],
)
def test_one_resolver_for_agents_and_keys(ref: str, match: str) -> None:
    for resolve in (resolve_reference, resolve_ref):
        with pytest.raises(SerializationError, match=match):
            resolve(ref)
    assert resolve_reference("os.path:join") is resolve_ref("os.path:join")
