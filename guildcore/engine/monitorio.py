"""The memory monitor's I/O, on the supervisor's owner loop.

This module covers ``MonitorIO``: what the loop does for the monitor's
actions (see ``monitorrules``): reading the probe (``ReadMonitor``, answered
with ``MonitorRead``), cutting the supervisor's in-process caches
(``ShrinkCaches``), turning their writes off or their budget down
(``SetCaching``), collecting garbage and trimming the heap
(``ReleaseMemory``), and telling people of a mode change (``ModeChanged``):
an alert (``guildcore.Alert``, kind ``"mode"``) through the metrics recorder
(which logs it on ``guildcore.alerts`` and passes it to ``on_alert``), or,
with ``monitoring.metrics`` off, logged and passed on here; with
``monitoring.alerts`` off, an INFO record on ``guildcore.monitor`` instead.

It does not cover when any of this happens (``monitorrules``) nor what a
reading means (``guildcore.monitor``). Everything here runs on the owner
thread, once per ``monitoring.check_interval`` at most: never per task.
The probe is made (and ``guildcore.monitor`` imported) at the first
reading, not with the Guild: a script's first result comes before it.

The supervisor's caches are the Guild's own store (results, routing) and
the process's default cache of ``@cached``, each only once made.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from guildcore.engine.events import (
    ModeChanged,
    MonitorRead,
    ReadMonitor,
    ReleaseMemory,
    SetCaching,
    ShrinkCaches,
)

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from guildcore.cache import TieredCache
    from guildcore.metrics import Alert, RunRecorder
    from guildcore.monitor import Probe

log = logging.getLogger("guildcore.monitor")
alert_log = logging.getLogger("guildcore.alerts")

# What each mode change does, in words, for the alert's message (by the modes' values).
_WHAT = {
    ("normal", "warning"): (
        "the in-process caches are cut to half, idle agents collect their garbage, and idle agents "
        "above pool.min_agents stop"
    ),
    ("normal", "critical"): (
        "the in-process caches are emptied, nothing new is cached, and one agent takes new work "
        "while the others finish the task they run and stop"
    ),
    ("warning", "critical"): (
        "the in-process caches are emptied, nothing new is cached, and one agent takes new work "
        "while the others finish the task they run and stop"
    ),
    ("critical", "warning"): "caching and parallel work resume",
    ("critical", "normal"): "caching and parallel work resume",
    ("warning", "normal"): "memory is back to normal",
}
_ADVICE = (
    "if this load is expected, raise limits.total_system (or limits.cache_size); "
    "otherwise lower what tasks hold, or run fewer agents (pool.max_agents)"
)


class MonitorIO:
    """The loop's side of the monitor: one per supervisor, owner thread only."""

    def __init__(
        self,
        make_probe: Callable[[], Probe],
        caches: Callable[[], list[TieredCache]] = list,
        *,
        recorder: RunRecorder | None = None,
        on_alert: Callable[[Alert], object] | None = None,
    ) -> None:
        self._make_probe = make_probe
        self._probe: Probe | None = None
        self.caches = caches
        self.recorder = recorder
        self.on_alert = on_alert
        self.caching = (True, 1.0)  # (writes, budget) last set, for caches made later (adopt)

    @property
    def probe(self) -> Probe:
        """The probe, made at the first reading (the seam tests replace)."""
        if self._probe is None:
            self._probe = self._make_probe()
        return self._probe

    @probe.setter
    def probe(self, probe: Probe) -> None:
        self._probe = probe

    def read(self, action: ReadMonitor, now: float) -> MonitorRead:
        try:
            return MonitorRead(self.probe.read(list(action.baselines), now, baselines=action.baselines))
        except Exception:  # a probe that fails skips this reading; the loop goes on
            log.exception("reading memory and load failed")
            return MonitorRead(None)

    def shrink(self, action: ShrinkCaches) -> None:
        for cache in self.caches():
            try:
                if action.keep <= 0:
                    cache.evict_memory()
                else:
                    cache.shrink_memory(action.keep)
            except Exception:  # a cache problem must not stop the loop
                log.exception("cutting an in-process cache failed")

    def set_caching(self, action: SetCaching) -> None:
        self.caching = (action.writes, action.budget)
        cached = sys.modules.get("guildcore.cache.cached")
        if cached is not None:  # @cached in this process: its default cache, now and when made
            cached.set_default_caching(writes=action.writes, budget=action.budget)
        for cache in self.caches():
            self.adopt(cache)

    def adopt(self, cache: TieredCache) -> None:
        """Give ``cache`` the caching in force (a cache made while it holds)."""
        writes, budget = self.caching
        try:
            cache.set_caching(writes=writes, budget=budget)
        except Exception:
            log.exception("setting an in-process cache's budget failed")

    def close(self) -> None:
        """Give ``@cached`` in this process its full caching back, if the monitor had cut it.

        Invariant: a closed Guild leaves no lever of its monitor set: the
        default cache is the process's, and agents forked later from this
        process would inherit writes off.
        """
        if self.caching == (True, 1.0):
            return
        self.caching = (True, 1.0)
        cached = sys.modules.get("guildcore.cache.cached")
        if cached is not None:
            cached.set_default_caching(writes=True, budget=1.0)

    def release(self, action: ReleaseMemory) -> None:
        from guildcore.monitor import release_memory

        release_memory()

    def mode_changed(self, action: ModeChanged) -> None:
        t = action.transition
        if not action.alert:
            log.info("memory mode %s -> %s: %s", t.previous.value, t.mode.value, t.reason)
            return
        alert = self._alert(action)
        if self.recorder is not None:
            self.recorder.alert(alert)  # recorded in the run, logged, passed to on_alert
            return
        alert_log.warning("%s", alert.message)
        if self.on_alert is not None:
            try:
                self.on_alert(alert)
            except Exception:
                log.exception("the on_alert callback failed on a mode alert")

    def _alert(self, action: ModeChanged) -> Alert:
        from guildcore.metrics.alerts import Alert

        t = action.transition
        previous, mode = t.previous.value, t.mode.value
        what = _WHAT.get((previous, mode), "")
        up = mode == "critical" or (mode == "warning" and previous == "normal")
        message = f"memory mode {t.previous.value} -> {t.reason}; {what}"
        if up:
            message += f"; {_ADVICE}"
        wall = time.time() - (time.monotonic() - t.at)
        return Alert("mode", message, wall, value=action.pressure, threshold=action.threshold)


def default_io(recorder: RunRecorder | None = None) -> MonitorIO:
    """The I/O of a supervisor made without one: private memory through ``limits``, no caches."""
    from guildcore.engine import limits

    def make_probe() -> Probe:
        from guildcore.monitor import Probe

        return Probe(lambda pid: limits.read_private_bytes(pid))

    return MonitorIO(make_probe, recorder=recorder)
