"""The monitor: reading memory and load, and deciding the engine's mode.

This module covers:

- ``Probe``: the one seam through which memory and load are read (the
  supervisor's and each agent's private memory, the in-process cache bytes,
  the host's memory and CPU load). Tests replace it with fixed readings.
- ``decide``: a pure function of (readings, current state, clock) to the new
  state, the actions to take and the reason, with the modes ``normal``,
  ``warning`` and ``critical`` and the hysteresis between them;
  ``Monitor`` keeps that state and the timeline of mode changes.
- ``may_start_agent``: whether the headroom under ``limits.total_system``
  leaves room for one more agent.
- ``adaptive_plan``: the target number of agents and the caching level of
  ``parallelization.strategy: adaptive``.
- ``release_memory``: what an idle agent (or the supervisor) does to give
  memory back: ``gc.collect()`` and ``malloc_trim``.

It does not cover carrying the actions out (the supervisor's owner loop
does: it owns the agents, the queue and the caches) nor when to read (every
``monitoring.check_interval``, on the loop's timer). Nothing here starts,
stops or signals a process.

Pressure is the highest of three fractions: private memory of the
supervisor and its agents over ``limits.total_system``; in-process cache
bytes over ``limits.cache_size``; the host's used memory over its total.
Cache bytes live inside the supervisor's private memory, so they are not
added to it a second time.

Modes, with ``warning_threshold`` W and ``critical_threshold`` C::

    normal ──p ≥ W──> warning ──p ≥ C──> critical
      ^  <──p < W-m, held──┘                │
      └─────────────p < W-m, held───────────┤
                  warning <──p < C-m, held──┘

Going up is immediate; going down needs the pressure to stay under the
threshold minus ``RECOVERY_MARGIN`` (m) for a hold time. A relapse soon after
a step down doubles the hold (up to ``MAX_HOLD_FACTOR`` times the base), so a
load that oscillates around a threshold changes the mode a few times, not at
every reading: a Dask worker that pauses and resumes over and over near its
memory threshold is the failure this prevents.

See also: ``engine.limits`` (the per-agent limit and its ``RssAnon`` reader),
``engine.scaling`` (when agents start and stop).
"""

from __future__ import annotations

import enum
import gc
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from guildcore._errors import format_bytes
from guildcore.monitorlimits import HOLD_CHECKS, MonitorLimits, MonitorRecord

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any


__all__ = [
    "HOLD_CHECKS",
    "Action",
    "AdaptivePlan",
    "CachingLevel",
    "Decision",
    "Mode",
    "Monitor",
    "MonitorLimits",
    "MonitorState",
    "Probe",
    "Readings",
    "Transition",
    "adaptive_plan",
    "decide",
    "may_start_agent",
    "pressure",
    "release_memory",
]

# Back to a lower mode only below its threshold minus this (a fraction of
# the limit): 0.80 -> under 0.70 to leave warning.
RECOVERY_MARGIN = 0.10
# ... held for HOLD_CHECKS check intervals (``monitorlimits``).
# A relapse within RELAPSE_FACTOR holds of a step down doubles the hold (up to
# MAX_HOLD_FACTOR times the base); as long a calm halves it back.
RELAPSE_FACTOR = 10
MAX_HOLD_FACTOR = 32
# While a mode's pressure stays at or above its threshold, its cleanup runs
# again every this many check intervals (the log is not repeated).
CLEANUP_EVERY_CHECKS = 5
# Timeline entries kept (the oldest go first).
TIMELINE_MAX = 256
# Adaptive: load from other processes under this fraction of the CPUs leaves
# the host to us (every agent, caching aggressive).
LOW_LOAD = 0.25


class Mode(enum.Enum):
    NORMAL = "normal"
    WARNING = "warning"
    CRITICAL = "critical"


_RANK = {Mode.NORMAL: 0, Mode.WARNING: 1, Mode.CRITICAL: 2}


class Action(enum.Enum):
    """What the owner loop does for a decision; each names the setting it serves."""

    ALERT = "alert"  # log at warning level and call on_alert (monitoring.alerts)
    EVICT_HALF = "evict_half"  # in-process L1/L2 down to half their bytes and entries
    EVICT_ALL = "evict_all"  # in-process L1/L2 emptied (critical: forced cleanup)
    TRIM = "trim"  # release_memory() in the supervisor and in every idle agent
    STOP_IDLE = "stop_idle"  # stop idle agents above pool.min_agents
    CACHE_WRITES_OFF = "cache_writes_off"  # nothing new is cached; reads still hit
    CACHE_WRITES_ON = "cache_writes_on"
    SEQUENTIAL_ON = "sequential_on"  # one agent takes new work; the others finish theirs and stop
    SEQUENTIAL_OFF = "sequential_off"


_WARNING_CLEANUP = (Action.EVICT_HALF, Action.TRIM, Action.STOP_IDLE)
_CRITICAL_CLEANUP = (Action.EVICT_ALL, Action.TRIM, Action.STOP_IDLE)


class Readings(MonitorRecord):
    """One sample of memory and load. Bytes are private (``RssAnon``) unless named otherwise.

    ``supervisor_bytes`` counts what the supervisor's process holds above what
    it held when its Guild was made (the caller's own data before that is not
    the Guild's); ``agent_bytes`` what each live agent holds above what it
    inherited at start (a forked agent's inherited pages are the caller's).
    """

    _fields = (
        "supervisor_bytes", "agent_bytes", "agents", "cache_bytes", "host_total_bytes",
        "host_available_bytes", "cpus", "host_busy_cpus", "own_busy_cpus", "load_avg", "runnable",
    )  # fmt: skip
    __slots__ = _fields
    supervisor_bytes: int
    agent_bytes: int  # summed over live agents
    agents: int  # live agents read
    cache_bytes: int  # in-process L1/L2 (already inside supervisor_bytes)
    host_total_bytes: int
    host_available_bytes: int
    cpus: int  # CPUs this process may use
    host_busy_cpus: float | None  # CPUs busy over the last interval, every process
    own_busy_cpus: float | None  # of which the supervisor and its agents
    load_avg: float | None  # the host's 1-minute load average
    runnable: int | None  # the host's run queue: threads runnable now

    def __init__(
        self,
        supervisor_bytes: int,
        agent_bytes: int,
        agents: int,
        cache_bytes: int,
        host_total_bytes: int,
        host_available_bytes: int,
        cpus: int,
        host_busy_cpus: float | None = None,
        own_busy_cpus: float | None = None,
        load_avg: float | None = None,
        runnable: int | None = None,
    ) -> None:
        self._set_fields(
            supervisor_bytes=supervisor_bytes, agent_bytes=agent_bytes, agents=agents, cache_bytes=cache_bytes,
            host_total_bytes=host_total_bytes, host_available_bytes=host_available_bytes, cpus=cpus,
            host_busy_cpus=host_busy_cpus, own_busy_cpus=own_busy_cpus, load_avg=load_avg, runnable=runnable,
        )  # fmt: skip

    @property
    def used_bytes(self) -> int:
        """What counts against ``limits.total_system``: the supervisor and its agents."""
        return self.supervisor_bytes + self.agent_bytes


class MonitorState(MonitorRecord):
    """What the decision remembers between readings (times on the caller's clock)."""

    _fields = (
        "mode", "since", "below_warning_since", "below_critical_since", "hold_s", "stepped_down_at", "cleaned_at",
    )  # fmt: skip
    __slots__ = _fields
    mode: Mode
    since: float  # when this mode began
    below_warning_since: float | None  # pressure under W - m since
    below_critical_since: float | None  # pressure under C - m since
    hold_s: float | None  # None: the base hold
    stepped_down_at: float | None
    cleaned_at: float | None

    def __init__(
        self,
        mode: Mode = Mode.NORMAL,
        since: float = 0.0,
        below_warning_since: float | None = None,
        below_critical_since: float | None = None,
        hold_s: float | None = None,
        stepped_down_at: float | None = None,
        cleaned_at: float | None = None,
    ) -> None:
        self._set_fields(
            mode=mode, since=since, below_warning_since=below_warning_since,
            below_critical_since=below_critical_since, hold_s=hold_s, stepped_down_at=stepped_down_at,
            cleaned_at=cleaned_at,
        )  # fmt: skip


class Decision(MonitorRecord):
    _fields = ("previous", "state", "actions", "reason", "pressure")
    __slots__ = _fields
    previous: Mode
    state: MonitorState
    actions: tuple[Action, ...]
    reason: str
    pressure: float

    def __init__(
        self, previous: Mode, state: MonitorState, actions: tuple[Action, ...], reason: str, pressure: float
    ) -> None:
        self._set_fields(previous=previous, state=state, actions=actions, reason=reason, pressure=pressure)

    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def changed(self) -> bool:
        return self.previous is not self.state.mode


def pressure(readings: Readings, limits: MonitorLimits) -> tuple[float, str]:
    """The highest pressure fraction and a sentence saying where it comes from."""
    r = readings
    candidates = [
        (
            r.used_bytes / limits.total_system_bytes,
            f"private memory {format_bytes(r.used_bytes)} (supervisor {format_bytes(r.supervisor_bytes)}"
            f" + {r.agents} agent{'s' if r.agents != 1 else ''} {format_bytes(r.agent_bytes)})"
            f" is {{pct}} of limits.total_system {format_bytes(limits.total_system_bytes)}",
        ),
        (
            r.cache_bytes / limits.cache_size_bytes,
            f"in-process cache {format_bytes(r.cache_bytes)} is {{pct}} of limits.cache_size "
            f"{format_bytes(limits.cache_size_bytes)}",
        ),
    ]
    if r.host_total_bytes > 0:
        used = r.host_total_bytes - r.host_available_bytes
        candidates.append((
            used / r.host_total_bytes,
            f"the host has {format_bytes(r.host_available_bytes)} available of "
            f"{format_bytes(r.host_total_bytes)}: {{pct}} used",
        ))  # fmt: skip
    value, text = max(candidates, key=lambda c: c[0])
    return value, text.format(pct=f"{value:.0%}")


def _level(p: float, limits: MonitorLimits) -> Mode:
    if p >= limits.critical:
        return Mode.CRITICAL
    if p >= limits.warning:
        return Mode.WARNING
    return Mode.NORMAL


def _entry_actions(previous: Mode, mode: Mode, alerts: bool) -> tuple[Action, ...]:
    alert = (Action.ALERT,) if alerts else ()
    if mode is Mode.CRITICAL:
        return (*alert, *_CRITICAL_CLEANUP, Action.CACHE_WRITES_OFF, Action.SEQUENTIAL_ON)
    if mode is Mode.WARNING and previous is Mode.NORMAL:
        return (*alert, *_WARNING_CLEANUP)
    if previous is Mode.CRITICAL:  # stepping down from critical
        return (*alert, Action.CACHE_WRITES_ON, Action.SEQUENTIAL_OFF)
    return alert  # warning -> normal


def decide(readings: Readings, state: MonitorState, now: float, limits: MonitorLimits) -> Decision:
    """The monitor's next state, the actions to take and why. Pure: no I/O, no clock read."""
    p, why = pressure(readings, limits)
    base = limits.base_hold_s
    hold = state.hold_s if state.hold_s is not None else base
    mode = state.mode
    target = _level(p, limits)

    # Going up: at once, with the full cleanup of the new mode.
    if _RANK[target] > _RANK[mode]:
        if state.stepped_down_at is not None:
            calm = now - state.stepped_down_at
            if calm < RELAPSE_FACTOR * hold:
                hold = min(hold * 2, base * MAX_HOLD_FACTOR)
            else:
                hold = max(base, hold / 2)
        threshold = limits.critical if target is Mode.CRITICAL else limits.warning
        new = MonitorState(
            target, since=now, hold_s=hold, stepped_down_at=state.stepped_down_at, cleaned_at=now
        )
        reason = f"{target.value}: {why}, at or above monitoring.{target.value}_threshold {threshold:.0%}"
        return Decision(mode, new, _entry_actions(mode, target, limits.alerts), reason, p)

    below_w = p < limits.warning - RECOVERY_MARGIN
    below_c = p < limits.critical - RECOVERY_MARGIN
    bw = (
        (state.below_warning_since if state.below_warning_since is not None else now)
        if below_w
        else None
    )
    bc = (
        (state.below_critical_since if state.below_critical_since is not None else now)
        if below_c
        else None
    )

    # Going down: only after the pressure held under the line for the hold time.
    down: Mode | None = None
    if mode is not Mode.NORMAL and bw is not None and now - bw >= hold:
        down = Mode.NORMAL
    elif mode is Mode.CRITICAL and bc is not None and now - bc >= hold:
        down = Mode.WARNING
    if down is not None:
        line = (limits.warning if down is Mode.NORMAL else limits.critical) - RECOVERY_MARGIN
        new = MonitorState(
            down, since=now, hold_s=hold, stepped_down_at=now, cleaned_at=state.cleaned_at
        )
        reason = f"{down.value}: {why}, under {line:.0%} for {hold:g} s"
        return Decision(mode, new, _entry_actions(mode, down, limits.alerts), reason, p)

    # Staying: clean up again now and then while the pressure stays high.
    actions: tuple[Action, ...] = ()
    cleaned = state.cleaned_at
    if mode is not Mode.NORMAL and _RANK[target] >= _RANK[mode]:
        due = cleaned is None or now - cleaned >= CLEANUP_EVERY_CHECKS * limits.check_interval_s
        if due:
            actions = _CRITICAL_CLEANUP if mode is Mode.CRITICAL else _WARNING_CLEANUP
            cleaned = now
    new = state.replace(
        below_warning_since=bw, below_critical_since=bc, hold_s=hold, cleaned_at=cleaned
    )
    return Decision(mode, new, actions, f"{mode.value}: {why}", p)


def may_start_agent(
    readings: Readings | None, limits: MonitorLimits, *, alive: int, started_since: int = 0
) -> tuple[bool, str]:
    """Whether one more agent may start, and why not.

    The headroom is what is left under ``limits.total_system`` (and of the
    host's available memory) once the agents started since ``readings`` was
    taken are counted at their full ``limits.per_agent``. An agent starts only
    if the headroom holds one more ``per_agent``. With no agent alive, one
    always starts: queued work must run somewhere, and one agent is the
    sequential mode the monitor falls back to anyway.
    """
    if alive == 0:
        return True, "no agent is alive: one always starts, so that queued work runs"
    if readings is None:
        return True, "no reading yet"
    reserved = started_since * limits.per_agent_bytes
    budget = limits.total_system_bytes - readings.used_bytes - reserved
    host = readings.host_available_bytes - reserved if readings.host_total_bytes else budget
    headroom = min(budget, host)
    if headroom >= limits.per_agent_bytes:
        return True, f"headroom {format_bytes(headroom)}"
    where = "under limits.total_system" if budget <= host else "of the host's available memory"
    return False, (
        f"headroom {format_bytes(max(0, headroom))} {where} is less than one agent's "
        f"limits.per_agent {format_bytes(limits.per_agent_bytes)}"
    )


# -- the adaptive strategy -----------------------------------------------------------------


class CachingLevel(enum.Enum):
    AGGRESSIVE = "aggressive"  # the in-process tiers at their full configured budget
    CONSERVATIVE = "conservative"  # the in-process tiers held to half their budget
    OFF = "off"  # no cache writes (reads still hit)


class AdaptivePlan(MonitorRecord):
    _fields = ("agents", "caching", "reason")
    __slots__ = _fields
    agents: int
    caching: CachingLevel
    reason: str

    def __init__(self, agents: int, caching: CachingLevel, reason: str) -> None:
        self._set_fields(agents=agents, caching=caching, reason=reason)


def _external_load(readings: Readings, running: int) -> float | None:
    """CPUs kept busy by other processes than ours."""
    if readings.host_busy_cpus is not None and readings.own_busy_cpus is not None:
        return max(0.0, readings.host_busy_cpus - readings.own_busy_cpus)
    if readings.load_avg is not None:  # the first reading has no interval: the load average
        return max(0.0, readings.load_avg - running)
    return None


def adaptive_plan(
    readings: Readings,
    mode: Mode,
    limits: MonitorLimits,
    *,
    queued: int | None = None,
    running: int = 0,
) -> AdaptivePlan:
    """Agents and caching for ``parallelization.strategy: adaptive``.

    Memory first: in ``critical`` mode, or when the host cannot hold one more
    agent's ``per_agent``, one agent and no caching. Then CPU load from
    other processes: under ``LOW_LOAD`` of the CPUs, every agent up to
    ``max_agents`` and caching aggressive; above, one agent per CPU left
    free (at least one) and caching conservative. The run queue caps the
    count: no more agents than tasks queued and running (``queued`` None:
    unknown, no cap). ``min_agents`` stays the floor outside low memory.
    """
    if mode is Mode.CRITICAL or readings.host_available_bytes < limits.per_agent_bytes:
        why = "critical mode" if mode is Mode.CRITICAL else (
            f"the host has {format_bytes(readings.host_available_bytes)} available, "
            f"less than one agent's limits.per_agent {format_bytes(limits.per_agent_bytes)}"
        )  # fmt: skip
        return AdaptivePlan(1, CachingLevel.OFF, f"memory low ({why}): one agent, caching off")
    external = _external_load(readings, running)
    cpus = max(1, readings.cpus)
    if external is None or external < LOW_LOAD * cpus:
        agents, caching = limits.max_agents, CachingLevel.AGGRESSIVE
        shown = "unknown" if external is None else f"{external:.1f} of {cpus} CPUs"
        reason = (
            f"host load from other processes {shown}: up to {agents} agents, caching aggressive"
        )
    else:
        agents, caching = max(1, round(cpus - external)), CachingLevel.CONSERVATIVE
        reason = (
            f"host load from other processes {external:.1f} of {cpus} CPUs: {agents} agents "
            "for the CPUs left, caching conservative"
        )
    if queued is not None and agents > max(1, queued + running):
        agents = max(1, queued + running)
        reason += f"; {queued + running} tasks to run: {agents} agents"
    agents = max(min(limits.min_agents, limits.max_agents), min(agents, limits.max_agents))
    if mode is Mode.WARNING and caching is CachingLevel.AGGRESSIVE:
        caching = CachingLevel.CONSERVATIVE
        reason += "; warning mode: caching conservative"
    return AdaptivePlan(agents, caching, reason)


# -- state over time -----------------------------------------------------------------------


class Transition(MonitorRecord):
    """One mode change: when (the caller's clock), from what, to what, why, on which readings."""

    _fields = ("at", "previous", "mode", "reason", "readings")
    __slots__ = _fields
    at: float
    previous: Mode
    mode: Mode
    reason: str
    readings: Readings

    def __init__(self, at: float, previous: Mode, mode: Mode, reason: str, readings: Readings) -> None:
        self._set_fields(at=at, previous=previous, mode=mode, reason=reason, readings=readings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "from": self.previous.value,
            "to": self.mode.value,
            "reason": self.reason,
            "readings": self.readings.to_dict(),
        }


class Monitor:
    """The decision's state between readings and the timeline of mode changes. No I/O."""

    __slots__ = ("last", "limits", "state", "timeline")

    def __init__(self, limits: MonitorLimits, state: MonitorState | None = None) -> None:
        self.limits = limits
        self.state = MonitorState() if state is None else state
        self.timeline: deque[Transition] = deque(maxlen=TIMELINE_MAX)
        self.last: Readings | None = None

    @property
    def mode(self) -> Mode:
        return self.state.mode

    def observe(self, readings: Readings, now: float) -> Decision:
        decision = decide(readings, self.state, now, self.limits)
        self.state = decision.state
        self.last = readings
        if decision.changed:
            self.timeline.append(
                Transition(now, decision.previous, decision.mode, decision.reason, readings)
            )
        return decision

    def snapshot(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "since": self.state.since,
            "timeline": [t.to_dict() for t in self.timeline],
            "readings": None if self.last is None else self.last.to_dict(),
        }


# -- reading -------------------------------------------------------------------------------


class Probe:
    """Reads memory and load. The seam: tests pass an object with the same ``read``.

    ``read_private(pid)`` gives a process's private bytes (the engine passes
    ``engine.limits.read_private_bytes``); ``cache_bytes()`` the bytes held by
    the in-process cache tiers; ``supervisor_baseline`` the supervisor's
    private bytes when its Guild was made, not counted (the caller's own
    data). CPU figures are averages over the interval since the previous
    ``read``; the first read has only the load average.

    On Linux every figure comes from ``/proc`` (``procfs``): a reading costs
    well under a millisecond and imports nothing; elsewhere psutil answers.
    """

    def __init__(
        self,
        read_private: Callable[[int], int | None],
        *,
        cache_bytes: Callable[[], int] = lambda: 0,
        pid: int | None = None,
        supervisor_baseline: int = 0,
    ) -> None:
        from guildcore.config import usable_cpus

        self._read_private = read_private
        self._cache_bytes = cache_bytes
        self._pid = os.getpid() if pid is None else pid
        self._baseline = supervisor_baseline
        self._cpus = usable_cpus()
        try:  # busy time is summed over the CPUs this process may use
            self._cpu_ids = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._cpu_ids = []
        self._last_at: float | None = None
        self._last_host_busy: float | None = None
        self._last_own: dict[int, float] = {}
        self._procs: dict[int, Any] = {}  # psutil.Process per pid, off Linux

    def read(self, agent_pids: Iterable[int], now: float, *, baselines: Mapping[int, int] | None = None) -> Readings:
        """One reading; ``baselines`` maps an agent's pid to the private bytes it started with."""
        from guildcore import procfs

        pids = list(agent_pids)
        agent_bytes = agents = 0
        for pid in pids:
            private = self._read_private(pid)
            if private is not None:
                base = baselines.get(pid, 0) if baselines else 0
                agent_bytes += max(0, private - base)
                agents += 1
        host = procfs.host_memory()
        if host is None:
            import psutil  # ~10-30 ms of import: only where /proc cannot answer

            vm = psutil.virtual_memory()
            host = int(vm.total), int(vm.available)
        host_busy, own_busy = self._cpu([self._pid, *pids], now)
        return Readings(
            supervisor_bytes=max(0, (self._read_private(self._pid) or 0) - self._baseline),
            agent_bytes=agent_bytes,
            agents=agents,
            cache_bytes=self._cache_bytes(),
            host_total_bytes=host[0],
            host_available_bytes=host[1],
            cpus=self._cpus,
            host_busy_cpus=host_busy,
            own_busy_cpus=own_busy,
            load_avg=_load_avg(),
            runnable=_runnable(),
        )

    def _cpu(self, pids: list[int], now: float) -> tuple[float | None, float | None]:
        from guildcore import procfs

        busy = procfs.cpu_busy_s(self._cpu_ids)
        own: dict[int, float] = {}
        if busy is not None:
            for pid in pids:
                t = procfs.process_cpu_s(pid)
                if t is not None:
                    own[pid] = t
        else:
            busy = self._cpu_psutil(pids, own)
        host_busy = own_busy = None
        if self._last_at is not None and self._last_host_busy is not None and now > self._last_at:
            dt = now - self._last_at
            host_busy = max(0.0, busy - self._last_host_busy) / dt
            # Only processes seen at both ends: a new agent's start-up CPU is not this interval's.
            own_busy = (
                sum(max(0.0, t - self._last_own[p]) for p, t in own.items() if p in self._last_own)
                / dt
            )
        self._last_at, self._last_host_busy, self._last_own = now, busy, own
        return host_busy, own_busy

    def _cpu_psutil(self, pids: list[int], own: dict[int, float]) -> float:
        import psutil

        per_cpu = psutil.cpu_times(percpu=True)
        mine = [per_cpu[i] for i in self._cpu_ids if i < len(per_cpu)] or per_cpu
        busy = sum(float(sum(t)) - t.idle - getattr(t, "iowait", 0.0) for t in mine)
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                t = proc.cpu_times()
                own[pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._procs.pop(pid, None)
        for gone in set(self._procs) - set(own):
            del self._procs[gone]
        return busy


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _runnable() -> int | None:
    """Threads runnable on the host now (``/proc/loadavg``: running/total), Linux only."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


# -- giving memory back --------------------------------------------------------------------

_libc: list[Any] = []  # the C library, loaded on first use (empty list: not yet tried)


def release_memory() -> None:
    """Collect garbage, then hand free heap pages back to the OS (glibc ``malloc_trim``).

    Freed Python objects leave their pages in the allocator's free lists;
    ``RssAnon`` only drops once those pages go back, which ``malloc_trim(0)``
    does. Where there is no glibc it is skipped.
    """
    gc.collect()
    if not _libc:
        import ctypes  # ~4 ms of import: paid on the first cleanup, not by every Guild

        try:  # the symbols of the running program, libc among them (no ldconfig subprocess)
            lib = ctypes.CDLL(None)
            _libc.append(lib if hasattr(lib, "malloc_trim") else None)
        except OSError:
            _libc.append(None)
    lib = _libc[0]
    if lib is not None:
        lib.malloc_trim(0)
