"""Shared-memory segments: the one set of helpers for the context and the engine.

This module covers naming, creating, opening, mapping and unlinking the
segments of ``/dev/shm`` that guildcore uses (context generations, stream
rings, big results), tracking them with the resource tracker where wanted,
and sweeping those left by a dead supervisor. It does not cover what is
inside a segment (``context/layout.py``, ``engine/ring.py``,
``engine/shmbuf.py``). It imports nothing of guildcore's.

Names: every segment (and a stream's FIFOs) is ``guild_{owner pid}_...``,
so that ``sweep_dead`` can remove those whose owner has died and the test
suite's leak guard sees them all.

Tracking: Python 3.11's resource tracker unlinks, when a process exits,
every segment that process registered, even one it merely attached. Only a
context segment is registered (``track``), by the supervisor that wrote it:
if that supervisor is killed, its tracker removes the segment. Segments are
opened with ``_posixshmem`` directly, never through ``SharedMemory``, so
that nothing else registers: an agent that exits must not take a segment
away from every other agent.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    import mmap

# ``_posixshmem`` and ``mmap`` are imported by the functions that use them:
# every Guild sweeps (``sweep_dead``) when it is made, and needs neither
# (~0.6 ms of extension loading) unless it shares a context or ships a big
# result.

SHM_DIR = "/dev/shm"
PREFIX = "guild_"
_MODE = 0o600


def reserve(fd: int, size: int) -> None:
    """Back every page of a new segment now (the seam tests replace to fake a full /dev/shm).

    ftruncate alone makes a sparse file: a write into a page tmpfs has no
    room for then kills the writer with SIGBUS. Reserved, a full /dev/shm
    fails here, with ENOSPC, where callers can fall back or say so.
    """
    os.posix_fallocate(fd, 0, size)


def create(name: str, size: int, *, reserve_pages: bool = False) -> int:
    """Create segment ``name`` (exclusively) of ``size`` bytes; its descriptor.

    Sparse unless ``reserve_pages`` (see ``reserve``).
    """
    import _posixshmem  # type: ignore[import-not-found]  # POSIX only, as is guildcore

    fd: int = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=_MODE)
    try:
        os.ftruncate(fd, max(1, size))
        if reserve_pages:
            reserve(fd, max(1, size))
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    return fd


def open_fd(name: str, *, writable: bool) -> int:
    """A descriptor of existing segment ``name`` (the caller closes it)."""
    import _posixshmem  # type: ignore[import-not-found]

    fd: int = _posixshmem.shm_open("/" + name, os.O_RDWR if writable else os.O_RDONLY, mode=_MODE)
    return fd


def map_fd(fd: int, size: int | None = None, *, writable: bool) -> mmap.mmap:
    """Map a segment's descriptor (all of it unless ``size``), shared, read-only unless ``writable``."""
    import mmap

    length = os.fstat(fd).st_size if size is None else max(1, size)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=prot)


def create_mapped(name: str, size: int) -> mmap.mmap:
    """Create segment ``name``, its pages reserved, and map it writable; not tracked."""
    fd = create(name, size, reserve_pages=True)
    try:
        return map_fd(fd, size, writable=True)
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)


def open_mapped(name: str, *, writable: bool) -> mmap.mmap:
    """Map existing segment ``name``; not tracked."""
    fd = open_fd(name, writable=writable)
    try:
        return map_fd(fd, writable=writable)
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Remove ``name``; False if it was gone already. The mappings stay valid."""
    import _posixshmem  # type: ignore[import-not-found]

    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


def track(name: str) -> None:
    """Register ``name`` with this process's resource tracker (it unlinks it if we die)."""
    from multiprocessing import resource_tracker

    resource_tracker.register("/" + name, "shared_memory")


def untrack(name: str) -> None:
    from multiprocessing import resource_tracker

    resource_tracker.unregister("/" + name, "shared_memory")


def free_bytes(shm_dir: str = SHM_DIR) -> int | None:
    """Bytes free in ``shm_dir``; None where there is no such folder (macOS)."""
    try:
        st = os.statvfs(shm_dir)
    except (FileNotFoundError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not). Without psutil: importing it
    costs every Guild ~20 ms whenever another process's segment is in /dev/shm."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to ask: it answered the signal
    return state != b"Z"


def sweep_dead(prefix: str = PREFIX, *, shm_dir: str = SHM_DIR) -> list[str]:
    """Remove names ``{prefix}{pid}_...`` whose owner pid is dead; returns them.

    A name whose owner lives is left alone, whoever owns it; a reused pid
    only makes the sweep more conservative.
    """
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].split("_", 1)[0]
        if not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
        except FileNotFoundError:
            continue  # another supervisor swept it first
        removed.append(name)
    return removed


def sweep_owned(owner_pid: int, kind: str, *, shm_dir: str = SHM_DIR) -> None:
    """Remove every ``guild_{owner_pid}_{kind}...`` name (an owner cleaning up after itself)."""
    head = f"{PREFIX}{owner_pid}_{kind}"
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return
    for name in names:
        if name.startswith(head):
            try:
                os.unlink(os.path.join(shm_dir, name))
            except FileNotFoundError:
                pass
