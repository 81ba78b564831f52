"""Task functions for the settings tests (module level: they travel by reference)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from typing import Any

import faults

# Invariant: nothing of guildcore is imported at module level, so that
# ``loaded`` sees only what the agent imported by itself.


def loaded(names: list[str]) -> list[str]:
    """Which of ``names`` this agent has imported (checked before anything imports them)."""
    return [n for n in names if n in sys.modules]


def agent_cache_settings() -> dict[str, Any]:
    """The settings of this agent's own cache (the one ``@cached`` uses)."""
    from guildcore.cache import default_cache

    cache = default_cache()
    tiers = cache.stats()["tiers"]
    return {
        "enabled": cache.enabled,
        "path": cache.path,
        "map_size": cache.map_size,
        "compress": cache.compress,
        "l1_max_entries": tiers["l1"]["max_entries"],
        "l2_max_bytes": tiers["l2"]["max_bytes"],
        "policies": {n: (p.ttl_s, p.max_entries, p.scope) for n, p in cache.policies.items()},
    }


def _triple_logged(x: int, log: str) -> int:
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return x * 3


@functools.cache
def _memoized() -> Any:
    from guildcore.cache import cached

    return cached(namespace="MyNs")(_triple_logged)


def cached_in_my_namespace(x: int, log: str) -> int:
    """``_triple_logged`` under ``@cached(namespace="MyNs")``: a namespace declared by the Guild's keywords."""
    result: int = _memoized()(x, log)
    return result


def calls(log: str) -> list[int]:
    try:
        with open(log) as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


def hold_memory(nbytes: int, started: str, release: str) -> str:
    """Touch ``nbytes`` of private memory, signal start, keep it until released."""
    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    faults.block(started, release)
    return f"held {len(block)}"


def then_mark(n: int, marker: str) -> Iterator[int]:
    """Yield 0..n-1, then write ``marker`` once the generator has run to its end."""
    yield from range(n)
    with open(marker, "w") as f:
        f.write("done")


def die_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second try"
