"""Host memory and CPU time read straight from Linux ``/proc``: the monitor's fast path.

This module covers three reads, each one small file: the host's total and
available memory (``/proc/meminfo``), the busy time of chosen CPUs
(``/proc/stat``) and a process's fields, CPU time among them (``/proc/PID/stat``). Each returns
None where ``/proc`` cannot answer (another OS, a sandbox), and the caller
falls back to psutil. It does not cover private memory (``engine.limits``
reads ``RssAnon``) nor what the numbers mean (``monitor``).

Why not psutil alone: importing it costs 10-30 ms, which a Guild would pay
at its first reading; these reads cost tens of microseconds each and need
nothing imported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

try:
    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    _TICK_S = 0.01


def host_memory() -> tuple[int, int] | None:
    """``(total, available)`` bytes of the host, or None."""
    total = available = None
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    total = int(line.split()[1]) * 1024
                elif line.startswith(b"MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break  # it follows MemTotal
    except (OSError, ValueError, IndexError):
        return None
    if total is None or available is None:
        return None
    return total, available


def cpu_busy_s(cpu_ids: Sequence[int]) -> float | None:
    """Seconds the CPUs ``cpu_ids`` (every CPU if empty) have been busy since boot, or None.

    Busy is user + nice + system + irq + softirq + steal: not idle, not
    waiting for I/O (guest time is inside user already).
    """
    wanted = {f"cpu{i}".encode() for i in cpu_ids}
    busy = 0
    seen = 0
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if not line.startswith(b"cpu"):
                    break  # the cpu lines come first
                parts = line.split()
                if parts[0] == b"cpu" or (wanted and parts[0] not in wanted):
                    continue
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
                busy += user + nice + system + irq + softirq + steal
                seen += 1
    except (OSError, ValueError, IndexError):
        return None
    return busy * _TICK_S if seen else None


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from field 3 on (``[0]`` is field 3, the state), or None if gone.

    The command name (field 2) is in parentheses and may hold spaces and
    parentheses: the fields are split after its last ``)``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    end = data.rfind(b")")
    return data[end + 2 :].split() if end >= 0 else None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None if gone."""
    fields = stat_fields(pid)
    try:
        return (int(fields[11]) + int(fields[12])) * _TICK_S if fields is not None else None  # utime, stime: 14, 15
    except (ValueError, IndexError):
        return None
