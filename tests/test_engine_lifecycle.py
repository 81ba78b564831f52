"""Lifecycle from the outside: scripts run in a fresh interpreter.

Interpreter exit with a live Guild, Ctrl-C mid-batch, functions defined in a
script's ``__main__``, a Guild made by a process that already runs threads,
and no leaked file descriptors or threads after shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import faults
import psutil
import pytest

from guildcore import AgentDied, Guild

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("backend")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_script(tmp_path: object, body: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = os.path.join(str(tmp_path), "script.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path)
    )


def test_functions_defined_in_main_of_a_script(tmp_path: object) -> None:
    proc = _run_script(
        tmp_path,
        """
        from guildcore import AgentDied, Guild

        def square(x):
            return x * x

        if __name__ == "__main__":
            with Guild(max_agents=2) as g:
                print(sum(g.map(square, range(100))))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sum(x * x for x in range(100)))


def test_interpreter_exit_with_a_live_guild_finishes_its_work_and_leaves_no_agent(tmp_path: object) -> None:
    proc = _run_script(
        tmp_path,
        """
        import os, time
        from guildcore import AgentDied, Guild

        def slow(x):
            time.sleep(0.3)
            print("finished", x, flush=True)

        if __name__ == "__main__":
            g = Guild(max_agents=2, min_agents=2)
            print(g.submit(os.getpid).result(timeout=30), flush=True)
            g.submit(slow, 1)
            # no shutdown: exit runs the task, as ProcessPoolExecutor does, then stops the agents
        """,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    agent_pid, finished = proc.stdout.strip().splitlines()
    assert finished == "finished 1"
    assert "Traceback" not in proc.stderr
    assert not psutil.pid_exists(int(agent_pid)) or psutil.Process(int(agent_pid)).status() == psutil.STATUS_ZOMBIE


def test_ctrl_c_cancels_pending_work_and_stops_agents(tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    script = os.path.join(str(tmp_path), "script.py")
    with open(script, "w") as f:
        f.write(
            textwrap.dedent(
                f"""
                import signal, sys, time
                # A terminal's Ctrl-C: the test runner may have started us with SIGINT ignored.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
                import faults
                from guildcore import AgentDied, Guild

                if __name__ == "__main__":
                    try:
                        with Guild(max_agents=2, min_agents=2, timeout=None) as g:
                            g.submit(faults.hang, {started!r})
                            g.map(faults.hang, [None] * 8, chunksize=1)
                    except KeyboardInterrupt:
                        print("interrupted", flush=True)
                """
            )
        )
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        faults.wait_started(started)
        agents = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted"
    _gone, alive = psutil.wait_procs(agents, timeout=10)
    assert not alive


@pytest.mark.local_only("start methods of local agents")
def test_guild_from_a_process_that_runs_threads() -> None:
    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait, name=f"busy-{i}") for i in range(4)]
    for t in busy:
        t.start()
    try:
        for method in ("forkserver", "spawn"):
            with Guild(max_agents=2, start_method=method) as g:
                assert g.map(faults.inc, range(20), chunksize=5) == list(range(1, 21))
    finally:
        stop.set()
        for t in busy:
            t.join()


def test_no_leaked_fds_or_threads_after_shutdown() -> None:
    before_fds = set(os.listdir("/proc/self/fd"))
    before_threads = set(threading.enumerate())
    with Guild(max_agents=2, min_agents=2) as g:
        g.map(faults.inc, range(1000), chunksize=100)
        with pytest.raises(AgentDied, match=r"died with exit code 1"):
            g.submit(faults.exit_hard, 1).result(timeout=30)
    leaked_threads = [t for t in set(threading.enumerate()) - before_threads if t.is_alive()]
    assert not leaked_threads
    after_fds = set(os.listdir("/proc/self/fd"))
    # The forkserver's alive-pipe is opened once per interpreter, on first use.
    assert len(after_fds - before_fds) <= 1, sorted(after_fds - before_fds)


def test_a_script_read_from_stdin_works(tmp_path: object) -> None:
    # __main__.__file__ is '<stdin>': agents must not try to import it, and its
    # functions travel by value.
    body = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import faults
        from guildcore import AgentDied, Guild

        def triple(x):
            return 3 * x

        with Guild(max_agents=1) as g:
            print(g.submit(faults.inc, 1).result(timeout=30), g.map(triple, [1, 2]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-"], input=body, capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2 [3, 6]"


def test_work_queued_before_shutdown_without_wait_finishes_before_exit(tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "out")
    os.mkdir(out)
    proc = _run_script(
        tmp_path,
        f"""
        import os, time
        from guildcore import Guild, GuildExecutor

        def slow_write(name):
            time.sleep(0.3)
            with open(os.path.join({out!r}, name), "w") as f:
                f.write("done")

        if __name__ == "__main__":
            ex = GuildExecutor(max_workers=1)
            g = Guild(max_agents=1)
            for i in range(3):
                ex.submit(slow_write, f"executor-{{i}}")
                g.submit(slow_write, f"guild-{{i}}")
            ex.shutdown(wait=False)
            g.shutdown(wait=False)
            # the script ends here: exit waits for the queued work, as the stdlib does
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == sorted([f"executor-{i}" for i in range(3)] + [f"guild-{i}" for i in range(3)])


@pytest.mark.local_only("the owner loop and the first agent of local agents")
def test_a_pools_first_task_is_taken_in_the_owner_loops_first_turn() -> None:
    # Posted before the owner thread starts, the first task is queued in the
    # loop's first turn, with its first agent's start (and so sent to it as
    # soon as the agent exists), not once the caller's thread has the GIL
    # back from that turn.
    turns: list[tuple[float, str]] = []
    with Guild(max_agents=1) as g:
        g._supervisor.observe(lambda now, action: turns.append((now, type(action).__name__)))
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
    first_turn = {name for now, name in turns if now == turns[0][0]}
    assert {"StartAgent", "TaskMoved"} <= first_turn, turns
