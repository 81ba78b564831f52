"""The run recorder: the one narrow interface through which a run is observed.

This module covers ``RunRecorder``, what the supervisor (owner thread) and
the Guild (caller threads) call to say what happened, each call with its
timestamp (``time.monotonic()`` seconds):

    tasks   task_queued, task_sent, task_ran (the agent's own timing),
            task_finished (outcome and error type), task_retried
    agents  agent_started, agent_ready, agent_exited (with why), memory_sample
    run     mode_changed, alert, inline_batch, cache_lookup
    timer   tick(now, snapshot): every ``TICK_S`` on the owner thread

It does not cover aggregation (``fold``), alert rules (``alerts``), a run of
several Guilds and its history (``run``, ``history``) or the live status
file (``live``).

Hot path: a report appends one tuple to one list, nothing else: no lock,
no dict, no clock read. ``tick`` drains the list and folds it into
aggregates, evaluates alerts and publishes the live snapshot, so memory
stays bounded by what happens between two ticks.

Race: reports come from the owner thread and from caller threads (inline
batches, cache lookups). ``list.append`` and ``del list[:n]`` are single
operations under the GIL, so a report racing with a drain lands either in
this drain or the next; nothing is lost or seen twice.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from guildcore._records import Declared, field, made_once

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.metrics.alerts import Alert, AlertRules
    from guildcore.metrics.fold import Fold

log = logging.getLogger("guildcore.metrics")
alert_log = logging.getLogger("guildcore.alerts")

# How often the owner loop calls tick(): the live view's refresh period.
TICK_S = 0.5

# Event tags: the first field of every tuple in the event list.
QUEUED = 0  # (tag, t, task_id, fn, n_items)
SENT = 1  # (tag, t, task_id, agent_id)
RAN = 2  # (tag, t, task_id, agent_id, started_at, run_s, cpu_s)
FINISHED = 3  # (tag, t, task_id, outcome, error_type)
RETRIED = 4  # (tag, t, task_id, reason)
AGENT_STARTED = 5  # (tag, t, agent_id, pid)
AGENT_READY = 6  # (tag, t, agent_id)
AGENT_EXITED = 7  # (tag, t, agent_id, reason)
MEMORY = 8  # (tag, t, agent_id, private_bytes)
MODE = 9  # (tag, t, mode, reason)
INLINE = 10  # (tag, t, fn, n_items, started_at)
CACHE = 11  # (tag, t, fn, fingerprint, namespace, lookups, hits, key_sample)

# Outcomes of task_finished.
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"

# Keys kept per cache lookup to tell, across runs, keys that never repeat.
KEY_SAMPLE = 64


class RecorderSettings(Declared):
    """What recording needs from the configuration, as plain values.

    ``config`` holds the settings the record keeps for ``guild doctor``
    (flat dotted keys); ``memory_probe`` reads a process's private bytes.
    """

    max_agents: int
    min_agents: int = 0
    limit_bytes: int | None = None
    warning_threshold: float = 0.8
    log_alerts: bool = True
    memory_probe: Callable[[int], int | None] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


class RunRecorder:
    """Records one Guild's part of a run. Every report method is O(1) and lock-free.

    ``t0`` is the run's start and ``opened`` this Guild's (monotonic seconds).
    ``on_alert`` is called on the thread that runs ``tick`` (the supervisor's)
    with each new ``Alert``; keep it quick.
    """

    def __init__(
        self,
        settings: RecorderSettings,
        *,
        t0: float,
        opened: float | None = None,
        guild_no: int = 1,
        on_alert: Callable[[Alert], object] | None = None,
        publish: Callable[[RunRecorder, dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.guild_no = guild_no
        self.on_alert = on_alert
        self._publish = publish
        self._events: list[tuple[Any, ...]] = []
        self._add = self._events.append
        opened = t0 if opened is None else opened
        self._t0 = t0
        self.opened = opened
        self._fold: Fold | None = None
        self._rules: AlertRules | None = None
        self._made = threading.Lock()  # the owner thread and a caller (metrics()) may make them at once
        self.next_tick = opened + TICK_S
        # The last live view (plain data), replaced whole at each tick; other
        # threads (progress bars) read it without a lock.
        self.live: dict[str, Any] | None = None
        self.closed = False

    # The fold and the alert rules are made at the first tick (or read), not
    # with the Guild: their modules are a tenth of what a Guild imports, and
    # a script's first result comes back before the first tick.
    @property
    def fold(self) -> Fold:
        def make() -> Fold:
            from guildcore.metrics.fold import Fold

            return Fold(self.settings, t0=self._t0, opened=self.opened, guild_no=self.guild_no)

        return made_once(self, "_fold", self._made, make)

    @property
    def rules(self) -> AlertRules:
        def make() -> AlertRules:
            from guildcore.metrics.alerts import AlertRules

            return AlertRules(self.settings)

        return made_once(self, "_rules", self._made, make)

    # ------------------------------------------------------------ tasks

    def task_queued(self, task_id: int, fn: str, n_items: int, t: float) -> None:
        self._add((QUEUED, t, task_id, fn, n_items))

    def task_sent(self, task_id: int, agent_id: int, t: float) -> None:
        self._add((SENT, t, task_id, agent_id))

    def task_ran(self, task_id: int, agent_id: int, fields: Sequence[Any], t: float) -> None:
        """The agent's STATS frame: ``[run_s, cpu_s, started_at]`` (older agents: ``[run_s]``)."""
        run_s = float(fields[0])
        cpu_s = float(fields[1]) if len(fields) > 1 else None
        started = float(fields[2]) if len(fields) > 2 else t - run_s
        self._add((RAN, t, task_id, agent_id, started, run_s, cpu_s))

    def task_finished(self, task_id: int, outcome: str, error_type: str | None, t: float) -> None:
        self._add((FINISHED, t, task_id, outcome, error_type))

    def task_retried(self, task_id: int, reason: str, t: float) -> None:
        self._add((RETRIED, t, task_id, reason))

    # ------------------------------------------------------------ agents

    def agent_started(self, agent_id: int, pid: int, t: float) -> None:
        self._add((AGENT_STARTED, t, agent_id, pid))

    def agent_ready(self, agent_id: int, t: float) -> None:
        self._add((AGENT_READY, t, agent_id))

    def agent_exited(self, agent_id: int, reason: str, t: float) -> None:
        """``reason``: ``stopped`` when asked to stop; otherwise why it died."""
        self._add((AGENT_EXITED, t, agent_id, reason))

    def memory_sample(self, agent_id: int, private_bytes: int, t: float) -> None:
        self._add((MEMORY, t, agent_id, private_bytes))

    # ------------------------------------------------------------ run

    def mode_changed(self, mode: str, reason: str, t: float) -> None:
        """The monitor's mode (normal / warning / critical, or its own names)."""
        self._add((MODE, t, mode, reason))

    def inline_batch(self, fn: str, n_items: int, started_at: float, t: float) -> None:
        """Items of ``fn`` run in the caller's process instead of the pool."""
        self._add((INLINE, t, fn, n_items, started_at))

    def cache_lookup(
        self,
        fn: str,
        fingerprint: str | None,
        namespace: str,
        keys: Iterable[bytes | None],
        hits: int,
        t: float,
    ) -> None:
        """One batch lookup of results of ``fn``; ``keys`` are looked-up keys (None: uncacheable).

        The keys kept are the ``KEY_SAMPLE`` smallest (a bottom-k sketch): two
        runs over the same keys, in any order, keep the same ones, so a later
        run can tell keys that repeat from keys that never do.
        """
        listed = list(keys)
        sample = heapq.nsmallest(KEY_SAMPLE, (k[:8] for k in listed if k is not None))
        self._add((CACHE, t, fn, fingerprint, namespace, len(listed), hits, sample))

    def alert(self, alert: Alert) -> None:
        """An alert raised elsewhere (the monitor): recorded, logged and passed on like ours."""
        self._deliver([self.rules.record(alert)])

    # ------------------------------------------------------------ timer

    def drain(self) -> None:
        """Fold what was reported since the last drain (owner thread, or after it ended)."""
        events = self._events
        n = len(events)
        if n:
            batch = events[:n]
            del events[:n]
            self.fold.absorb(batch)

    def tick(self, now: float, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Fold, check alerts, publish the live view. Never raises: metrics must not stop a run."""
        self.next_tick = now + TICK_S
        try:
            self.drain()
            pool = snapshot()
            self._deliver(self.rules.check(self.fold, pool, now))
            live = self.fold.live_view(pool, now)
            live["alerts"] = self.rules.recent()
            self.live = live
            if self._publish is not None:
                self._publish(self, live)
        except Exception:
            log.exception("recording metrics failed; the run goes on")

    def close(self, now: float) -> None:
        """The Guild has shut down: fold the last events and check alerts one last time."""
        if self.closed:
            return
        self.closed = True
        try:
            self.drain()
            self.fold.closed = now
            self._deliver(self.rules.check(self.fold, {}, now))
        except Exception:
            log.exception("recording metrics failed at shutdown")

    def _deliver(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if self.settings.log_alerts:
                alert_log.warning("%s", alert.message)
            if self.on_alert is not None:
                try:
                    self.on_alert(alert)
                except Exception:
                    log.exception("the on_alert callback failed on %s", alert.kind)


def error_name(future: Any) -> str | None:
    """The type name of a failed future's exception (None if it has none)."""
    try:
        exc = future.exception(timeout=0)
    except BaseException:  # cancelled, or not done
        return None
    return None if exc is None else type(exc).__name__


def exit_reason(expected: bool, died_starting: bool, why: tuple[str, Any] | None, exitcode: int | None) -> str:
    """Why an agent's process ended, in words: ``stopped``, ``memory limit``, ``signal SIGKILL (-9)``."""
    if expected:
        return "stopped"
    if why is not None:
        text = _WHY.get(why[0], why[0])
    else:
        from guildcore.errors import describe_exitcode

        text = describe_exitcode(exitcode)
    return f"died before ready: {text}" if died_starting else text


_WHY = {
    "memory": "memory limit (killed)",
    "memory-reported": "memory limit (MemoryError under the hard cap)",
    "timeout": "task timeout (killed)",
    "malformed": "malformed frame (killed)",
    "initializer": "initializer failed",
}


__all__ = ["TICK_S", "RecorderSettings", "RunRecorder", "error_name", "exit_reason"]
