"""The live status of running Guilds: one small JSON file per Guild in a private folder.

This module covers the run folder (``$GUILD_RUN_DIR``, else
``$XDG_RUNTIME_DIR/guildcore``, else ``/tmp/guildcore-<uid>``; mode 0700,
refused if another user owns it or others may write it), writing a
Guild's snapshot atomically (a temporary file, then ``os.replace``, mode
0600), removing it when the Guild closes, and listing the Guilds running
on this host for ``guild top``. It does not cover what a snapshot holds
(``fold.live_view``) nor drawing it (``dashboard.top``).

A snapshot names its supervisor's pid and that process's start time, so a
file left by a killed supervisor (or one whose pid was reused) is known as
stale, and removed by the next listing when it is ours.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any

from guildcore.procfs import stat_fields

log = logging.getLogger("guildcore.metrics")

__all__ = ["list_running", "process_start", "publish", "remove", "run_dir", "snapshot_path"]

SUFFIX = ".json"


def run_dir() -> str:
    """The folder where running supervisors publish their status."""
    explicit = os.environ.get("GUILD_RUN_DIR")
    if explicit:
        return os.path.abspath(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "guildcore")
    return os.path.join("/tmp", f"guildcore-{os.getuid()}")


def _ensure_private(path: str) -> bool:
    """Create ``path`` as a 0700 folder of ours; False (and a log line) if it cannot be trusted."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        log.warning("live status is off: cannot create %s: %s", path, exc)
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        log.warning("live status is off: %s is not a folder owned by this user", path)
        return False
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            log.warning("live status is off: %s is open to other users and cannot be closed: %s", path, exc)
            return False
    return True


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def snapshot_path(folder: str, pid: int, run_id: str, guild_no: int) -> str:
    return os.path.join(folder, f"{pid}-{run_id}-{guild_no}{SUFFIX}")


def publish(path: str, payload: dict[str, Any]) -> bool:
    """Write ``payload`` to ``path`` atomically; False if the folder cannot be used."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) and not _ensure_private(folder):
        return False
    tmp = f"{path}.tmp"
    data = json.dumps(payload, separators=(",", ":"), default=str).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the live status %s: %s", path, exc)
        return False
    return True


def remove(path: str) -> None:
    for name in (path, f"{path}.tmp"):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the live status %s: %s", name, exc)


def _alive(snapshot: dict[str, Any]) -> bool:
    pid = snapshot.get("pid")
    if not isinstance(pid, int):
        return False
    start = process_start(pid)
    return start is not None and (snapshot.get("pid_start") in (None, start))


def list_running(folder: str | None = None) -> list[dict[str, Any]]:
    """Snapshots of the Guilds running on this host, newest first; stale files of ours go."""
    folder = folder or run_dir()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                snapshot = json.loads(f.read())
        except (OSError, ValueError):
            continue  # being replaced, or not ours
        if not isinstance(snapshot, dict):
            continue
        if not _alive(snapshot):
            try:
                if os.stat(path).st_uid == os.getuid():
                    remove(path)
            except OSError:
                pass
            continue
        snapshot["path"] = path
        out.append(snapshot)
    out.sort(key=lambda s: s.get("started") or 0, reverse=True)
    return out
