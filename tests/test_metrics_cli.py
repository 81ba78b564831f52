"""``guild stats``, ``guild report``, ``guild doctor`` and ``guild top --once`` over recorded runs.

The doctor's own test records three real runs made to be slow (tiny tasks
one by one), memory-hungry (an agent that keeps 4 MB per task) and
cache-poor (cached calls whose keys change every run), and checks that the
first finding of each names its cause.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guildcore import Guild
from guildcore.cli import main
from guildcore.metrics.doctor import diagnose
from guildcore.metrics.history import History
from guildcore.metrics.summary import build_record
from tests import faults, metricswork

MB = 10**6


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty project (.guild/) as the working folder; live status under tmp_path/run."""
    (tmp_path / ".guild").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GUILD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GUILD_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path


def _last_id(project: Path) -> str:
    return str(History(str(project / ".guild" / "metrics")).runs(1)[0]["id"])


def _doctor(capsys: pytest.CaptureFixture[str], run_id: str) -> list[dict[str, Any]]:
    assert main(["doctor", run_id, "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["run"] == run_id
    findings: list[dict[str, Any]] = entry["findings"]
    return findings


def test_doctor_names_the_cause_of_a_slow_a_memory_hungry_and_a_cache_poor_run(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # slow: 300 tiny calls sent one by one
    with Guild(max_agents=2, timeout=None) as g:
        assert [f.result() for f in [g.submit(faults.inc, i) for i in range(300)]] == list(range(1, 301))
    slow = _last_id(project)
    # memory-hungry: one agent keeps 4 MB more after every task
    with Guild(max_agents=1, timeout=None, per_agent="400MB", limits={"sample_interval": "10ms"}) as g:
        assert g.starmap(metricswork.leak, [(4 * MB, 0.05)] * 25, chunksize=1)[-1] == 25
    hungry = _last_id(project)
    # cache-poor: the same calls twice, each time with a new timestamp in the arguments
    for _ in range(2):
        with Guild(max_agents=2, timeout=None) as g:
            stamp = time.time_ns()
            assert g.map(metricswork.stamped, [(i, stamp) for i in range(40)], chunksize=1, cache=True) == list(range(40))
    poor = _last_id(project)

    slow_findings = _doctor(capsys, slow)
    assert slow_findings[0]["check"] == "tiny_tasks", slow_findings
    assert "300 tasks ran in agents" in slow_findings[0]["evidence"] and "g.map" in slow_findings[0]["fix"]

    hungry_findings = _doctor(capsys, hungry)
    assert hungry_findings[0]["check"] == "memory_growth", hungry_findings
    assert "per task" in hungry_findings[0]["evidence"] and "pool.max_tasks_per_agent" in hungry_findings[0]["fix"]

    poor_findings = _doctor(capsys, poor)
    assert poor_findings[0]["check"] == "keys_never_repeat", poor_findings
    assert "0 of 40 cache lookups hit" in poor_findings[0]["evidence"] and "deterministic" in poor_findings[0]["fix"]

    assert main(["doctor"]) == 0  # text, the last run
    text = capsys.readouterr().out
    assert f"# run {poor}" in text and "1. [cache] the cache keys of tests.metricswork:stamped never repeat" in text
    assert "evidence:" in text and "fix:" in text


def _record(run_id: str, started: float, uses: list[dict[str, Any]], *, ttl: float = 3600.0) -> dict[str, Any]:
    part = {"guild": 1, "opened": 0.0, "closed": 1.0, "max_agents": 1, "agents": [], "tasks": [],
            "settings": {"caching.namespaces.result.ttl": ttl}, "cache_lookups": uses}  # fmt: skip
    return build_record(run_id=run_id, kind="guild", label="t", started=started, wall_s=1.0, host="h", pid=1,
                        parts=[(part, [], None)])  # fmt: skip


def _use(fp: str, keys: list[str], hits: int) -> dict[str, Any]:
    return {"fn": "m:f", "fingerprint": fp, "namespace": "result", "lookups": 100, "hits": hits, "keys": keys}


def test_doctor_tells_an_expired_ttl_from_a_code_change() -> None:
    keys = [f"{i:016x}" for i in range(50)]
    first = _record("a", 1000.0, [_use("m:f@aaaa", keys, 0)], ttl=600.0)
    later = _record("b", 1000.0 + 7200, [_use("m:f@aaaa", keys, 0)], ttl=600.0)
    (ttl,) = [f for f in diagnose(later, [first]) if f.symptom == "cache"]
    assert ttl.check == "ttl_expired" and "2.0 h earlier" in ttl.evidence and "live 10 min" in ttl.evidence
    assert "caching.namespaces.result.ttl" in ttl.fix and "4.0 h" in ttl.fix
    edited = _record("c", 1000.0 + 60, [_use("m:f@bbbb", [f"{i:016x}" for i in range(100, 150)], 0)])
    (code,) = [f for f in diagnose(edited, [first]) if f.symptom == "cache"]
    assert code.check == "code_changed" and "aaaa" in code.evidence and "bbbb" in code.evidence
    assert [f.check for f in diagnose(first)] == ["cold_cache"]


def test_stats_as_text_json_and_prometheus(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats"]) == 1
    assert "no run is recorded" in capsys.readouterr().out
    for _ in range(2):
        with Guild(max_agents=1) as g:
            g.map(faults.inc, range(50), chunksize=10)
    assert main(["stats", "-n", "5"]) == 0
    out = capsys.readouterr().out
    assert "# 2 runs in" in out and "average over these 2 runs: execution" in out and "peak private memory" in out
    assert "cache hit rate no cached calls; error rate 0.0%" in out
    assert main(["stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["runs"]) == 2 and data["averages"]["runs"] == 2 and data["runs"][0]["tasks"]["done"] == 5
    assert main(["stats", "--prometheus", "-n", "1"]) == 0
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(capsys.readouterr().out)}
    assert families["guild_runs_recorded"].samples[0].value == 1
    (sample,) = families["guild_run_wall_seconds"].samples
    assert sample.labels["run"] == data["runs"][0]["id"] and sample.value > 0
    done = [s for s in families["guild_run_tasks"].samples if s.labels["outcome"] == "done"]
    assert done[0].value == 5


def test_report_writes_one_self_contained_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 1
    assert "no run is recorded" in capsys.readouterr().err
    with Guild(max_agents=2) as g:
        g.map(metricswork.spin, [0.01] * 6, chunksize=1)
    out = project / "r.html"
    assert main(["report", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    for chart in ("tasks", "memory", "queue", "throughput", "cache", "functions"):
        assert f'id="chart-{chart}"' in text
    script_free = text.split("<script>", 1)[0] + text.rsplit("</script>", 2)[-1]
    assert "http://" not in script_free.replace("http://www.w3.org", "") and "https://" not in script_free
    assert "<script src" not in text and "tests.metricswork:spin" in text
    assert main(["report", "nosuchrun", "-o", str(out)]) == 1
    assert "no run 'nosuchrun'" in capsys.readouterr().err


def test_top_once_shows_a_running_guild_and_says_when_none_runs(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # rich's width when stdout is not a terminal
    assert main(["top", "--once"]) == 0
    assert "no guild is running on this host" in capsys.readouterr().out
    started = faults.make_fifo(str(project / "started"))
    release = faults.make_fifo(str(project / "release"))
    from guildcore.metrics import live as live_files

    with Guild(max_agents=1, timeout=None) as g:
        fut = g.submit(faults.block, started, release)
        faults.wait_started(started)
        deadline = time.monotonic() + 20
        while not live_files.list_running(str(project / "run")) and time.monotonic() < deadline:
            time.sleep(0.02)  # the supervisor publishes every 0.5 s
        assert main(["top", "--once"]) == 0
        frame = capsys.readouterr().out
        faults.release(release)
        fut.result(timeout=30)
    assert str(os.getpid()) in frame and "agent 1" in frame and "BUSY" in frame and "tests.faults:block" in frame
