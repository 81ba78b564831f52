"""Chaos: the supervisor's own process SIGKILLed in the middle of a cached batch.

The batch (``cache=True``, a shared context, four thousand items) runs in a
script; when an item halfway through runs, the test SIGKILLs the script.
Nothing of it may outlive it for long: its agents die with it, and its
shared-memory segments are swept by the next Guild that starts. The rerun
computes exactly the items the first run had not stored, each once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import chaoswork
import faults
import psutil
import pytest

from guildcore import Guild

pytestmark = pytest.mark.timeout(180)

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 4000
SALT = 17


def _segments_of(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"guild_{pid}_")]


def test_a_killed_supervisor_leaves_nothing_behind_and_the_rerun_computes_only_what_is_missing(tmp_path: Path) -> None:
    control = str(tmp_path)
    cache_dir = tmp_path / "cache"
    fifo = faults.make_fifo(str(tmp_path / "halfway"))
    (tmp_path / "signal_at").write_text(str(N // 2))
    script = tmp_path / "batch.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import chaoswork
        from guildcore import Guild

        if __name__ == "__main__":
            with Guild(max_agents=2, min_agents=2, timeout=None, caching={{"path": {str(cache_dir)!r}}}) as g:
                g.share({{"salt": {SALT}}})
                g.starmap(chaoswork.logged, [(x, {control!r}) for x in range({N})], chunksize=40, cache=True)
    """))
    # multiprocessing's own temp folder lands in tmp_path: a killed process cannot remove it.
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        faults.wait_started(fifo, timeout_s=120)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert _segments_of(proc.pid), "the first run shared no context"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        _gone, alive = psutil.wait_procs(descendants, timeout=15)
        assert not alive, f"outlived their supervisor: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = chaoswork.calls(control)
    assert N // 2 in first and len(set(first)) < N
    (tmp_path / "signal_at").unlink()

    with Guild(max_agents=2, timeout=None, caching={"path": str(cache_dir)}) as g:  # sweeps the dead run's segments
        assert not _segments_of(proc.pid)
        g.share({"salt": SALT})
        out = g.starmap(chaoswork.logged, [(x, control) for x in range(N)], chunksize=40, cache=True)
        cache = g.stats()["cache"]
    assert out == [chaoswork.work(x) + SALT for x in range(N)]
    rerun = chaoswork.calls(control)[len(first) :]
    assert len(rerun) == len(set(rerun)) == cache["items_missed"]  # each missing item once
    assert cache["items_hit"] > 0 and cache["items_hit"] + cache["items_missed"] == N
    assert set(rerun) >= set(range(N)) - set(first)  # what the first run never reached was computed now
