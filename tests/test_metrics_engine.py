"""Metrics recorded by a real Guild: stats, the full record, restarts, alerts, live status, history, the switch."""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guildcore import Guild
from guildcore.metrics import Alert, recorded_run
from guildcore.metrics import live as live_files
from guildcore.metrics.history import History
from guildcore.metrics.run import store_path
from tests import faults, metricswork


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """History under tmp_path/metrics, live status under tmp_path/run."""
    monkeypatch.setenv("GUILD_CACHING__PATH", str(tmp_path / "cache"))
    monkeypatch.setenv("GUILD_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path


def _wait_for(predicate: Any, what: str, timeout_s: float = 20.0) -> Any:
    """Poll an outside condition (a file) until it holds, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def test_stats_and_the_full_record_of_a_run(isolated: Path) -> None:
    with Guild(max_agents=2, timeout=None) as g:
        assert g.map(metricswork.spin, [0.02] * 8, chunksize=1) == [0.02] * 8
        assert g.submit(metricswork.spin, 0.02).result() == 0.02
        live = g.stats()["metrics"]
        assert live["tasks"]["done"] == 9 and live["run_id"]
    stats = g.stats()["metrics"]
    record = g.metrics()
    assert record is not None and record["finished"] and record["id"] == stats["run_id"]
    assert stats["tasks"] == {"submitted": 9, "done": 9, "failed": 0, "cancelled": 0, "retried": 0, "inline_batches": 0}
    assert stats["items"] == {"submitted": 9, "done": 9} and stats["tasks_per_min"] > 0
    assert 1 <= stats["agents_used"] <= 2 and 0 < stats["parallel_efficiency"] <= 1
    # An agent forked from the template measures its growth above what it inherited:
    # for tasks that allocate next to nothing, that may be 0.
    assert stats["error_rate"] == 0.0 and (stats["peak_private_bytes"] is None or stats["peak_private_bytes"] >= 0)
    tasks = [dict(zip(("id", "fn", "agent", "n_items", "queued", "started", "run_s", "finished", "outcome", "error",
                       "cpu_s", "sends", "retries", "peak_private", "measured"), r, strict=True))
             for r in record["guilds"][0]["tasks"]]  # fmt: skip
    assert len(tasks) == 9 and {t["fn"] for t in tasks} == {"tests.metricswork:spin"}
    for t in tasks:  # spin(0.02) in the agent: run and CPU time near 20 ms, measured there (calls too)
        assert t["measured"] and 0.02 <= t["run_s"] < 5.0 and 0 < t["cpu_s"] <= t["run_s"] + 0.01
        assert t["queued"] <= t["started"] <= t["finished"] and t["outcome"] == "done"
    agents = {a["key"]: a for a in record["guilds"][0]["agents"]}
    assert all(a["reason"] == "stopped" for a in agents.values())
    assert sum(a["tasks"] for a in agents.values()) == 9
    assert all(0 < (a["busy_fraction"] or 0) <= 1 for a in agents.values() if a["tasks"])
    assert set(stats["agents"]) == set(agents)
    saved = History(store_path(str(isolated / "cache")))
    (summary,) = saved.runs()
    assert summary["id"] == record["id"] and saved.load(record["id"])["summary"]["tasks"]["done"] == 9


def test_an_agent_killed_mid_task_is_a_restart_with_its_reason_and_an_alert(isolated: Path) -> None:
    alerts: list[Alert] = []
    started = faults.make_fifo(str(isolated / "started"))
    with Guild(max_agents=1, timeout=None, on_alert=alerts.append) as g:
        fut = g.submit(faults.hang, started, retries=1)
        pid = faults.wait_started(started)
        os.kill(pid, signal.SIGKILL)
        second = faults.wait_started(started)  # the retry, on a new agent
        os.kill(second, signal.SIGKILL)
        with pytest.raises(Exception, match="SIGKILL"):
            fut.result(timeout=30)
    record = g.metrics()
    assert record is not None
    s = record["summary"]
    assert s["restarts"] == {"signal SIGKILL (-9)": 2}
    assert s["tasks"]["retried"] == 1 and s["tasks"]["failed"] == 1 and s["errors"] == {"AgentDied": 1}
    assert [a.kind for a in alerts] == ["agent_failed"] and "SIGKILL" in alerts[0].message
    assert record["guilds"][0]["alerts"][0]["count"] == 2  # one episode, two deaths


def test_the_live_status_file_is_private_and_goes_with_the_guild(isolated: Path) -> None:
    started = faults.make_fifo(str(isolated / "started"))
    release = faults.make_fifo(str(isolated / "release"))
    folder = str(isolated / "run")
    with Guild(max_agents=1, timeout=None) as g:
        fut = g.submit(faults.block, started, release)
        faults.wait_started(started)
        snap = _wait_for(lambda: next(iter(live_files.list_running(folder)), None), "a status file")
        assert snap["pid"] == os.getpid() and snap["run_id"] == g.stats()["metrics"]["run_id"]
        assert snap["agents"][0]["state"] == "BUSY" and snap["agents"][0]["task"]["fn"] == "tests.faults:block"
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(snap["path"]).st_mode) == 0o600
        faults.release(release)
        assert fut.result(timeout=30) == "released"
    assert live_files.list_running(folder) == [] and os.listdir(folder) == []


def test_a_stale_status_file_of_a_dead_supervisor_is_swept(isolated: Path) -> None:
    folder = isolated / "run"
    folder.mkdir(mode=0o700)
    stale = folder / "999999-x-1.json"
    stale.write_text('{"pid": 999999, "pid_start": 1, "run_id": "x"}')
    assert live_files.list_running(str(folder)) == [] and not stale.exists()


def test_metrics_off_records_nothing(isolated: Path) -> None:
    with Guild(max_agents=1, monitoring={"metrics": False}) as g:
        assert g.map(faults.inc, range(10), chunksize=2) == list(range(1, 11))
        assert g._supervisor.recorder is None and g.stats()["metrics"] is None
    assert g.metrics() is None and g.stats()["metrics"] is None
    assert not os.path.exists(store_path(str(isolated / "cache"))) and not os.path.exists(isolated / "run")


def test_inline_batches_and_cache_lookups_are_recorded(isolated: Path) -> None:
    gate = str(isolated / "gate")  # agents wait at their initializer until it exists
    with Guild(max_agents=2, initializer=faults.wait_for_path, initargs=(gate,)) as g:
        g.map(faults.inc, range(2000))  # no agent is ready: it runs here, inline
        g.map(faults.inc, range(2000))  # still none: inline again
        open(gate, "w").close()
        g.map(faults.inc, range(300), cache=True)
        g.map(faults.inc, range(300), cache=True)
    s = g.stats()["metrics"]
    assert s["tasks"]["inline_batches"] >= 1 and s["inline_s"] > 0
    assert s["items"]["done"] == 4300  # computed items: the 300 cache hits ran nothing
    assert s["cache"]["lookups"] == 600 and s["cache"]["hits"] == 300 and s["cache"]["hit_rate"] == 0.5
    assert sum(s["cache"]["tier_hits"].values()) >= 300  # the result cache's own statistics, per tier
    # Tiny chunks never count as slow tasks, and a cold batch then a warm one
    # is a cache doing its job: no alert at all.
    assert s["alerts"] == {}


def test_a_recorded_run_is_one_history_entry_for_several_guilds(isolated: Path) -> None:
    with recorded_run("two passes", kind="demo") as run:
        for _ in range(2):
            with Guild(max_agents=1) as g:
                g.map(faults.inc, range(20), chunksize=5)
        assert run.record is None  # saved when the scope ends, not when a Guild closes
    history = History(store_path(str(isolated / "cache")))
    (summary,) = history.runs()
    record = history.load(summary["id"])
    assert record is not None and (record["kind"], record["label"]) == ("demo", "two passes")
    assert [g["guild"] for g in record["guilds"]] == [1, 2]
    assert record["summary"]["tasks"]["done"] == 8
    assert {a["key"] for g in record["guilds"] for a in g["agents"]} == {"1", "2.1"}


def test_process_steps_join_the_record(isolated: Path) -> None:
    with recorded_run("etl", kind="process", store=str(isolated / "store")) as run:
        t = time.monotonic()
        run.add_steps([{"name": "extract", "start": t, "end": t + 0.5, "status": "done"},
                       {"name": "load", "start": t + 0.5, "end": t + 0.6, "cached": True}])  # fmt: skip
    record = History(str(isolated / "store")).load(History(str(isolated / "store")).runs()[0]["id"])
    assert record is not None and [s["name"] for s in record["steps"]] == ["extract", "load"]
    assert record["steps"][1]["end"] - record["steps"][1]["start"] == pytest.approx(0.1)
    assert record["summary"]["steps"] == 2


def test_history_is_capped_by_count_and_bytes(tmp_path: Path) -> None:
    history = History(str(tmp_path / "h"), max_runs=3, max_bytes=10**9)
    for i in range(5):
        history.save({"id": f"2024010{i}-000000-0000", "summary": {"n": i}})
    assert [s["id"][7] for s in history.runs()] == ["4", "3", "2"]
    assert history.load("20240100-000000-0000") is None
    small = History(str(tmp_path / "s"), max_runs=100, max_bytes=30_000)
    for i in range(5):
        small.save({"id": f"2024010{i}-000000-000{i}", "blob": os.urandom(12_000).hex()[:12_000]})
    kept = [s["id"] for s in small.runs()]
    assert 1 <= len(kept) <= 2 and kept[0].startswith("20240104")
    assert sum(s["bytes"] for s in small.runs()) <= 30_000 or len(kept) == 1
    assert small.resolve("-1") == kept[0] and small.resolve(kept[0][-4:]) == kept[0]


def test_saving_a_run_reads_only_the_runs_it_drops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every Guild's shutdown saves a run: at the cap, one save drops one run
    # and must not read every summary of the history to do so.
    from guildcore.metrics import history as history_module

    history = History(str(tmp_path / "h"), max_runs=40, max_bytes=10**9)
    for i in range(41):
        history.save({"id": f"20240101-0000{i:02d}-0000", "summary": {"n": i}})
    read: list[bytes] = []
    stored_bytes = history_module._stored_bytes
    monkeypatch.setattr(history_module, "_stored_bytes", lambda summary: read.append(summary) or stored_bytes(summary))
    history.save({"id": "20240101-000099-0000", "summary": {"n": 99}})
    assert len(read) == 1
    assert len(history.runs()) == 40 and history.runs()[-1]["id"] == "20240101-000002-0000"
