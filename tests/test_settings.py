"""Every accepted setting acts: a test per setting that changing it changes behaviour.

``EFFECTS`` maps each key of every section (namespace keys as
``caching.namespaces.*.NAME``) to the tests that show its effect;
``test_every_setting_has_a_test_of_its_effect`` walks the config records
and fails for a key that is in neither ``EFFECTS`` nor ``PENDING``, and for a
named test that does not exist. ``PENDING`` lists the keys that are accepted
and stored but act in a part of the engine not built yet, with what will make
them act: it is meant to be empty.
"""

from __future__ import annotations

import ast
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faults
import pytest
import settingswork
import streamwork

from guildcore import AgentDied, Guild, MemoryLimitExceeded, TaskTimeout
from guildcore._records import fields
from guildcore.cache import TieredCache
from guildcore.config import AGENT_MODULES, SECTIONS, NamespacePolicy, load_config
from guildcore.engine import ring
from guildcore.engine.executor import _result_threshold, _settings_from

pytestmark = pytest.mark.timeout(90)

TESTS = Path(__file__).parent

EFFECTS: dict[str, tuple[str, ...]] = {
    "parallelization.enabled": ("test_engine_api.py::test_sequential_fallback_when_parallelization_is_disabled",),
    "parallelization.max_parallel": ("test_settings.py::test_max_parallel_caps_the_pool",),
    "parallelization.backend": ("test_backend_dask.py::test_stats_count_tasks_per_worker",
                                "test_backend_dask.py::test_guild_demo_with_backend_dask_local"),
    "parallelization.address": ("test_backend_dask.py::test_unreachable_scheduler_is_pool_broken",),
    "parallelization.scheduler_file": ("test_backend_dask.py::test_a_cluster_from_the_command_line_loses_a_worker_mid_batch",),
    "parallelization.strategy": (
        "test_routing.py::test_explicit_options_and_strategy_pool_never_run_here",
        "test_settings.py::test_strategy_adaptive_sizes_the_pool_from_host_load",
        "test_settings.py::test_supervisor_settings_follow_config",
    ),
    "pool.min_agents": ("test_engine_scaling.py::test_scale_up_under_load_and_down_after_idle",
                        "test_engine_scaling.py::test_scaling_stops_idle_agents_down_to_min"),
    "pool.max_agents": ("test_engine_scaling.py::test_scale_up_under_load_and_down_after_idle",
                        "test_settings.py::test_supervisor_settings_follow_config"),
    "pool.idle_timeout": ("test_engine_scaling.py::test_scale_up_under_load_and_down_after_idle",),
    "pool.scale_up_queue_length": ("test_engine_scaling.py::test_scaling_starts_min_agents_then_one_at_a_time",
                                   "test_settings.py::test_supervisor_settings_follow_config"),
    "pool.balancing": ("test_engine_scaling.py::test_round_robin_spreads_tasks",),
    "pool.start_method": ("test_engine_api.py::test_submit_and_map_under_each_start_method",),
    "pool.prefetch": ("test_executor.py::test_a_task_sent_ahead_moves_to_an_agent_that_frees_up",
                      "test_settings.py::test_supervisor_settings_follow_config"),
    "pool.max_tasks_per_agent": ("test_engine_api.py::test_recycling_after_max_tasks_per_agent",),
    "pool.queue_strategy": ("test_engine_api.py::test_queue_strategy_fifo_runs_in_submission_order_whatever_the_priority",
                            "test_engine_api.py::test_priority_lower_number_runs_first",
                            "test_machine.py::test_queue_orders_by_priority_or_by_submission"),
    "pool.retries": ("test_settings.py::test_pool_retries_rerun_tasks_whose_agent_died",),
    "pool.quarantine_after": ("test_engine_faults.py::test_quarantine_stops_retry_storms",),
    "limits.per_agent": ("test_engine_faults.py::test_memory_past_the_limit_is_sampled_and_the_agent_replaced",
                         "test_monitor.py::test_per_agent_is_the_unit_of_headroom"),
    # Acts through the monitor: the decision function reads it.
    "limits.total_system": ("test_monitor.py::test_total_system_sets_the_scale",
                            "test_monitor.py::test_no_start_without_headroom_for_one_agent",
                            "test_monitor_engine.py::test_total_system_decides_the_mode_of_the_same_memory",
                            "test_machine_monitor.py::test_no_agent_starts_without_headroom_for_one_per_agent"),
    "limits.cache_size": ("test_monitor.py::test_cache_size_sets_the_cache_scale",
                          "test_monitor_engine.py::test_cache_size_sets_the_scale_of_the_supervisors_cache"),
    "limits.sample_interval": ("test_settings.py::test_sample_interval_spaces_the_memory_samples",),
    "limits.timeout": ("test_settings.py::test_limits_timeout_from_config_times_tasks_out",),
    "limits.timeout_grace": ("test_engine_faults.py::test_stubborn_task_is_killed_after_the_grace",),
    "caching.enabled": ("test_settings.py::test_caching_keywords_reach_agents",
                        "test_cache_tiers.py::test_disabled_cache_is_a_no_op"),
    "caching.memory_cache": ("test_settings.py::test_memory_tiers_follow_config",
                             "test_settings.py::test_caching_keywords_reach_agents"),
    "caching.memory_entries": ("test_settings.py::test_memory_tiers_follow_config",
                               "test_settings.py::test_caching_keywords_reach_agents"),
    "caching.disk_cache": ("test_settings.py::test_memory_tiers_follow_config",
                           "test_cache_l3.py::test_map_full_evicts_oldest_instead_of_failing"),
    "caching.ttl": ("test_settings.py::test_caching_ttl_is_the_result_namespace_lifetime",),
    "caching.path": ("test_settings.py::test_caching_keywords_reach_agents",
                     "test_config.py::test_cache_path_is_relative_to_root"),
    "caching.namespaces.*.ttl": ("test_settings.py::test_namespace_ttl_expires_entries",),
    "caching.namespaces.*.max_entries": ("test_cache_memory.py::test_process_namespace_cap_from_config_caps_memory",
                                         "test_cache_l3.py::test_cap_policy_is_enforced_in_l3"),
    "caching.namespaces.*.scope": ("test_settings.py::test_namespace_scope_decides_whether_l3_keeps_it",),
    "streaming.enabled": ("test_settings.py::test_streaming_disabled_runs_the_generator_as_one_task",
                          "test_settings.py::test_result_threshold_follows_streaming_settings"),
    "streaming.stream_threshold": ("test_streaming.py::test_big_result_comes_back_whole_through_shared_memory",
                                   "test_settings.py::test_result_threshold_follows_streaming_settings"),
    "streaming.chunk_size": ("test_settings.py::test_chunk_size_sizes_the_stream_ring",),
    "streaming.window": ("test_streaming.py::test_slow_consumer_pauses_the_agent",),
    # Act through the monitor: the decision function reads them, the supervisor's loop acts on it.
    "monitoring.enabled": ("test_monitor_engine.py::test_monitoring_disabled_reads_nothing_and_reports_no_mode",),
    "monitoring.check_interval": ("test_monitor.py::test_check_interval_scales_the_hold",
                                  "test_monitor_engine.py::test_check_interval_spaces_the_readings"),
    "monitoring.warning_threshold": ("test_monitor.py::test_thresholds_from_config_move_the_transitions",
                                     "test_monitor_engine.py::test_thresholds_decide_where_the_modes_begin"),
    "monitoring.critical_threshold": ("test_monitor.py::test_thresholds_from_config_move_the_transitions",
                                      "test_monitor_engine.py::test_thresholds_decide_where_the_modes_begin"),
    "monitoring.alerts": ("test_monitor.py::test_alerts_off_changes_mode_without_alert",
                          "test_monitor_engine.py::test_alerts_off_logs_each_change_at_info_and_calls_no_one",
                          "test_monitor_engine.py::test_alerts_on_log_a_warning_and_call_on_alert"),
    "monitoring.metrics": ("test_metrics_engine.py::test_metrics_off_records_nothing",
                           "test_metrics_engine.py::test_stats_and_the_full_record_of_a_run"),
    "optimization.preload": ("test_settings.py::test_preload_true_preloads_what_agents_import",
                             "test_engine_api.py::test_agents_that_die_before_ready_lose_no_task_and_shutdown_returns"),
    "optimization.streaming": ("test_settings.py::test_result_threshold_follows_streaming_settings",),
    "optimization.compression": ("test_settings.py::test_compression_shrinks_what_l3_stores",),
}  # fmt: skip

PENDING: dict[str, str] = {}


def _all_keys() -> set[str]:
    keys = set()
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            if f.name == "namespaces":
                keys |= {f"{name}.namespaces.*.{pf.name}" for pf in fields(NamespacePolicy)}
            else:
                keys.add(f"{name}.{f.name}")
    return keys


def _test_names(filename: str) -> set[str]:
    tree = ast.parse((TESTS / filename).read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_setting_has_a_test_of_its_effect() -> None:
    keys = _all_keys()
    missing = sorted(keys - set(EFFECTS) - set(PENDING))
    assert not missing, f"settings with no test of their effect: {missing}; add one to EFFECTS"
    assert not (set(EFFECTS) - keys) and not (set(PENDING) - keys), "EFFECTS or PENDING name a key that is gone"
    assert not (set(EFFECTS) & set(PENDING))
    for key, tests in EFFECTS.items():
        assert tests, key
        for ref in tests:
            filename, _, name = ref.partition("::")
            assert name in _test_names(filename), f"{key}: no test {ref}"


# -- pool and limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"max_agents": 5}, "max_agents", 5),
        ({"parallelization": {"max_parallel": 2}}, "max_agents", 2),
        ({"pool": {"scale_up_queue_length": 9}}, "scale_up_queue_length", 9),
        ({"pool": {"prefetch": 0}}, "prefetch", 0),
        ({"pool": {"queue_strategy": "fifo"}}, "queue_strategy", "fifo"),
        ({"pool": {"idle_timeout": "5s"}}, "idle_timeout_s", 5.0),
        ({"pool": {"balancing": "round_robin"}}, "balancing", "round_robin"),
        ({"limits": {"sample_interval": "20ms"}}, "sample_interval_s", 0.02),
        ({"limits": {"timeout_grace": "1s"}}, "timeout_grace_s", 1.0),
        ({"streaming": {"window": 7}}, "stream_window", 7),
        ({"parallelization": {"strategy": "sequential"}}, "parallel", False),
        ({"parallelization": {"enabled": False}}, "parallel", False),
    ],
)
def test_supervisor_settings_follow_config(tmp_path: Path, changes: dict[str, object], field: str, value: object) -> None:
    """What the owner loop reads changes with each setting (the loop's tests show what it does with it)."""
    (tmp_path / ".guild").mkdir()  # built-in defaults, whatever the working folder holds
    before = getattr(_settings_from(load_config({"max_agents": 3}, cwd=tmp_path, environ={})), field)
    after = getattr(_settings_from(load_config({"max_agents": 3, **changes}, cwd=tmp_path, environ={})), field)
    assert before != after == value


def test_max_parallel_caps_the_pool(tmp_path: Path) -> None:
    """``max_parallel: 1`` under the queue pressure that starts a second agent with ``max_agents: 2``."""
    started = faults.make_fifo(str(tmp_path / "started"))
    release = faults.make_fifo(str(tmp_path / "release"))
    with Guild(min_agents=1, max_agents=2, pool={"prefetch": 0}, parallelization={"max_parallel": 1}) as g:
        blocker = g.submit(faults.block, started, release)
        faults.wait_started(started)
        futs = [g.submit(faults.inc, i) for i in range(12)]
        faults.release(release)
        assert blocker.result(timeout=30) == "released"
        assert [f.result(timeout=30) for f in futs] == list(range(1, 13))
        assert g.stats()["counters"]["agents_started"] == 1


class _FixedProbe:
    def __init__(self, readings: object) -> None:
        self.readings = readings

    def read(self, agent_pids: object, now: float, *, baselines: object = None) -> object:
        return self.readings


def _wait_for(cond: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    pause = threading.Event()  # never set: a bounded pause between checks
    while not cond():
        assert time.monotonic() < end, f"{what}: not reached before the deadline"
        pause.wait(0.02)


@pytest.mark.parametrize(("other_load", "agents"), [(0.0, 4), (3.0, 1)])
def test_strategy_adaptive_sizes_the_pool_from_host_load(
    monkeypatch: pytest.MonkeyPatch, other_load: float, agents: int
) -> None:
    """Load from other processes on 4 CPUs: none leaves 4 agents, 3 CPUs' worth leaves 1.

    With the monitor the plan follows each reading (the agents beyond it take
    no new work); without it the pool is sized once, when the Guild is made.
    """
    from guildcore import monitor

    readings = monitor.Readings(
        supervisor_bytes=10**7, agent_bytes=0, agents=0, cache_bytes=0, host_total_bytes=10**10,
        host_available_bytes=9 * 10**9, cpus=4, load_avg=other_load,
    )  # fmt: skip
    monkeypatch.setattr(monitor, "Probe", lambda *a, **k: _FixedProbe(readings))
    adaptive = {"strategy": "adaptive"}
    with Guild(max_agents=4, min_agents=1, parallelization=adaptive, monitoring={"check_interval": "20ms"}) as g:
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        _wait_for(lambda: (g.stats()["monitor"]["adaptive"] or {}).get("agents") == agents, f"a plan of {agents} agents")
        assert g.stats()["monitor"]["working_agents"] == (None if agents == 4 else agents)
        assert g.map(faults.inc, range(20)) == list(range(1, 21))  # routed like auto: inline or pool
    with Guild(max_agents=4, min_agents=1, parallelization=adaptive, monitoring={"enabled": False}) as g:
        assert repr(g) == f"<Guild running agents=1..{agents}>"
    with Guild(max_agents=4, min_agents=1, parallelization={"strategy": "auto"}) as g:
        assert repr(g) == "<Guild running agents=1..4>"
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        assert g.stats()["monitor"]["adaptive"] is None


def test_pool_retries_rerun_tasks_whose_agent_died(tmp_path: Path) -> None:
    with Guild(max_agents=1, pool={"retries": 1}) as g:
        assert g.submit(settingswork.die_once, str(tmp_path / "a")).result(timeout=30) == "second try"
    with Guild(max_agents=1, pool={"retries": 0}) as g, pytest.raises(AgentDied):
        g.submit(settingswork.die_once, str(tmp_path / "b")).result(timeout=30)


def test_limits_timeout_from_config_times_tasks_out(tmp_path: Path) -> None:
    started = faults.make_fifo(str(tmp_path / "started"))
    with Guild(max_agents=1, limits={"timeout": "200ms"}) as g, pytest.raises(TaskTimeout, match=r"after 0.2 s"):
        g.submit(faults.hang, started).result(timeout=30)


@pytest.mark.parametrize("interval", ["10ms", "1h"])
def test_sample_interval_spaces_the_memory_samples(tmp_path: Path, interval: str) -> None:
    """60 MB held under a 40 MB limit: sampled every 10 ms it is killed; every hour, not within this test."""
    started = faults.make_fifo(str(tmp_path / "started"))
    release = faults.make_fifo(str(tmp_path / "release"))
    with Guild(max_agents=1, per_agent="40MB", timeout=None, limits={"sample_interval": interval}) as g:
        fut = g.submit(settingswork.hold_memory, 60 * 10**6, started, release)
        if interval == "10ms":  # killed as it allocates, or while it holds
            with pytest.raises(MemoryLimitExceeded, match=r"over its 40.0 MB limit"):
                fut.result(timeout=30)
            return
        faults.wait_started(started)
        for _ in range(3):  # turns of the owner loop after the memory was taken
            g.stats()
        faults.release(release)
        assert fut.result(timeout=30) == f"held {60 * 10**6}"


# -- caching ------------------------------------------------------------------------------


def test_caching_keywords_reach_agents(tmp_path: Path) -> None:
    """``Guild(caching=...)`` keywords reach ``@cached`` inside tasks, as the Guild's own settings."""
    caching = {
        "path": str(tmp_path / "store"), "memory_entries": 80, "memory_cache": "3MB", "disk_cache": "20MB",
        "ttl": "90s", "namespaces": {"MyNs": {"ttl": "10m", "max_entries": 5}},
    }  # fmt: skip
    log = str(tmp_path / "calls.log")
    with Guild(max_agents=1, caching=caching, optimization={"compression": False}) as g:
        got = g.submit(settingswork.agent_cache_settings).result(timeout=30)
        assert [g.submit(settingswork.cached_in_my_namespace, 7, log).result(timeout=30) for _ in range(3)] == [21] * 3
    assert got["path"] == str(tmp_path / "store") and got["enabled"] is True and got["compress"] is False
    assert (got["map_size"], got["l2_max_bytes"], got["l1_max_entries"]) == (20 * 10**6, 3 * 10**6, 10)
    assert got["policies"]["MyNs"] == (600.0, 5, "persistent") and got["policies"]["result"][0] == 90.0
    assert settingswork.calls(log) == [7]  # computed once: hits afterwards
    # caching.enabled: false reaches the agents too: every call computes.
    with Guild(max_agents=1, caching={**caching, "enabled": False}) as g:
        for _ in range(2):
            g.submit(settingswork.cached_in_my_namespace, 8, log).result(timeout=30)
    assert settingswork.calls(log) == [7, 8, 8]


@pytest.mark.parametrize(("entries", "memory", "disk"), [(80, "3MB", "20MB"), (1600, "5MB", "30MB")])
def test_memory_tiers_follow_config(tmp_path: Path, entries: int, memory: str, disk: str) -> None:
    config = load_config(
        {"caching": {"path": str(tmp_path), "memory_entries": entries, "memory_cache": memory, "disk_cache": disk}},
        environ={},
    )  # fmt: skip
    with TieredCache.from_config(config) as cache:
        tiers = cache.stats()["tiers"]
        assert tiers["l1"]["max_entries"] == entries // 8
        assert tiers["l2"]["max_bytes"] == config.caching.memory_cache
        assert tiers["l3"]["map_size"] == config.caching.disk_cache
        for i in range(entries + 50):  # over the entry cap: L2 keeps memory_entries
            cache.set("process", i.to_bytes(4, "big"), i)  # session: memory only, 1 kB charged each
        assert len(cache._l2) <= entries


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("ttl", "alive_after_100s"), [("1m", False), ("10m", True)])
def test_caching_ttl_is_the_result_namespace_lifetime(tmp_path: Path, ttl: str, alive_after_100s: bool) -> None:
    clock = _Clock()
    config = load_config({"caching": {"path": str(tmp_path), "ttl": ttl}}, environ={})
    with TieredCache.from_config(config, clock=clock) as cache:
        cache.set("result", b"k", "v")
        clock.now += 100
        assert (cache.get("result", b"k") == "v") is alive_after_100s
        cache.evict_memory()  # L3 agrees
        assert (cache.get("result", b"k") == "v") is alive_after_100s


@pytest.mark.parametrize(("ttl", "alive_after_100s"), [("1m", False), ("10m", True)])
def test_namespace_ttl_expires_entries(tmp_path: Path, ttl: str, alive_after_100s: bool) -> None:
    clock = _Clock()
    config = load_config({"caching": {"path": str(tmp_path), "namespaces": {"mine": {"ttl": ttl}}}}, environ={})
    with TieredCache.from_config(config, clock=clock) as cache:
        cache.set("mine", b"k", "v")
        clock.now += 100
        cache.evict_memory()
        assert (cache.get("mine", b"k") == "v") is alive_after_100s


@pytest.mark.parametrize(("scope", "kept"), [("session", False), ("persistent", True)])
def test_namespace_scope_decides_whether_l3_keeps_it(tmp_path: Path, scope: str, kept: bool) -> None:
    config = load_config({"caching": {"path": str(tmp_path), "namespaces": {"mine": {"scope": scope}}}}, environ={})
    with TieredCache.from_config(config) as cache:
        cache.set("mine", b"k", "v")
        cache.evict_memory()
        assert (cache.get("mine", b"k") == "v") is kept


@pytest.mark.parametrize("compression", [True, False])
def test_compression_shrinks_what_l3_stores(tmp_path: Path, compression: bool) -> None:
    config = load_config({"caching": {"path": str(tmp_path)}, "optimization": {"compression": compression}}, environ={})
    with TieredCache.from_config(config) as cache:
        cache.set("result", b"k", b"a" * 200_000)
        stored = cache.stats()["namespaces"]["result"]["l3"]["bytes"]
    assert (stored < 50_000) is compression


# -- streaming ----------------------------------------------------------------------------


def test_streaming_disabled_runs_the_generator_as_one_task(tmp_path: Path) -> None:
    """``streaming.enabled: false``: ``g.stream()`` still works; values arrive once the generator ended."""
    from guildcore.engine.collect import CollectedStream

    for enabled in (True, False):
        marker = tmp_path / f"ended-{enabled}"
        with Guild(max_agents=1, streaming={"enabled": enabled, "window": 2}) as g:
            it = g.stream(settingswork.then_mark, 10, str(marker))
            assert next(it) == 0
            assert marker.exists() is not enabled  # streaming: the generator waits for credit
            assert list(it) == list(range(1, 10))
            assert isinstance(it, CollectedStream) is not enabled
    with Guild(max_agents=1, streaming={"enabled": False}) as g:
        with pytest.raises(ValueError, match="boom after 3"):
            list(g.stream(streamwork.fails_after, 3))
        with g.stream(faults.gen_numbers, 5) as it:
            assert next(it) == 0
        assert list(it) == []  # closed


@pytest.mark.parametrize("chunk", [128 * 1024, 512 * 1024])
def test_chunk_size_sizes_the_stream_ring(tmp_path: Path, chunk: int) -> None:
    release = faults.make_fifo(str(tmp_path / "release"))
    with Guild(max_agents=1, streaming={"chunk_size": chunk, "window": 3}) as g:
        it = g.stream(streamwork.first_then_wait, release)
        assert next(it) == "first"
        # The segment (a header page, then window slots); the stream's FIFOs beside it are empty.
        rings = [n for n in os.listdir("/dev/shm") if n.startswith(f"guild_{os.getpid()}_s")]
        sizes = [os.stat(f"/dev/shm/{n}").st_size for n in rings]
        assert [s for s in sizes if s] == [ring.HEADER_BYTES + 3 * chunk]
        faults.release(release)
        assert list(it) == ["second"]


@pytest.mark.parametrize(
    ("streaming", "optimization", "threshold"),
    [({}, {}, 8 * 10**6), ({"stream_threshold": "1MB"}, {}, 10**6), ({"enabled": False}, {}, None),
     ({}, {"streaming": False}, None)],
)  # fmt: skip
def test_result_threshold_follows_streaming_settings(
    streaming: dict[str, object], optimization: dict[str, object], threshold: int | None
) -> None:
    """Results bigger than this go through shared memory (None: always the pipe)."""
    config = load_config({"streaming": streaming, "optimization": optimization}, environ={})
    assert _result_threshold(config) == threshold


# -- preloading ---------------------------------------------------------------------------


@pytest.mark.parametrize(("preload", "expected"), [(True, list(AGENT_MODULES)), (False, []), (["json"], [])])
def test_preload_true_preloads_what_agents_import(preload: object, expected: list[str]) -> None:
    """``preload: true`` imports guildcore's own agent modules at start, before any task needs them."""
    with Guild(max_agents=1, start_method="spawn", optimization={"preload": preload}) as g:
        assert g.submit(settingswork.loaded, list(AGENT_MODULES)).result(timeout=60) == expected
        if isinstance(preload, list):
            assert g.submit(settingswork.loaded, preload).result(timeout=60) == preload


# -- visible ------------------------------------------------------------------------------

ISSUE_BLOCK = """\
# notes

```yaml
performance:
  parallelization: {enabled: true, max_parallel: 3, strategy: adaptive}
  caching: {enabled: true, memory_cache: 256MB, disk_cache: 1GB, ttl: 3600}
  optimization: {preload: true, streaming: true, compression: true}
  monitoring: {enabled: true, metrics: true, alerts: true}
```
"""


def test_config_show_gives_each_value_of_the_block_and_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from guildcore.cli import main

    (tmp_path / ".guild").mkdir()
    (tmp_path / ".guild" / "instructions.md").write_text(ISSUE_BLOCK)
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("GUILD_")]:
        monkeypatch.delenv(name)
    assert main(["config", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    table = {line.split()[0]: " ".join(line.split()[1:]) for line in lines}
    md = ".guild/instructions.md"
    assert table["parallelization.strategy"] == f"adaptive # {md} line 5"
    assert table["parallelization.max_parallel"] == f"3 # {md} line 5"
    assert table["caching.memory_cache"] == f"256MB # {md} line 6"
    assert table["caching.disk_cache"] == f"1GB # {md} line 6"
    assert table["caching.ttl"] == f"1h # {md} line 6"
    assert table["caching.namespaces.result.ttl"] == "1h # default (follows caching.ttl)"
    assert table["optimization.preload"] == f"true # {md} line 7"
    assert table["monitoring.metrics"] == f"true # {md} line 8"
    assert table["monitoring.alerts"] == f"true # {md} line 8"
    assert table["limits.total_system"] == "512MB # default"
    assert main(["config", "show", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["optimization.preload"] == {"value": True, "source": f"{md} line 7"}
    assert data["parallelization.strategy"] == {"value": "adaptive", "source": f"{md} line 5"}
