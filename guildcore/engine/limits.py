"""Reading and capping an agent's private memory.

This module covers: the probe that reads an agent's private resident memory
(``RssAnon``), and the hard ``RLIMIT_DATA`` cap an agent puts on itself.
It does not cover: deciding what to do past the limit (the supervisor kills
and replaces the agent) or host-wide pressure (the monitor).

Private memory, not RSS: pages of the shared context are file-backed shared
mappings, so they show in RSS but never in ``RssAnon``; an agent that reads a
256 MB context therefore stays within a 100 MB limit.

Tests replace ``read_private_bytes`` (``limits.read_private_bytes = fake``):
the supervisor reads memory only through this one seam.
"""

from __future__ import annotations

from collections.abc import Callable

# Headroom of the in-agent hard cap above the sampled limit. The sampler
# catches steady growth; the cap stops a single runaway allocation before the
# host suffers. 64 MiB covers the interpreter's own data segment and malloc
# arena slack, which RLIMIT_DATA counts but RssAnon may not yet show.
_RLIMIT_HEADROOM_MIN = 64 * 2**20
_RLIMIT_HEADROOM_FRACTION = 0.5


def _read_rss_anon(pid: int) -> int | None:
    """RssAnon of ``pid`` in bytes, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    return None


def _read_psutil(pid: int) -> int | None:
    import psutil

    try:
        mem = psutil.Process(pid).memory_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    shared = getattr(mem, "shared", 0)
    return int(mem.rss - shared)


def _default_probe() -> Callable[[int], int | None]:
    try:
        with open("/proc/self/status", "rb") as f:
            if any(line.startswith(b"RssAnon:") for line in f):
                return _read_rss_anon
    except OSError:
        pass
    return _read_psutil


#: The seam: ``pid -> private bytes or None``. Replace in tests.
read_private_bytes: Callable[[int], int | None] = _default_probe()


def _status_bytes(field: bytes, pid: int | str = "self") -> int:
    """One ``kB`` field of /proc/PID/status in bytes (0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def inherited_private_bytes() -> int:
    """Private memory an agent has at start; the baseline of a forked agent."""
    return _status_bytes(b"RssAnon:")


def hard_cap_bytes(limit_bytes: int) -> int:
    """The RLIMIT_DATA an agent sets for a sampled limit of ``limit_bytes``."""
    headroom = max(_RLIMIT_HEADROOM_MIN, int(limit_bytes * _RLIMIT_HEADROOM_FRACTION))
    return limit_bytes + headroom


def apply_hard_cap(limit_bytes: int | None) -> None:
    """Cap this process's data segment; a runaway allocation then raises MemoryError."""
    if not limit_bytes:
        return
    # Above what the agent starts with: a forked agent inherits the parent's
    # whole data segment, which counts against RLIMIT_DATA but is not its own.
    import resource  # in agents only (a template imports it once for all of its agents)

    cap = hard_cap_bytes(limit_bytes) + _status_bytes(b"VmData:")
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    except (ValueError, OSError):
        # Some sandboxes forbid it; the sampled limit still holds.
        pass
