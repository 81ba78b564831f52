"""The memory monitor in a running Guild: real agents, real allocations, real caches.

The first test drives a pool through ``warning`` and ``critical`` and back
to ``normal`` with memory really held (by the supervisor's result cache and
by two agents) under a small ``limits.total_system``, and checks that every
task of the batch completes with the right result. The others replace the
probe (the monitor's one seam) with readings the test sets, to show each
lever reaching the agents and each setting acting. Tests wait on alerts
(``on_alert``) and on ``g.stats()`` with deadlines, never on a sleep.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faults
import monitorwork
import pytest

from guildcore import Alert, Guild
from guildcore.monitor import Readings

pytestmark = pytest.mark.timeout(120)

MB = 10**6
DEADLINE_S = 60.0


class Modes:
    """``on_alert`` for mode alerts: an event per mode reached, and the order they came in."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.alerts: list[Alert] = []
        self._changed = threading.Condition()
        self._next = 0  # changes before this one are consumed by earlier waits

    def __call__(self, alert: Alert) -> None:
        if alert.kind != "mode":
            return
        mode = alert.message.split(" -> ")[1].split(":")[0]
        with self._changed:
            self.alerts.append(alert)
            self.seen.append(mode)
            self._changed.notify_all()

    def reached(self, mode: str, timeout_s: float) -> bool:
        """Whether the pool changed to ``mode`` since the last wait, waiting at most ``timeout_s``."""

        def found() -> bool:
            if mode in self.seen[self._next :]:
                self._next = self.seen.index(mode, self._next) + 1
                return True
            return False

        with self._changed:
            return self._changed.wait_for(found, timeout_s)

    def wait(self, mode: str) -> None:
        if not self.reached(mode, DEADLINE_S):
            raise AssertionError(f"the pool never reached {mode} mode; modes seen: {self.seen}")


def wait_for(cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    tick = threading.Event()  # never set: a bounded pause between checks
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached before the deadline")
        tick.wait(0.02)


@pytest.mark.slow
@pytest.mark.timeout(240)  # deadlines of 60 s per step: a loaded 2-CPU host is slow, never stuck
def test_real_memory_drives_warning_then_critical_then_back_to_normal_and_every_task_completes(
    tmp_path: Path,
) -> None:
    """Cache results in the supervisor (warning), hold 2 x 130 MB in agents (critical), let go (normal).

    total_system is 250 MB with thresholds at 60 % and 90 %. Cached results
    of 5 MB each are added 25 MB at a time until the pool passes 150 MB:
    steps of a tenth of total_system, so it reaches ``warning`` and not
    ``critical`` (225 MB) however much the supervisor's own memory varies;
    ``warning`` cuts the cache to half. Two agents then each hold 130 MB:
    past 225 MB whatever the rest holds, ``critical`` empties the cache, turns
    cache writes off and leaves one agent taking new work; tasks submitted
    meanwhile wait or move, none fails. Once the agents let go the pool is
    under 50 % for the hold time and goes back to ``normal``. The host's own
    memory counts too: it must stay under half used (24 GB here) for the
    last step. Every wait is on an event (alerts, FIFOs, futures) with a deadline.
    """
    modes = Modes()
    fifos = [(faults.make_fifo(str(tmp_path / f"started{i}")), faults.make_fifo(str(tmp_path / f"release{i}"))) for i in (1, 2)]
    with Guild(
        max_agents=2, min_agents=2, per_agent="250MB", timeout=None, on_alert=modes,
        limits={"total_system": "250MB", "cache_size": "2GB"},
        monitoring={"check_interval": "50ms", "warning_threshold": 0.6, "critical_threshold": 0.9},
        caching={"path": str(tmp_path / "cache"), "memory_cache": "1GB"},
    ) as g:  # fmt: skip
        assert g.stats()["mode"] == "normal"
        for step in range(40):
            batch = [(step * 5 + i, 5) for i in range(5)]
            assert [len(r) for r in g.starmap(monitorwork.big_result, batch, cache=True)] == [5 * MB] * 5
            if modes.reached("warning", 1.0):  # a few readings' time for the next to see this step
                break
        else:
            raise AssertionError(f"200 MB of cached results never made warning; modes seen: {modes.seen}")
        assert "critical" not in modes.seen

        holders = [g.submit(monitorwork.hold_until, 130, started, release) for started, release in fifos]
        pids = {faults.wait_started(started, DEADLINE_S) for started, _ in fifos}
        assert len(pids) == 2  # one block in each agent
        modes.wait("critical")
        snap = g.stats()
        assert snap["mode"] == "critical"
        assert snap["monitor"]["caching"]["writes"] is False and snap["monitor"]["working_agents"] == 1
        assert g._cache is not None and g._cache.memory_bytes() == 0  # the supervisor's cache, emptied
        later = [g.submit(monitorwork.pid_inc, i) for i in range(10)]  # wait behind the held blocks

        for _, release in fifos:
            faults.release(release)
        assert [h.result(timeout=DEADLINE_S) for h in holders] == [130, 130]
        modes.wait("normal")
        assert [f.result(timeout=DEADLINE_S)[1] for f in later] == list(range(1, 11))
        assert g.map(faults.inc, range(50), chunksize=5) == list(range(1, 51))
        snap = g.stats()
        assert snap["mode"] == "normal" and snap["monitor"]["caching"]["writes"] is True
        assert snap["counters"]["failed"] == 0 and snap["counters"]["agents_died"] == 0
        timeline = snap["monitor"]["timeline"]
        assert [e["to"] for e in timeline] == modes.seen  # each change, alerted once
        [critical] = [e for e in timeline if e["to"] == "critical"]
        r = critical["readings"]  # the readings that caused it: past 90 % of 250 MB, the held blocks among them
        assert r["supervisor_bytes"] + r["agent_bytes"] >= 225 * MB and r["agent_bytes"] >= 100 * MB
    # (The cache, cut at warning, may let the pool step back to normal before the agents hold theirs.)
    assert modes.seen[0] == "warning" and "critical" in modes.seen and modes.seen[-1] == "normal"


# ---------------------------------------------------------------- with the probe replaced


class SetProbe:
    """A probe whose readings the test sets: ``used`` of total_system (supervisor and agents)."""

    def __init__(self, total_bytes: int, *, load_avg: float = 0.0, cpus: int = 2) -> None:
        self.total = total_bytes
        self.used = 0.1
        self.load_avg = load_avg
        self.cpus = cpus
        self.reads = 0

    def read(self, agent_pids: Any, now: float, *, baselines: Any = None) -> Readings:
        self.reads += 1
        used = int(self.used * self.total)
        return Readings(
            supervisor_bytes=used // 2, agent_bytes=used - used // 2, agents=len(list(agent_pids)),
            cache_bytes=0, host_total_bytes=64_000 * MB, host_available_bytes=60_000 * MB,
            cpus=self.cpus, load_avg=self.load_avg,
        )  # fmt: skip


def probed(probe: SetProbe, **kw: Any) -> Guild:
    g = Guild(**kw)
    assert g._monitor_io is not None
    g._monitor_io.probe = probe  # type: ignore[assignment]
    return g


def test_critical_reaches_the_agents_caches_and_normal_gives_them_back(tmp_path: Path) -> None:
    """TRIM empties an idle agent's ``@cached`` tiers; CACHING turns its writes off, then on again."""
    modes = Modes()
    probe = SetProbe(512 * MB)
    with probed(
        probe, max_agents=1, min_agents=1, on_alert=modes,
        monitoring={"check_interval": "20ms"}, caching={"path": str(tmp_path / "cache")},
    ) as g:  # fmt: skip
        assert g.submit(monitorwork.fill_default_cache, 50, 10).result(timeout=DEADLINE_S) == 50
        probe.used = 0.97
        modes.wait("critical")
        state = g.submit(monitorwork.default_cache_state).result(timeout=DEADLINE_S)
        assert state["writes"] is False and state["l2_entries"] == 0
        assert g.submit(monitorwork.fill_default_cache, 5, 10).result(timeout=DEADLINE_S) == 0  # nothing kept
        probe.used = 0.1
        modes.wait("normal")
        assert g.submit(monitorwork.default_cache_state).result(timeout=DEADLINE_S)["writes"] is True
        assert g.submit(monitorwork.fill_default_cache, 5, 10).result(timeout=DEADLINE_S) == 5


def test_monitoring_disabled_reads_nothing_and_reports_no_mode() -> None:
    with Guild(max_agents=1, monitoring={"enabled": False}) as g:
        assert g._monitor_io is None
        assert g.submit(faults.inc, 1).result(timeout=DEADLINE_S) == 2
        assert g.stats()["mode"] is None and g.stats()["monitor"] is None
    probe = SetProbe(512 * MB)
    with probed(probe, max_agents=1, monitoring={"enabled": True, "check_interval": "20ms"}) as g:
        assert g.submit(faults.inc, 1).result(timeout=DEADLINE_S) == 2
        wait_for(lambda: probe.reads >= 2, "two readings")
        assert g.stats()["mode"] == "normal"


def test_check_interval_spaces_the_readings() -> None:
    """A reading when the pool starts, then one per check_interval: 20 ms reads, 1 h does not again."""
    fast, slow = SetProbe(512 * MB), SetProbe(512 * MB)
    with probed(fast, max_agents=1, monitoring={"check_interval": "20ms"}) as g:
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        wait_for(lambda: fast.reads >= 5, "five readings at 20 ms")
    with probed(slow, max_agents=1, monitoring={"check_interval": "1h"}) as g:
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        wait_for(lambda: slow.reads >= 1, "the first reading")
        assert g.map(faults.inc, range(200), chunksize=10) == list(range(1, 201))
        assert slow.reads == 1


@pytest.mark.parametrize(("total", "mode"), [("4GB", "normal"), ("1GB", "warning"), ("570MB", "critical")])
def test_total_system_decides_the_mode_of_the_same_memory(total: str, mode: str) -> None:
    """The same 550 MB in use is normal under 4 GB, warning under 1 GB (55 %), critical under 570 MB."""
    modes = Modes()
    probe = SetProbe(10**9)  # readings in bytes: used * 1 GB
    probe.used = 0.55
    with probed(probe, max_agents=1, on_alert=modes, limits={"total_system": total},
                monitoring={"check_interval": "20ms", "warning_threshold": 0.5}) as g:  # fmt: skip
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        wait_for(lambda: probe.reads >= 2, "two readings")
        if mode != "normal":
            modes.wait(mode)
        assert g.stats()["mode"] == mode


@pytest.mark.parametrize(("warning", "critical", "mode"), [(0.6, 0.9, "normal"), (0.5, 0.9, "warning"), (0.3, 0.5, "critical")])
def test_thresholds_decide_where_the_modes_begin(warning: float, critical: float, mode: str) -> None:
    modes = Modes()
    probe = SetProbe(512 * MB)
    probe.used = 0.55
    with probed(probe, max_agents=1, on_alert=modes, limits={"total_system": "512MB"},
                monitoring={"check_interval": "20ms", "warning_threshold": warning,
                            "critical_threshold": critical}) as g:  # fmt: skip
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        wait_for(lambda: probe.reads >= 2, "two readings")
        if mode != "normal":
            modes.wait(mode)
        assert g.stats()["mode"] == mode


def test_alerts_off_logs_each_change_at_info_and_calls_no_one(caplog: pytest.LogCaptureFixture) -> None:
    modes = Modes()
    probe = SetProbe(512 * MB)
    probe.used = 0.9
    caplog.set_level(logging.INFO, logger="guildcore")
    with probed(probe, max_agents=1, on_alert=modes, monitoring={"check_interval": "20ms", "alerts": False}) as g:
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        wait_for(lambda: g.stats()["mode"] == "warning", "warning mode")
    assert modes.seen == []
    records = [r for r in caplog.records if r.name == "guildcore.monitor" and "normal -> warning" in r.getMessage()]
    assert records and all(r.levelno == logging.INFO for r in records)
    assert not [r for r in caplog.records if r.name == "guildcore.alerts"]


def test_alerts_on_log_a_warning_and_call_on_alert(caplog: pytest.LogCaptureFixture) -> None:
    modes = Modes()
    probe = SetProbe(512 * MB)
    probe.used = 0.9
    with probed(probe, max_agents=1, on_alert=modes, monitoring={"check_interval": "20ms"}) as g:
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        modes.wait("warning")
    [alert] = modes.alerts
    assert alert.kind == "mode" and alert.value == pytest.approx(0.9, abs=0.01) and alert.threshold == 0.8
    assert "raise limits.total_system" in alert.message
    assert [r.levelno for r in caplog.records if r.name == "guildcore.alerts" and "normal -> warning" in r.getMessage()] == [logging.WARNING]


def test_mode_alerts_reach_on_alert_with_metrics_off() -> None:
    modes = Modes()
    probe = SetProbe(512 * MB)
    probe.used = 0.97
    with probed(probe, max_agents=1, on_alert=modes,
                monitoring={"check_interval": "20ms", "metrics": False}) as g:  # fmt: skip
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        modes.wait("critical")
        assert g.stats()["mode"] == "critical"


def test_modes_reach_the_metrics_record() -> None:
    modes = Modes()
    probe = SetProbe(512 * MB)
    probe.used = 0.9
    with probed(probe, max_agents=1, on_alert=modes, monitoring={"check_interval": "20ms"}) as g:
        g.submit(faults.inc, 1).result(timeout=DEADLINE_S)
        modes.wait("warning")
        record = g.metrics()
    assert record is not None
    [guild] = record["guilds"]
    assert [m[1] for m in guild["modes"]] == ["warning"]
    assert any(a["kind"] == "mode" for a in guild["alerts"])


def test_cache_size_sets_the_scale_of_the_supervisors_cache(tmp_path: Path) -> None:
    """40 MB cached is little under a 1 GB cache_size, and under a 40 MB one the monitor cuts the cache."""
    for size, mode in (("1GB", "normal"), ("40MB", "critical")):
        modes = Modes()
        with Guild(max_agents=1, on_alert=modes, limits={"cache_size": size, "total_system": "8GB"},
                   monitoring={"check_interval": "20ms"}, optimization={"compression": False},
                   caching={"path": str(tmp_path / size), "memory_cache": "512MB"}) as g:  # fmt: skip
            assert len(g.starmap(monitorwork.big_result, [(i, 2) for i in range(20)], cache=True)) == 20
            if mode == "critical":
                # Cut at warning (to half) or critical (emptied), as the readings met the writes,
                # and again while the cache stays over warning_threshold of cache_size.
                wait_for(lambda: bool(g.stats()["monitor"]["timeline"]), "a mode change")
                assert g.stats()["monitor"]["timeline"][0]["to"] in ("warning", "critical")
                wait_for(lambda: g._cache is not None and g._cache.memory_bytes() < 0.8 * 40 * MB, "the cache cut")
            else:
                wait_for(lambda: g._cache is not None and g._cache.memory_bytes() >= 40 * MB, "every result cached")
                snap = g.stats()
                assert snap["mode"] == "normal" and snap["monitor"]["timeline"] == []


def test_a_per_agent_above_total_system_warns_that_the_pool_will_hold_one_agent(tmp_path: Path) -> None:
    """The monitor starts an agent only while a whole per_agent fits: say so where the Guild is made."""
    caching = {"path": str(tmp_path / "cache")}
    with pytest.warns(RuntimeWarning, match=r"limits.per_agent \(1.0 GB\) is more than limits.total_system .* 1 agent, not up to 2") as seen:
        Guild(max_agents=2, per_agent="1GB", caching=caching).shutdown()
    assert seen[0].filename == __file__  # points at the caller's Guild(...) line
    for quiet in ({"max_agents": 1, "per_agent": "1GB"}, {"max_agents": 2, "limits": {"per_agent": "1GB", "total_system": "2GB"}}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Guild(caching=caching, **quiet).shutdown()
