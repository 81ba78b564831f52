"""Start-up: a fresh interpreter's first result, and idle memory after one task.

For each system, a fresh interpreter runs a small program: import the
system, create its pool (2 workers/agents), submit one trivial task
(``trivial.ping``, from a module that imports nothing), and write a line
when the result is back. The suite times from launching the interpreter to
reading that line, and subtracts the median of the same measurement for a
bare ``python`` that writes the line at once: what remains is what the
system adds before the first result.

Then, with the pool idle (``SETTLE_S`` after the task), it reads ``RssAnon``
(private memory) and ``VmRSS`` from ``/proc/PID/status`` for the parent and
each worker/agent, and each worker's USS (pages no other process maps, from
``/proc/PID/smaps``). A worker forked from its parent (fork pools, and
guildcore's agents forked from a template of the caller) counts the parent's
pages it shares copy-on-write in ``RssAnon``; USS counts only what the
worker added, the memory its exit would give back. Workers are the leaf processes under the parent; helpers
(a forkserver, resource trackers) are listed apart. Pools that start
workers lazily may show one worker (Guild starts ``min_agents=1``).

Targets: Guild's first result under 150 ms after interpreter start (net of
bare interpreter start: reported both ways), idle agent memory under 8 MB
(USS: ``RssAnon`` of a forked agent is mostly its parent's).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import pools
from benchmarks.harness import Bench

NAME = "startup"

REPO = Path(__file__).resolve().parent.parent
SETTLE_S = 0.5
FULL_ROUNDS = 11
SEED = 20261130  # the order of systems in each round is shuffled, the same in every run
FIRST_RESULT_TARGET_MS = 150.0
AGENT_PRIVATE_TARGET_MB = 8.0

_FIRST: dict[str, tuple[str, str, str]] = {
    # setup (import + pool), first call, worker pids expression (None: find leaves)
    "multiprocessing.Pool": (
        "import multiprocessing\npool = multiprocessing.Pool(2)",
        "pool.apply(trivial.ping, (1,))",
        "pool.close(); pool.join()",
    ),
    "ProcessPoolExecutor": (
        "import concurrent.futures\npool = concurrent.futures.ProcessPoolExecutor(2)",
        "pool.submit(trivial.ping, 1).result()",
        "pool.shutdown()",
    ),
    "joblib": (
        "import joblib\npool = joblib.Parallel(n_jobs=2)",
        "pool([joblib.delayed(trivial.ping)(1)])",
        "",
    ),
    "loky": (
        "import loky\npool = loky.get_reusable_executor(max_workers=2)",
        "pool.submit(trivial.ping, 1).result()",
        "pool.shutdown()",
    ),
    "mpire": (
        "import mpire\npool = mpire.WorkerPool(n_jobs=2, keep_alive=True); pool.__enter__()",
        "pool.map(trivial.ping, [1])",
        "pool.__exit__(None, None, None)",
    ),
    "guildcore Guild": (
        "import guildcore\npool = guildcore.Guild(max_agents=2)",
        "pool.submit(trivial.ping, 1).result()",
        "pool.shutdown()",
    ),
    "guildcore GuildExecutor": (
        "import guildcore\npool = guildcore.GuildExecutor(max_workers=2)",
        "pool.submit(trivial.ping, 1).result()",
        "pool.shutdown()",
    ),
}

BARE = "bare python"


def _program(system: str) -> str:
    if system == BARE:
        return "import sys\nsys.stdout.write('first\\n'); sys.stdout.flush()\nsys.stdin.readline()\n"
    setup, call, stop = _FIRST[system]
    return "\n".join(
        [
            "import sys",
            "from benchmarks import trivial",
            setup,
            call,
            "sys.stdout.write('first\\n'); sys.stdout.flush()",
            "sys.stdin.readline()",
            stop,
            "",
        ]
    )


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "VmRSS"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _uss(pid: int) -> int:
    """Unique set size: pages only this process maps (0 if unknown)."""
    import psutil

    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except (psutil.Error, AttributeError):
        return 0


def _descendants(pid: int) -> tuple[list[int], list[int]]:
    """(workers, helpers) under ``pid``: leaves that are not trackers are workers."""
    import psutil

    workers, helpers = [], []
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return [], []
    for p in kids:
        try:
            cmd = " ".join(p.cmdline())
            has_children = bool(p.children())
        except psutil.Error:
            continue
        if "resource_tracker" in cmd or "semaphore_tracker" in cmd or has_children:
            helpers.append(p.pid)
        else:
            workers.append(p.pid)
    return workers, helpers


def _one(system: str, cwd: str, memory: bool = True) -> tuple[float, dict[str, float]]:
    """Launch-to-first-result in ms, and memory figures in MB (unless ``memory`` is false)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _program(system)],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    first_ms = (time.perf_counter() - t0) * 1000
    if line.strip() != "first":
        proc.kill()
        proc.wait()
        pools.wait_session_gone(proc.pid)
        raise RuntimeError(f"{system}: the start-up program failed")
    mem: dict[str, float] = {}
    if system != BARE and memory:
        time.sleep(SETTLE_S)
        workers, helpers = _descendants(proc.pid)
        parent = _status(proc.pid)
        mem["parent private"] = parent.get("RssAnon", 0) / 2**20
        mem["parent rss"] = parent.get("VmRSS", 0) / 2**20
        ws = [_status(w) for w in workers]
        ws = [w for w in ws if w]
        if ws:
            mem["worker private"] = statistics.median(w.get("RssAnon", 0) for w in ws) / 2**20
            mem["worker rss"] = statistics.median(w.get("VmRSS", 0) for w in ws) / 2**20
            uss = [u for u in (_uss(w) for w in workers) if u]
            if uss:
                mem["worker unique"] = statistics.median(uss) / 2**20
        mem["workers"] = len(ws)
        mem["helpers private"] = sum(_status(h).get("RssAnon", 0) for h in helpers) / 2**20
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.stdin.close()
    proc.wait(timeout=60)
    pools.wait_session_gone(proc.pid)  # its pool's helpers too: the next launch must not pay for their exit
    return first_ms, mem


def run(bench: Bench) -> None:
    systems = [s.name for s in pools.systems() if bench.available(s.module, s.name)]
    rounds = bench.repeat if bench.quick else max(bench.repeat, FULL_ROUNDS)  # quick: 3
    bench.note(pools.compile_bytecode())
    bench.note(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    first: dict[str, list[float]] = {name: [] for name in [BARE, *systems]}
    mems: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    # An empty working directory: guildcore reads .guild/ config from the
    # working directory, and this repository's own (YAML) would be timed too.
    cwd = tempfile.mkdtemp(prefix="guild-bench-startup-")
    bench.note("programs run in an empty temporary directory (no .guild/ config to read)")
    for name in first:  # warm the page cache and .pyc files (no memory reading: not kept)
        _one(name, cwd, memory=False)
    order = list(first)
    shuffle = random.Random(SEED).shuffle
    for _ in range(rounds):
        # A new order each round: a fixed one made each system launch right
        # after the same other one, whose helpers were still exiting.
        shuffle(order)
        for name in order:
            ms, mem = _one(name, cwd)
            first[name].append(ms)
            if mem:
                mems[name].append(mem)
    shutil.rmtree(cwd, ignore_errors=True)
    bare = statistics.median(first[BARE])
    for name, values in first.items():
        bench.record("launch to first result", name, values, unit="ms", baseline=BARE)
    for name in systems:
        bench.record("first result, net of bare interpreter", name, [v - bare for v in first[name]], unit="ms")
    for key in ("parent private", "worker private", "worker unique", "parent rss", "worker rss", "helpers private"):
        for name in systems:
            values = [m[key] for m in mems[name] if key in m]
            if values:
                count = statistics.median(m.get("workers", 0) for m in mems[name])
                note = f"{count:g} worker(s) alive" if key.startswith("worker") else ""
                bench.record(f"idle {key} memory", name, values, unit="MB", note=note)
    g = bench.groups["launch to first result"]
    ours = "guildcore Guild"
    if ours in g.samples:
        total = g.median(ours)
        net = total - bare
        bench.note(
            f"Guild first result {total:.0f} ms after launch ({net:.0f} ms net of a bare interpreter's "
            f"{bare:.0f} ms); target < {FIRST_RESULT_TARGET_MS:.0f} ms: "
            f"{'met' if total < FIRST_RESULT_TARGET_MS else 'met net of interpreter start only' if net < FIRST_RESULT_TARGET_MS else 'MISSED'}"
        )
    wg = bench.groups.get("idle worker unique memory")
    pg = bench.groups.get("idle worker private memory")
    if wg is not None and ours in wg.samples:
        mb = wg.median(ours)
        anon = f" (RssAnon {pg.median(ours):.1f} MB, mostly the caller's pages it shares)" if pg and ours in pg.samples else ""
        bench.note(
            f"Guild idle agent unique memory (USS) {mb:.1f} MB{anon}; target < {AGENT_PRIVATE_TARGET_MB:.0f} MB: "
            f"{'met' if mb < AGENT_PRIVATE_TARGET_MB else 'MISSED'}"
        )
    bench.note(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
