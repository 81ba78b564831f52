"""The files around an L3 store: folder, secret key, open lock, quarantine.

Covers the file-system side of ``l3``: creating the cache folder 0700,
tightening modes of files LMDB made, the per-store secret key that signs
pickled payloads, the advisory lock that says "this store is open" (so that
compaction never swaps a file under a live reader), and moving a broken
store aside. Does not cover LMDB itself.

Files in a store folder::

    data.mdb, lock.mdb   LMDB's data and reader-table files (0600)
    secret.key           32 random bytes, the signing key (0600, O_EXCL)
    open.lock            flock: shared while open, exclusive to compact
    data.mdb.broken-*    a store that failed to open or verify, kept aside
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
import time

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "ensure_dir",
    "load_secret",
    "move_aside",
    "open_lock",
    "tighten",
]

log = logging.getLogger("guildcore.cache")

DIR_MODE = 0o700  # the cache may hold anything a task returned
FILE_MODE = 0o600
SECRET_BYTES = 32
SECRET_NAME = "secret.key"
LOCK_NAME = "open.lock"


def ensure_dir(path: str) -> None:
    """Create ``path`` (and parents) with mode 0700; tighten it if it is wider."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    tighten(path, DIR_MODE)


def tighten(path: str, mode: int) -> None:
    """Remove permission bits beyond ``mode`` from a file or folder we own."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_IMODE(st.st_mode) & ~mode and st.st_uid == os.getuid():
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def load_secret(folder: str) -> bytes:
    """Read the store's signing key, creating it 0600 if it does not exist.

    Race: two agents may start on an empty folder together. Each writes a
    key into its own O_EXCL temporary file and links it into place; link
    fails if the name exists, so exactly one key wins and nobody ever reads a
    half-written key.
    """
    path = os.path.join(folder, SECRET_NAME)
    for _ in range(2):
        try:
            with open(path, "rb") as f:
                key = f.read()
            if len(key) == SECRET_BYTES:
                tighten(path, FILE_MODE)
                return key
            log.warning(
                "cache key file %s is %d bytes, not %d; replacing it (signed entries become misses)",
                path,
                len(key),
                SECRET_BYTES,
            )
            os.unlink(path)
        except FileNotFoundError:
            pass
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path, "rb") as f:
        return f.read()


def open_lock(folder: str) -> int:
    """Open the store's lock file and hold it shared; return the descriptor."""
    fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def try_exclusive(fd: int) -> bool:
    """Upgrade our shared hold to exclusive, if no other agent has the store open."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def back_to_shared(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_SH)


def move_aside(folder: str, reason: str) -> str:
    """Rename a broken ``data.mdb`` out of the way; return its new path."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    data = os.path.join(folder, "data.mdb")
    aside = f"{data}.broken-{stamp}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.replace(data, aside)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, "lock.mdb"))
    log.warning(
        "cache store %s could not be used (%s); moved it to %s and started an empty one",
        folder,
        reason,
        aside,
    )
    return aside
