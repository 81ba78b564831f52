"""Memory pressure: a batch that grows memory past ``limits.total_system``, and the monitor's cost.

Two measurements:

1. **Pressure batch.** Every task keeps ``STEP_MB`` in its agent (an
   agent-local cache of recent results, capped at ``AGENT_CAP_MB`` per
   agent) and burns a little CPU. Four agents at their cap plus the
   supervisor need more than the ``TOTAL_SYSTEM`` budget (each agent
   reaches its cap after ``AGENT_CAP_MB / STEP_MB`` tasks), so the batch
   drives the pool into ``critical`` (sequential: the extra agents finish
   and stop, giving their memory back), and back once they have. Run with the
   monitor on, then off, each with a sampler thread that reads the private
   memory of the supervisor and every agent every 20 ms. Reported: wall
   time, peak private memory, tasks completed (all must be, with the right
   results), agents that died (none may: a death there is the OOM killer or
   a limit kill), and the monitor's mode timeline.
2. **Overhead.** The refactor workload (``workloads.refactor_file`` over the
   standard library) on a warm two-agent Guild with the monitor on and off,
   interleaved A B A B, the default ``check_interval``. Target: the monitor
   costs under 1 %. A third Guild runs ``parallelization.strategy:
   adaptive`` (the monitor sizing the pool from the host's load), against
   the default ``auto``: what adaptive costs where the host is idle.

Both need the monitor to run inside the supervisor (``g.stats()["mode"]``);
on a build where it does not, the suite records a skip that says so.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Bench
from benchmarks.workloads import refactor_file, stdlib_files

NAME = "memory"

MB = 10**6
STEP_MB = 4  # kept by each task in its agent
AGENT_CAP_MB = 120  # an agent keeps at most this much (oldest out)
TOTAL_SYSTEM = "400MB"  # four agents at their cap (480 MB) plus the supervisor do not fit
PER_AGENT = "200MB"
AGENTS = 4
TASK_CPU_S = 0.01
QUICK_STEP = 8
OVERHEAD_TARGET = 0.01

_held: deque[bytearray] = deque()  # per agent: module state of the agent process


def keep_some(i: int) -> int:
    """One pressure task: keep ``STEP_MB`` in this agent (up to its cap), burn a little CPU."""
    block = bytearray(STEP_MB * MB)
    for k in range(0, len(block), 4096):
        block[k] = 1
    _held.append(block)
    while len(_held) * STEP_MB > AGENT_CAP_MB:
        _held.popleft()
    end = time.perf_counter() + TASK_CPU_S
    while time.perf_counter() < end:
        pass
    return i * 2


class _Sampler:
    """Peak private memory of this process and its children, read every 20 ms on a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory-sampler", daemon=True)

    def _run(self) -> None:
        import psutil

        from guildcore.engine import limits

        me = psutil.Process()
        while not self._stop.wait(0.02):
            pids = [os.getpid()] + [c.pid for c in me.children(recursive=True)]
            total = sum(limits.read_private_bytes(p) or 0 for p in pids)
            self.peak = max(self.peak, total)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def monitor_wired() -> bool:
    """Whether this build runs the monitor inside the supervisor (the suite's seam)."""
    from guildcore import Guild

    with Guild(max_agents=1, min_agents=0) as g:
        return "mode" in g.stats()


def _pressure_guild(monitoring: bool) -> Any:
    from guildcore import Guild

    return Guild(
        max_agents=AGENTS,
        min_agents=1,
        per_agent=PER_AGENT,
        timeout=None,
        limits={"total_system": TOTAL_SYSTEM},
        monitoring={"enabled": monitoring, "check_interval": "100ms"},
        pool={"scale_up_queue_length": 1, "idle_timeout": "1s"},
    )


def _pressure_run(monitoring: bool, n: int) -> dict[str, Any]:
    with _Sampler() as sampler, _pressure_guild(monitoring) as g:
        t0 = time.perf_counter()
        out = g.map(keep_some, range(n), chunksize=1)
        wall = time.perf_counter() - t0
        stats = g.stats()
    return {
        "wall": wall,
        "peak": sampler.peak,
        "ok": out == [i * 2 for i in range(n)],
        "done": stats["counters"]["done"],
        "failed": stats["counters"]["failed"],
        "died": stats["counters"]["agents_died"],
        "timeline": (stats.get("monitor") or {}).get("timeline", []),
        "t0": t0,
    }


def _timeline_text(run: dict[str, Any]) -> list[str]:
    events = run["timeline"]
    if not events:
        return ["(no mode change)"]
    first = events[0]["at"]
    return [f"+{e['at'] - first:6.2f} s  {e['from']} -> {e['to']}: {e['reason']}" for e in events]


def _pressure(bench: Bench) -> None:
    n = 160 if bench.quick else 480  # 40 (120) tasks per agent: each reaches its cap
    rounds = 1 if bench.quick else 3
    runs: dict[str, list[dict[str, Any]]] = {"monitor on": [], "monitor off": []}
    for _ in range(rounds):
        for name in runs:
            runs[name].append(_pressure_run(name == "monitor on", n))
    group = f"pressure batch: {n} tasks keeping {STEP_MB} MB each, total_system {TOTAL_SYSTEM}"
    for name, rs in runs.items():
        bench.record(f"{group}: wall", name, [r["wall"] for r in rs], unit="s", baseline="monitor off")
        bench.record(f"{group}: peak private memory", name, [r["peak"] / MB for r in rs], unit="MB",
                     baseline="monitor off")  # fmt: skip
        lost = [r for r in rs if not r["ok"] or r["failed"] or r["done"] != n]
        died = sum(r["died"] for r in rs)
        bench.note(f"{name}: {len(rs) - len(lost)} of {len(rs)} runs completed every task correctly; "
                   f"agents died: {died} (an agent killed by the OOM killer or a limit counts here)")  # fmt: skip
    on = runs["monitor on"][-1]
    print(f"mode timeline of the last run with the monitor on ({group}):")
    for line in _timeline_text(on):
        print(f"  {line}")
    bench.note("mode timeline (last run, monitor on): " + " | ".join(_timeline_text(on)))


def _overhead(bench: Bench) -> None:
    from guildcore import Guild

    files = stdlib_files(QUICK_STEP if bench.quick else 2)
    rounds = max(3, bench.repeat if bench.quick else min(bench.repeat, 5))
    guilds = {
        "monitor on": Guild(max_agents=2, monitoring={"enabled": True}),
        "monitor off": Guild(max_agents=2, monitoring={"enabled": False}),
        "adaptive": Guild(max_agents=2, parallelization={"strategy": "adaptive"}),
    }
    try:
        expected = [refactor_file(f) for f in files[:8]]
        for g in guilds.values():  # warm: agents up, function resolved
            if g.map(refactor_file, files[:8]) != expected:
                raise AssertionError("wrong results")
        samples: dict[str, list[float]] = {name: [] for name in guilds}
        order = list(guilds)
        for r in range(rounds):  # the order turns each round: no system always runs after the same one
            for name in order[r % len(order) :] + order[: r % len(order)]:
                g = guilds[name]
                samples[name].append(_timed(lambda g=g: g.map(refactor_file, files)))
        per_reading = _reading_cost(guilds["monitor on"])
    finally:
        for g in guilds.values():
            g.shutdown()
    group = f"refactor, {len(files)} files, 2 agents, check_interval 1s"
    for name, values in samples.items():
        bench.record(group, name, values, unit="s", baseline="monitor off")
    off = statistics.median(samples["monitor off"])
    cost = statistics.median(samples["monitor on"]) / off - 1
    verdict = "met" if cost < OVERHEAD_TARGET else "MISSED"
    bench.note(f"monitor overhead on the refactor workload: {cost:+.2%} (target < {OVERHEAD_TARGET:.0%}: {verdict})")
    bench.note(
        f"one reading and its decision cost {per_reading * 1e6:.0f} us on the owner loop, once per check_interval "
        f"(1 s): {per_reading:.4%} of one CPU, the monitor's whole share of the loop's time on an idle pool"
    )
    adaptive = statistics.median(samples["adaptive"]) / off - 1
    load = os.getloadavg()[0]
    bench.note(f"strategy adaptive vs auto (monitor off) on the refactor workload: {adaptive:+.2%}, "
               f"host load average {load:.1f} on {os.cpu_count()} CPUs (adaptive yields CPUs to other load)")  # fmt: skip


def _reading_cost(g: Any, n: int = 200) -> float:
    """Seconds per reading plus decision, as the owner loop does them: the probe over the live agents, then the monitor."""
    from guildcore.monitor import Monitor

    sup = g._supervisor
    probe = g._monitor_io.probe
    pids = [a.pid for a in sup.machine.agents.values() if a.pid is not None and a.live]
    monitor = Monitor(sup.settings.monitor)
    t0 = time.perf_counter()
    for i in range(n):
        monitor.observe(probe.read(pids, time.monotonic()), float(i))
    return (time.perf_counter() - t0) / n


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(bench: Bench) -> None:
    if not monitor_wired():
        reason = "the monitor does not run inside the supervisor in this build (no stats()['mode'])"
        bench.skip("monitor on", reason)
        bench.note(f"skipped: {reason}")
        return
    _pressure(bench)
    _overhead(bench)
