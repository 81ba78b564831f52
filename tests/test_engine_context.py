"""Shared context through the engine: share, read in tasks, generations, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import cachework
import faults
import pytest

import guildcore
from guildcore import ContextError, Guild

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("backend")]

TESTS = os.path.dirname(os.path.abspath(__file__))


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"guild_{os.getpid()}_")}


def test_tasks_read_the_context_by_argument_and_by_accessor() -> None:
    with Guild(max_agents=2) as g:
        ctx = g.share({"answer": 42, "blob": b"\x00" * 1000, "nested": {"a": (1, 2)}})
        assert g.submit(cachework.read_key, ctx, "answer").result(timeout=30) == 42
        assert g.submit(cachework.context_value, "nested").result(timeout=30) == {"a": (1, 2)}
        assert g.map(cachework.context_value, ["answer"] * 5, chunksize=1) == [42] * 5
        assert ctx["answer"] == 42  # the reference reads in the supervisor too


def test_new_generation_for_new_tasks_old_one_for_tasks_in_flight(tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    with Guild(max_agents=2, min_agents=2) as g:
        g.share({"v": "old"})
        held = g.submit(_block_then_read, started, release)
        faults.wait_started(started)
        g.share({"v": "new"})
        assert g.submit(cachework.context_value, "v").result(timeout=30) == "new"
        assert len(_segments()) == 2  # the old one is still held
        faults.release(release)
        assert held.result(timeout=30) == "old"
        assert g.stats()["context"]["live_generations"] == [2]
        assert len(_segments()) == 1
    assert _segments() == set()  # everything unlinked at shutdown


def _block_then_read(started: str, release: str) -> object:
    faults.block(started, release)
    return guildcore.context()["v"]


def test_overlay_is_per_task() -> None:
    with Guild(max_agents=1) as g:
        g.share({"k": 1})
        assert g.submit(_write_then_read).result(timeout=30) == (99, False)
        assert g.submit(cachework.context_value, "k").result(timeout=30) == 1


def _write_then_read() -> tuple[object, bool]:
    ctx = guildcore.context()
    ctx["k"] = 99
    ctx["new"] = 1
    del ctx["new"]
    return ctx["k"], "new" in ctx


def test_agent_sigkill_leaks_nothing(tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    with Guild(max_agents=1) as g:
        g.share({"k": b"x" * 10_000})
        fut = g.submit(faults.hang, started, timeout=None)
        os.kill(faults.wait_started(started), signal.SIGKILL)
        with pytest.raises(guildcore.AgentDied):
            fut.result(timeout=30)
        assert g.submit(cachework.context_value, "k").result(timeout=30) == b"x" * 10_000
    assert _segments() == set()


@pytest.mark.local_only("with dask-local workers (spawned) the resource tracker they share removes the segment first")
def test_segments_of_a_killed_supervisor_are_swept_by_the_next_guild(tmp_path: object) -> None:
    script = os.path.join(str(tmp_path), "owner.py")
    with open(script, "w") as f:
        f.write(
            textwrap.dedent(
                """
                import sys, time
                from guildcore import Guild

                if __name__ == "__main__":
                    g = Guild(max_agents=1)
                    ref = g.share({"k": b"x" * 100_000})
                    print(ref.name, flush=True)
                    sys.stdin.read()  # until the test kills us
                """
            )
        )
    # multiprocessing's own temp folder lands in tmp_path: a killed process cannot remove it.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert os.path.exists(f"/dev/shm/{name}")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert os.path.exists(f"/dev/shm/{name}")  # nobody cleaned up
    with Guild(max_agents=1):
        assert not os.path.exists(f"/dev/shm/{name}")


def test_unencodable_value_is_a_context_error() -> None:
    import threading

    with Guild(max_agents=1) as g, pytest.raises(ContextError, match="lock"):
        g.share({"lock": threading.Lock()})


@pytest.mark.slow
def test_private_memory_stays_flat_under_a_256mb_context() -> None:
    np = pytest.importorskip("numpy")
    with Guild(max_agents=1, per_agent="100MB") as g:
        g.share({"blob": bytes(256 * 2**20), "arr": np.ones(2**22)})
        grown = g.submit(_read_everything).result(timeout=60)
    assert grown < 10 * 2**20, f"private memory grew by {grown} bytes"


def _read_everything() -> int:
    import hashlib

    from guildcore.engine.limits import read_private_bytes

    before = read_private_bytes(os.getpid()) or 0
    ctx = guildcore.context()
    blob = ctx["blob"]
    h = hashlib.blake2b()
    for i in range(0, len(blob), 2**20):
        h.update(blob[i : i + 2**20])
    assert float(ctx["arr"].sum()) == 2**22
    after = read_private_bytes(os.getpid()) or 0
    return after - before
