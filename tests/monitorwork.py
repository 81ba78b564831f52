"""Task functions for the monitor's engine tests (module level: they travel by reference).

Each allocates real memory (touched, so it is resident) in the agent that
runs it, or reports what the agent's own cache did.
"""

from __future__ import annotations

import os

import faults

MB = 10**6

_held: list[bytearray] = []  # module state of the agent process: what it holds between tasks


def big_result(i: int, mb: int) -> bytes:
    """A result of ``mb`` MB: cached, it lands in the supervisor's in-process cache."""
    return bytes(mb * MB)


def hold_until(mb: int, started: str, release: str) -> int:
    """Hold ``mb`` MB of private memory in this agent until the test releases it, then free it."""
    block = bytearray(mb * MB)
    for k in range(0, len(block), 4096):  # touch every page: resident, counted in RssAnon
        block[k] = 1
    _held.append(block)
    del block
    faults.signal_started(started)
    fd = os.open(release, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    _held.clear()  # a 100 MB block is its own mapping: freeing it gives it back at once
    return mb


def pid_inc(x: int) -> tuple[int, int]:
    return os.getpid(), x + 1


def default_cache_state() -> dict[str, object]:
    """The agent's default cache as the monitor left it: writes, L2 budget, entries."""
    from guildcore.cache import default_cache

    cache = default_cache()
    tiers = cache.stats()["tiers"]
    return {"writes": cache.writes, "l2_max_bytes": tiers["l2"]["max_bytes"], "l2_entries": tiers["l2"]["entries"]}


def fill_default_cache(n: int, kb: int) -> int:
    """Put ``n`` values of ``kb`` kB into this agent's default cache (session namespace: memory only)."""
    from guildcore.cache import default_cache

    cache = default_cache()
    for i in range(n):
        cache.set("process", f"v{i}", bytes(kb * 1000))
    return int(cache.stats()["tiers"]["l2"]["entries"])
