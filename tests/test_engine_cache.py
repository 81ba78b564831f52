"""The engine's result cache: reruns dispatch nothing; interrupted batches resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import cachework
import faults
import psutil
import pytest

from guildcore import Guild

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("backend")]

TESTS = os.path.dirname(os.path.abspath(__file__))


def _guild(tmp_path: object, **kw: object) -> Guild:
    return Guild(max_agents=2, caching={"path": os.path.join(str(tmp_path), "cache")}, **kw)


def test_rerun_of_a_cached_batch_dispatches_nothing(tmp_path: object) -> None:
    control = str(tmp_path)
    items = [(i, control) for i in range(50)]
    with _guild(tmp_path) as g:
        assert g.starmap(cachework.double_logged, items, cache=True) == [2 * i for i in range(50)]
        submitted = g.stats()["counters"]["submitted"]
        assert g.starmap(cachework.double_logged, items, cache=True) == [2 * i for i in range(50)]
        stats = g.stats()
        assert stats["counters"]["submitted"] == submitted  # nothing dispatched
        assert stats["cache"]["items_hit"] == 50
    assert sorted(cachework.calls(control)) == list(range(50))  # each item ran once
    # A new Guild (a new run) reads the same store from disk.
    with _guild(tmp_path) as g:
        assert g.starmap(cachework.double_logged, items, cache=True) == [2 * i for i in range(50)]
        assert g.stats()["cache"]["hit_rate"] == 1.0
    assert len(cachework.calls(control)) == 50


def test_partial_hits_compute_only_the_rest(tmp_path: object) -> None:
    with _guild(tmp_path) as g:
        assert g.map(faults.inc, range(10), cache=True) == list(range(1, 11))
        assert g.map(faults.inc, range(20), cache=True) == list(range(1, 21))
        cache = g.stats()["cache"]
        assert cache["items_hit"] == 10 and cache["items_missed"] == 20


def test_submit_cache_and_failures_are_not_cached(tmp_path: object) -> None:
    with _guild(tmp_path) as g:
        assert g.submit(faults.add, 1, 2, cache=True).result(timeout=30) == 3
        hit = g.submit(faults.add, 1, 2, cache=True)
        assert hit.done() and hit.result() == 3
        for _ in range(2):
            with pytest.raises(ValueError, match="nope"):
                g.submit(faults.fail, "nope", cache=True).result(timeout=30)


def test_different_function_or_context_misses(tmp_path: object) -> None:
    with _guild(tmp_path) as g:
        g.share({"k": 1})
        assert g.map(faults.inc, [1, 2], cache=True) == [2, 3]
        g.share({"k": 2})  # other content: results computed again
        g.map(faults.inc, [1, 2], cache=True)
        g.share({"k": 1})  # the first content again: hits, even in a new generation
        g.map(faults.inc, [1, 2], cache=True)
        cache = g.stats()["cache"]
        assert cache["items_missed"] == 4 and cache["items_hit"] == 2


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_batch_resumes_after_the_supervisor_is_killed(tmp_path: object, sig: int) -> None:
    control = str(tmp_path)
    cache_dir = os.path.join(control, "cache")
    with open(os.path.join(control, "hang_at"), "w") as f:
        f.write("10")
    faults.make_fifo(os.path.join(control, "started"))
    script = os.path.join(control, "batch.py")
    with open(script, "w") as f:
        f.write(
            textwrap.dedent(
                f"""
                import signal, sys
                # A terminal's Ctrl-C: the test runner may have started us with SIGINT ignored.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                sys.path.insert(0, {TESTS!r})
                import cachework
                from guildcore import Guild

                if __name__ == "__main__":
                    with Guild(max_agents=1, min_agents=1, pool={{"prefetch": 0}}, timeout=None,
                               caching={{"path": {cache_dir!r}}}) as g:
                        g.starmap(cachework.double_logged, [(i, {control!r}) for i in range(20)],
                                  chunksize=1, cache=True)
                """
            )
        )
    # multiprocessing's own temp folder lands in tmp_path: a killed process cannot remove it.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, script], stderr=subprocess.PIPE, text=True, env=env)
    try:
        faults.wait_started(os.path.join(control, "started"))
        descendants = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        proc.communicate(timeout=30)
        # Neither the forkserver nor an agent outlives its supervisor.
        _gone, alive = psutil.wait_procs(descendants, timeout=15)
        assert not alive, alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first_run = cachework.calls(control)
    assert first_run == list(range(11))  # 0..9 finished, 10 was running
    os.unlink(os.path.join(control, "hang_at"))
    with Guild(max_agents=2, caching={"path": cache_dir}) as g:
        out = g.starmap(cachework.double_logged, [(i, control) for i in range(20)], cache=True)
    assert out == [2 * i for i in range(20)]
    rerun = cachework.calls(control)[len(first_run) :]
    # Only what had not finished, each once: items 10..19, and item 9 too if
    # the kill came before the cache's writer thread had stored it.
    assert len(rerun) == len(set(rerun)) and set(range(10, 20)) <= set(rerun) <= set(range(9, 20))
