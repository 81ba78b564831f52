"""Task functions of the context suite, in a module of their own.

Agents and workers import this module to run them, so it stays light:
numpy and guildcore only, nothing of the suite or its peers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import guildcore

SLICE_BYTES = 4096

# The context as a per-worker global: set by an initializer, inherited by a
# fork, or attached once per worker (bare SharedMemory).
_GLOBAL: Any = None


def sum_slice(value: Any, offset: int) -> float:
    """Sum the ``SLICE_BYTES`` at ``offset`` (float64 elements for a float array)."""
    if isinstance(value, np.ndarray) and value.dtype != np.uint8:
        start = offset // value.itemsize
        return float(value[start : start + SLICE_BYTES // value.itemsize].sum())
    return float(np.frombuffer(value, dtype=np.uint8, count=SLICE_BYTES, offset=offset).sum())


def sum_all(value: Any) -> float:
    """Read every byte of the context (to measure what that costs in private memory)."""
    if isinstance(value, np.ndarray):
        return float(value.sum())
    return float(np.frombuffer(value, dtype=np.uint8).sum(dtype=np.uint64))


def noop(x: Any = None) -> Any:
    return x


def pid_after(delay_s: float) -> int:
    """Warm-up: hold an agent for ``delay_s`` so that every agent gets one."""
    time.sleep(delay_s)
    return os.getpid()


# -- per-system task bodies ----------------------------------------------------


def task_arg(value: Any, offset: int) -> float:
    return sum_slice(value, offset)


def init_global(value: Any) -> None:
    global _GLOBAL
    _GLOBAL = value


def task_global(offset: int) -> float:
    return sum_slice(_GLOBAL, offset)


def task_mpire(shared: Any, offset: int) -> float:
    return sum_slice(shared, offset)


def attach_bare(name: str, kind: str, delay_s: float = 0.0) -> int:
    """Map a bare SharedMemory segment once per worker (setup, not timed with the tasks)."""
    from multiprocessing.shared_memory import SharedMemory

    global _GLOBAL
    if _GLOBAL is None or _GLOBAL[0] != name:
        # Python 3.11 registers this mere attach with the resource tracker; harmless here
        # only because forkserver workers share the parent's tracker.
        shm = SharedMemory(name=name)
        buf = shm.buf
        assert buf is not None
        value = np.frombuffer(buf, dtype=np.float64) if kind == "ndarray" else buf
        _GLOBAL = (name, shm, value)
    time.sleep(delay_s)
    return os.getpid()


def task_bare(offset: int) -> float:
    return sum_slice(_GLOBAL[2], offset)


def task_context(offset: int) -> float:
    return sum_slice(guildcore.context()["v"], offset)


def task_ref(ref: Any, offset: int) -> float:
    return sum_slice(ref["v"], offset)


def attach_context(delay_s: float = 0.0) -> int:
    """Warm-up: map the current context in this agent (and decode ``v``)."""
    guildcore.context()["v"]
    time.sleep(delay_s)
    return os.getpid()


# -- memory ----------------------------------------------------------------------


def rss_anon_bytes(pid: int | str = "self") -> int:
    """``RssAnon`` of a process (its private anonymous memory), in bytes; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def read_whole_context(delay_s: float) -> tuple[int, int, int]:
    """(pid, RssAnon before, RssAnon after) reading every byte of the context ``v``."""
    before = rss_anon_bytes()
    sum_all(guildcore.context()["v"])
    after = rss_anon_bytes()
    time.sleep(delay_s)
    return os.getpid(), before, after


# -- lookups -----------------------------------------------------------------------


def _timed_lookups(get: Callable[[], Any], keys: list[str]) -> tuple[float, float]:
    """(seconds for getting the mapping and its first lookup, seconds per lookup after)."""
    start = time.perf_counter()
    mapping = get()
    mapping[keys[0]]
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for key in keys:
        mapping[key]
    return first_s, (time.perf_counter() - start) / len(keys)


def lookups_context(keys: list[str]) -> tuple[float, float]:
    """Lookups via guildcore.context() (the first one includes attaching the segment)."""
    return _timed_lookups(guildcore.context, keys)


def lookups_ref(ref: Any, keys: list[str]) -> tuple[float, float]:
    """The same through a ContextRef argument (a read-only Mapping)."""
    return _timed_lookups(lambda: ref, keys)


def lookups_global(keys: list[str]) -> tuple[float, float]:
    """The same in a plain dict inherited by fork (the floor: a dict lookup)."""
    return _timed_lookups(lambda: _GLOBAL, keys)
