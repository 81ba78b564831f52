"""The Dask backend: what the parametrized engine tests cannot show.

Selection and its errors, Dask loaded only when used, the worker-side
watchdog (timeouts and memory in Python code), post-mortems that name the
worker, the context scattered to a cluster, and a real cluster started
from Dask's own command line whose worker is killed mid-batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import daskwork
import faults
import psutil
import pytest

import guildcore
from guildcore import AgentDied, ConfigError, Guild, GuildExecutor, MemoryLimitExceeded, TaskTimeout

pytestmark = pytest.mark.timeout(120)

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


# ------------------------------------------------------------ choosing a backend


def test_import_and_a_local_guild_load_no_dask() -> None:
    code = textwrap.dedent(
        """
        import sys
        import guildcore
        from guildcore import Guild
        with Guild(max_agents=1) as g:
            assert g.map(abs, [-1, -2]) == [1, 2]
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed", "tornado"))
        loaded += sorted(m for m in sys.modules if m.startswith("guildcore.backends"))
        print(loaded)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_missing_dask_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` sees without the extra
    with pytest.raises(ConfigError, match=r"backend dask-local needs Dask distributed.*pip install 'guildcore\[dask\]'"):
        Guild(backend="dask-local")


def test_backend_from_keywords_environment_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = guildcore.load_config({"backend": "dask", "address": "tcp://10.0.0.1:8786"})
    assert (config.parallelization.backend, config.parallelization.address) == ("dask", "tcp://10.0.0.1:8786")
    environ = {"GUILD_PARALLELIZATION__BACKEND": "dask", "GUILD_PARALLELIZATION__SCHEDULER_FILE": "/x/s.json"}
    config = guildcore.load_config(environ=environ, cwd=tmp_path)
    assert config.parallelization.scheduler_file == "/x/s.json"
    (tmp_path / ".guild").mkdir()
    (tmp_path / ".guild" / "config.yaml").write_text("parallelization:\n  backend: dask-local\n")
    assert guildcore.load_config(cwd=tmp_path, environ={}).parallelization.backend == "dask-local"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"backend": "dask"}, r"parallelization.backend dask \(keyword argument\) names no scheduler"),
        ({"backend": "dask", "address": "tcp://a:1", "scheduler_file": "s.json"}, r"names two schedulers"),
        ({"address": "tcp://a:1"}, r"parallelization.address tcp://a:1 .* is read only by backend dask"),
        ({"backend": "ray"}, r"bad value 'ray' for 'backend'.*choose one of local, dask, dask-local"),
        ({"backend": "dask-local", "pool": {"balancing": "round_robin"}}, r"pool.balancing 'round_robin' acts only on"),
        ({"backend": "dask-local", "start_method": "spawn"}, r"pool.start_method 'spawn' acts only on"),
        ({"backend": "dask-local", "limits": {"total_system": "1GB"}}, r"limits.total_system 1000000000 is read by .*memory monitor"),
        ({"backend": "dask-local", "monitoring": {"warning_threshold": 0.5}}, r"monitoring.warning_threshold 0.5 .*local agents only"),
    ],
)
def test_impossible_backend_settings_are_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Guild(**overrides)


def test_executor_refuses_what_dask_cannot_do() -> None:
    with pytest.raises(ConfigError, match=r"pool.max_tasks_per_agent 2 acts only on guildcore's own agents"):
        GuildExecutor(max_workers=1, max_tasks_per_child=2, backend="dask-local")


def test_unreachable_scheduler_is_pool_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    from guildcore.backends import daskcluster

    monkeypatch.setattr(daskcluster, "_CONNECT_TIMEOUT_S", 0.5)
    with pytest.raises(guildcore.PoolBroken, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        Guild(backend="dask", address="tcp://127.0.0.1:9", timeout=None)


# ------------------------------------------------------------ dask-local, one Guild per test


def test_a_worker_that_dies_before_its_nanny_knows_its_address_is_named_by_its_nanny() -> None:
    # A nanny learns a restarted worker's address only when that worker
    # reports to it; one that dies first is recorded under the address of
    # the worker before it. Its nanny's exit then stands for it.
    import time

    from guildcore.backends.daskcluster import ExitLog

    log = ExitLog()
    log.exited("tcp://w1", -11, nanny="tcp://n")
    assert log.wait_exit("tcp://w1", 5.0, nanny="tcp://n") == (-11, None)  # by address, at once
    log.exited("tcp://w1", 3, nanny="tcp://n")  # w2 died, recorded under w1's address
    assert log.wait_exit("tcp://w2", 5.0, nanny="tcp://n") == (3, None)
    # Nothing new from the nanny: its last exit was taken, and an old one stands for nothing.
    assert log.wait_exit("tcp://w3", 0.5, nanny="tcp://n") == (None, None)
    log.exited(None, 4, nanny="tcp://n")
    log._nanny_exits["tcp://n"] = (time.monotonic() - 60, 4)
    assert log.wait_exit("tcp://w3", 0.5, nanny="tcp://n") == (None, None)


def test_crashes_name_the_worker_its_pid_and_the_signal() -> None:
    with Guild(backend="dask-local", max_agents=1) as g:
        before = g.submit(daskwork.worker_pid).result(timeout=30)
        with pytest.raises(AgentDied, match=r"Dask worker tcp://127\.0\.0\.1:\d+ \(pid \d+\) died with signal SIGSEGV \(-11\) while running task \d+ \(faults:segfault\)") as info:
            g.submit(faults.segfault).result(timeout=60)
        err = info.value
        assert err.pid == before and err.exitcode == -11 and err.address is not None
        assert err.address in str(err) and "pass retries=N" in str(err)
        with pytest.raises(AgentDied, match=r"died with exit code 3 "):
            g.submit(faults.exit_hard, 3).result(timeout=60)
        assert g.submit(daskwork.worker_pid).result(timeout=60) not in (before, None)
        stats = g.stats()
        assert stats["backend"] == "dask-local" and stats["scheduler"].startswith("tcp://127.0.0.1:")
        assert stats["counters"]["agents_died"] == 2


def test_timeout_interrupts_python_code_runs_finally_and_keeps_the_worker(tmp_path: Path) -> None:
    marker = str(tmp_path / "finally")
    with Guild(backend="dask-local", max_agents=1) as g:
        pid = g.submit(daskwork.worker_pid).result(timeout=30)
        with pytest.raises(TaskTimeout, match=r"task \d+ \(daskwork:spin_with_finally\) timed out after 0.3 s") as info:
            g.submit(daskwork.spin_with_finally, marker, timeout=0.3).result(timeout=30)
        assert isinstance(info.value, TimeoutError) and info.value.address is not None
        assert Path(marker).read_text() == "finally ran"
        assert g.submit(daskwork.worker_pid).result(timeout=30) == pid  # same worker


def test_a_task_blocked_past_its_timeout_gets_its_worker_restarted(tmp_path: Path) -> None:
    fifo = faults.make_fifo(str(tmp_path / "started"))
    with Guild(backend="dask-local", max_agents=1, limits={"timeout_grace": 0.2}) as g:
        fut = g.submit(faults.hang_stubborn, fifo, timeout=0.2)
        pid = faults.wait_started(fifo)
        with pytest.raises(TaskTimeout, match=r"did not stop when asked; Dask worker tcp://\S+ was restarted"):
            fut.result(timeout=60)
        assert g.submit(daskwork.worker_pid).result(timeout=60) != pid
        assert g.stats()["counters"]["agents_replaced_timeout"] == 1


def test_private_memory_past_the_limit_stops_the_task_and_keeps_the_worker() -> None:
    with Guild(backend="dask-local", max_agents=1, per_agent="60MB", timeout=None) as g:
        pid = g.submit(daskwork.worker_pid).result(timeout=30)
        with pytest.raises(MemoryLimitExceeded, match=r"grew by \d+\.\d MB of private memory, over its 60.0 MB limit") as info:
            g.submit(daskwork.grow_forever, 4 * 2**20).result(timeout=60)
        assert info.value.peak_bytes > 60_000_000 and info.value.limit_bytes == 60_000_000
        assert g.submit(daskwork.worker_pid).result(timeout=30) == pid


def test_memory_grown_while_the_task_blocks_in_c_gets_the_worker_restarted_by_its_nanny() -> None:
    with Guild(backend="dask-local", max_agents=1, per_agent="50MB", timeout=None) as g:
        pid = g.submit(daskwork.worker_pid).result(timeout=30)
        # The task's thread blocks in C while memory grows: nothing to interrupt; the nanny acts.
        with pytest.raises(MemoryLimitExceeded, match=r"\(pid \d+\) grew by \d+\.\d MB of private memory, over its 50.0 MB limit, .*its nanny restarted it"):
            g.submit(daskwork.hold_from_another_thread, 400 * 2**20).result(timeout=60)
        assert g.submit(daskwork.worker_pid).result(timeout=60) != pid
        assert g.stats()["counters"]["agents_replaced_memory"] == 1


def test_an_initializer_that_kills_its_worker_breaks_the_pool() -> None:
    with Guild(backend="dask-local", max_agents=1, initializer=faults.exit_hard, initargs=(3,)) as g:
        with pytest.raises(guildcore.PoolBroken, match=r"a Dask worker died while it ran the agent initializer"):
            g.submit(faults.inc, 1).result(timeout=30)
        with pytest.raises(guildcore.PoolBroken):
            g.map(faults.inc, range(3), chunksize=1)  # the pool, not a run in this thread


def test_arguments_too_big_are_refused_before_sending() -> None:
    with Guild(backend="dask-local", max_agents=1) as g:
        with pytest.raises(MemoryLimitExceeded, match=r"was not sent: its arguments encode to 15\d\.\d MB"):
            g.submit(len, bytes(150 * 2**20)).result(timeout=60)
        assert g.submit(len, b"still here").result(timeout=30) == 10


def test_stats_count_tasks_per_worker() -> None:
    with Guild(backend="dask-local", max_agents=2) as g:
        g.map(faults.inc, range(40), chunksize=1)
        stats = g.stats()
        assert len(stats["agents"]) == 2 and all(a["address"].startswith("tcp://127.0.0.1:") for a in stats["agents"])
        assert sum(a["tasks_done"] for a in stats["agents"]) == 40
        assert set(stats["peak_private_bytes"]) <= {a["id"] for a in stats["agents"]}
        # The run's metrics see the workers as agents, and every task on one.
        assert stats["metrics"]["agents_used"] == 2 and stats["metrics"]["tasks"]["done"] == 40
        # The memory monitor watches local agents only: on Dask it does not run, and says so.
        assert stats["mode"] is None and stats["monitor"] is None
        assert g._monitor_io is None
    stats = g.stats()
    assert stats["closed"] is True and stats["agents"] == []
    assert stats["counters"]["done"] == 40 and stats["counters"]["submitted"] == 40


def test_a_scattered_context_is_read_in_the_worker(tmp_path: Path) -> None:
    """The worker side of a context that reached it as bytes (backend dask), with no segment here."""
    from guildcore import codec
    from guildcore.backends.daskworker import OK, run_task
    from guildcore.codec import Kind
    from guildcore.context import ContextRegistry, detach
    from guildcore.engine.agent import MODE_STARMAP

    with ContextRegistry() as registry:
        handle = registry.share({"base": 100})
        with open(os.path.join("/dev/shm", handle.name), "rb") as f:
            data = f.read()
    ref = handle.ref
    assert not os.path.exists(os.path.join("/dev/shm", ref.name))  # only the bytes are left
    spec = "daskwork:context_plus"
    frame = codec.encode_frame(Kind.TASK, 1, MODE_STARMAP, spec, [("base", 1), ("base", 2)], None, ref, None, 0.1, spec)
    try:
        record = codec.decode(run_task(frame, data))
    finally:
        detach(ref.name)
    assert record[0] == OK and record[1] == [101, 102]


# ------------------------------------------------------------ a cluster from Dask's command line


def _dask(*args: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
    with open(log, "wb") as out:
        return subprocess.Popen([dask_cli, *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(log.parent))


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, in reverse order of start (workers, then the scheduler); SIGKILL what stays."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """`dask scheduler` and two one-thread `dask worker`s on loopback; yields the scheduler file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT, env.get("PYTHONPATH", "")])
    # A worker's death fails its task at once, so guildcore's retries act (Dask's default reruns it thrice).
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        _dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(scheduler_file), log=tmp_path / "scheduler.log", env=env),
    ]  # fmt: skip
    try:
        for name in ("w1", "w2"):
            procs.append(
                _dask("worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1", "--nthreads", "1",
                      "--no-dashboard", "--memory-limit", "0", "--name", name,
                      "--local-directory", str(tmp_path / name), log=tmp_path / f"{name}.log", env=env)
            )  # fmt: skip
        from distributed import Client

        _wait_for_file(scheduler_file, procs[0], tmp_path / "scheduler.log")
        with Client(scheduler_file=str(scheduler_file), set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield str(scheduler_file)
    finally:
        _stop(procs)


def _wait_for_file(path: Path, writer: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    """Wait until ``writer`` has written ``path`` (the scheduler file, once it listens)."""
    tick, waited = threading.Event(), 0.0
    while not path.exists():
        assert writer.poll() is None, log.read_text()
        assert waited < timeout_s, f"{path} was not written within {timeout_s} s"
        tick.wait(0.05)
        waited += 0.05


def _in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())  # type: ignore[operator]
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, name="batch")
    thread.start()
    return thread, out


@pytest.mark.timeout(240)
def test_a_cluster_from_the_command_line_loses_a_worker_mid_batch(cluster: str, tmp_path: Path) -> None:
    with Guild(backend="dask", scheduler_file=cluster, caching={"path": str(tmp_path / "cache")}) as g:
        assert g.stats()["counters"]["agents_started"] == 2 and g._settings.max_agents == 2

        # Retried: the item whose worker was killed runs again; every item comes back.
        fifo = faults.make_fifo(str(tmp_path / "started-1"))
        items = [(x, fifo, str(tmp_path / "marker-1")) for x in range(40)]
        batch, out = _in_thread(lambda: g.starmap(daskwork.first_signals_then_square, items, chunksize=4, retries=2))
        os.kill(faults.wait_started(fifo), signal.SIGKILL)  # the batch is running: one item signalled
        batch.join(timeout=120)
        assert not batch.is_alive() and out == [[x * x for x in range(40)]]
        counters = g.stats()["counters"]
        assert counters["agents_died"] == 1 and counters["retried"] == 1

        # Not retried: that chunk fails with the cause; the batch raises it.
        fifo = faults.make_fifo(str(tmp_path / "started-2"))
        items = [(x, fifo, str(tmp_path / "marker-2")) for x in range(40)]
        batch, out = _in_thread(lambda: g.starmap(daskwork.first_signals_then_square, items, chunksize=4))
        victim = faults.wait_started(fifo)
        os.kill(victim, signal.SIGKILL)
        batch.join(timeout=120)
        assert not batch.is_alive() and len(out) == 1 and isinstance(out[0], AgentDied)
        assert f"(pid {victim}) died while running task" in str(out[0])
        assert out[0].address is not None and out[0].address.startswith("tcp://127.0.0.1:")

        # The nannies replaced the workers: the cluster runs on, with a context
        # scattered to it and results cached on this host.
        g.share({"base": 1000})
        assert g.starmap(daskwork.context_plus, [("base", x) for x in range(10)]) == [1000 + x for x in range(10)]
        assert g.map(faults.inc, range(50), cache=True) == list(range(1, 51))
        submitted = g.stats()["counters"]["submitted"]
        assert g.map(faults.inc, range(50), cache=True) == list(range(1, 51))
        assert g.stats()["counters"]["submitted"] == submitted
        assert g.stats()["cache"]["items_hit"] == 50
    assert json.loads(Path(cluster).read_text())["address"].startswith("tcp://127.0.0.1:")


# ------------------------------------------------------------ the demo


def test_guild_demo_with_backend_dask_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_demo import demo_args, make_codebase, run_json

    root = tmp_path / "code"
    expected = make_codebase(root)
    report = run_json([*demo_args(root, tmp_path), "--backend", "dask-local"], capsys)
    seq, cold, warm = report["passes"]
    assert seq["digest"] == cold["digest"] == warm["digest"]  # the same outcomes, file by file
    assert (cold["hit_rate"], warm["hit_rate"]) == (0.0, 1.0)
    assert cold["changes"] == sum(expected.values()) and cold["agents_used"] >= 1
    assert main_refuses(["demo", "--backend", "dask"], capsys) == "--backend dask and --address go together"


def main_refuses(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from guildcore.cli import main

    assert main(args) == 2
    return capsys.readouterr().err.strip().removeprefix("guild: error: ")
