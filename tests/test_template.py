"""Agents forked from a template of the caller: warm, and never forked from a thread.

The template is forked by the thread that first needs the pool, only when it
is the process's only Python thread; agents fork from the template. Scripts run
in subprocesses where the test needs a fresh interpreter (what the caller had
imported when the Guild was made matters).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import faults
import psutil
import pytest

from guildcore import AgentDied, Guild

pytestmark = pytest.mark.timeout(90)

TESTS = os.path.dirname(os.path.abspath(__file__))


def _script(tmp_path: Path, body: str, **files: str) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    (tmp_path / "job.py").write_text(
        f"import sys\nsys.path[:0] = [{str(tmp_path)!r}, {TESTS!r}]\n" + textwrap.dedent(body)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}
    return subprocess.run(
        [sys.executable, str(tmp_path / "job.py")], capture_output=True, text=True, timeout=60, cwd=str(tmp_path), env=env
    )


def test_fork_while_the_main_thread_holds_an_import_lock_does_not_hang(tmp_path: Path) -> None:
    # The first agent starts while the main thread is inside `import blocker`
    # (its module lock held, waiting for a task that imports blocker). An
    # agent forked by the supervisor thread at that moment inherits the lock
    # held by a thread it does not have, and hangs in importlib forever.
    proc = _script(
        tmp_path,
        """
        import os
        from guildcore import Guild

        CALLER = os.getpid()

        def uses_blocker():
            import blocker
            return blocker.VALUE

        if __name__ == "__main__":
            g = Guild(start_method="fork", min_agents=0, max_agents=1)
            import blocker
            print(blocker.RESULT, g.stats()["start_method"])
            g.shutdown()
        """,
        blocker="""
        import os, sys
        VALUE = 42
        main = sys.modules["__main__"]
        if os.getpid() == main.CALLER:
            RESULT = main.g.submit(main.uses_blocker).result(timeout=20)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["42", "fork"]


def test_a_caller_with_threads_falls_back_to_the_forkserver() -> None:
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, name="busy")
    busy.start()
    try:
        with Guild(max_agents=1) as g:
            assert g.submit(faults.inc, 1).result(timeout=30) == 2
            assert g.stats()["start_method"] == "forkserver"
        with pytest.warns(RuntimeWarning, match="other threads"), Guild(max_agents=1, start_method="fork") as g:
            assert g.submit(faults.inc, 1).result(timeout=30) == 2
            assert g.stats()["start_method"] == "forkserver"
    finally:
        stop.set()
        busy.join()
    with Guild(max_agents=1) as g:  # alone again: the template
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        assert g.stats()["start_method"] == "fork"


def test_agents_inherit_what_the_caller_had_when_the_pool_started(tmp_path: Path) -> None:
    proc = _script(
        tmp_path,
        """
        import os, sys
        import faults
        import heavy
        from guildcore import Guild

        heavy.STATE.append("set by the caller")

        def probe():
            return sys.modules["heavy"].STATE, "heavy" in sys.modules

        def start():
            if __name__ == "__main__":
                g = Guild(max_agents=1)
                print(g.submit(faults.pid).result(timeout=30) != os.getpid())  # the pool starts
                return g

        g = start()

        def defined_after():  # not in the template: agents run the script (guarded code skipped)
            return "found by running the script"

        if __name__ == "__main__":
            print(g.submit(probe).result(timeout=30))
            print(g.submit(defined_after).result(timeout=30))
            print(open("marks").read().split())
            g.shutdown()
        """,
        heavy="""
        import os
        with open("marks", "a") as f:
            f.write(f"heavy:{os.getpid()} ")
        STATE = []
        """,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1] == "(['set by the caller'], True)"  # inherited, not imported again
    assert lines[2] == "found by running the script"  # a name the template did not have
    # heavy was imported once, by the caller: the agent that ran the script found it inherited
    assert len(lines[3].split(",")) == 1, lines[3]


def test_a_pool_started_while_a_module_is_imported_gives_agents_the_module_so_far(tmp_path: Path) -> None:
    # Agents never import the module again (it would make a Guild inside
    # them): they see it as far as it got when the pool started, as a fork
    # at that moment would.
    proc = _script(
        tmp_path,
        """
        import jobs
        print(jobs.OUT, jobs.LATE)
        jobs.g.shutdown()
        """,
        jobs="""
        import os
        from guildcore import Guild

        with open("marks", "a") as f:
            f.write(f"{os.getpid()} ")

        def double(x):
            return 2 * x

        g = Guild(max_agents=1)
        OUT = g.map(double, range(3), chunksize=1)  # the pool starts: the template is forked now

        def triple(x):
            return 3 * x

        try:
            g.map(triple, range(3), chunksize=1)
        except Exception as exc:
            LATE = type(exc).__name__
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[0,", "2,", "4]", "SerializationError"]
    assert len((tmp_path / "marks").read_text().split()) == 1  # jobs ran in the caller only


def test_the_template_leaves_with_its_guild() -> None:
    with Guild(max_agents=1) as g:
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        template = g._starter._template
        assert template is not None
        pid = template.pid
        assert psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _an_agent_of_the_template(g: Guild) -> psutil.Process:
    """An idle agent the template forked, once there is one.

    A later pool's first agent is the caller's own child (one fork sooner):
    it is killed here, and its replacement comes from the template.
    """
    template = g._starter._template
    assert template is not None
    deadline = time.monotonic() + 30
    while True:
        for agent in g.stats()["agents"]:
            if agent["state"].lower() != "idle":
                continue
            try:
                process = psutil.Process(agent["pid"])
                if process.ppid() == template.pid:
                    return process
                process.kill()
            except psutil.NoSuchProcess:
                pass  # killed a moment ago: the supervisor has not seen it end yet
        assert time.monotonic() < deadline, g.stats()["agents"]
        time.sleep(0.01)


def test_a_lost_template_hands_over_to_the_forkserver() -> None:
    with Guild(max_agents=1, min_agents=1) as g:
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        template = g._starter._template
        assert template is not None
        agent = _an_agent_of_the_template(g)
        os.kill(template.pid, signal.SIGKILL)
        agent.wait(timeout=30)  # the supervisor ends it: it must not outlive its handle
        assert g.submit(faults.inc, 2, retries=2).result(timeout=60) == 3
        assert g.stats()["start_method"] == "forkserver"


def test_an_agent_holding_the_gil_dies_when_its_template_is_killed(tmp_path: Path) -> None:
    # An idle agent ends when the supervisor, seeing its template gone,
    # closes its pipe; a busy one never reads that: the supervisor kills it.
    fifo = faults.make_fifo(str(tmp_path / "started"))
    with Guild(max_agents=1, min_agents=1, timeout=None) as g:
        assert g.submit(faults.inc, 1).result(timeout=30) == 2
        forked = _an_agent_of_the_template(g)
        fut = g.submit(faults.hang_holding_the_gil, fifo, retries=0)
        agent = psutil.Process(faults.wait_started(fifo, timeout_s=60))
        assert agent.pid == forked.pid
        template = g._starter._template
        assert template is not None
        try:
            os.kill(template.pid, signal.SIGKILL)
            agent.wait(timeout=30)
        finally:
            if agent.is_running():
                agent.kill()
        with pytest.raises(AgentDied):
            fut.result(timeout=60)
        assert g.submit(faults.inc, 2).result(timeout=60) == 3


@pytest.mark.parametrize(("start_method", "later"), [("fork", False), ("fork", True), ("forkserver", False)])
def test_an_agent_holding_the_gil_dies_with_its_sigkilled_caller(tmp_path: Path, start_method: str, later: bool) -> None:
    # Its own threads cannot see the EOF of the caller's pipe: the template
    # (fork) or the parent-death signal (forkserver) must end it. The first
    # agent of a later Guild is the caller's own child (forked before the
    # template, which kills it through its pidfd).
    fifo = faults.make_fifo(str(tmp_path / "started"))
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {TESTS!r})
        import faults
        from guildcore import Guild

        if __name__ == "__main__":
            if {later!r}:
                with Guild(max_agents=1, start_method={start_method!r}) as first:
                    first.submit(abs, -1).result(timeout=30)
            g = Guild(max_agents=1, start_method={start_method!r}, timeout=None)
            g.submit(faults.hang_holding_the_gil, {fifo!r})
            time.sleep(3600)
    """))
    # multiprocessing's temp folder (the forkserver's socket) lands in
    # tmp_path: a SIGKILLed process cannot remove it.
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "TMPDIR": str(tmp_path)})
    agent: psutil.Process | None = None
    try:
        agent = psutil.Process(faults.wait_started(fifo, timeout_s=60))
        assert agent.pid != proc.pid
        if start_method == "fork":
            assert (agent.ppid() == proc.pid) is later, "a later Guild's first agent is forked by the caller"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        _gone, alive = psutil.wait_procs([agent], timeout=15)
        assert not alive, f"agent {agent.pid} outlived its caller"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if agent is not None and agent.is_running():
            agent.kill()


def test_the_first_agent_asked_for_early_is_the_machines_first() -> None:
    # A template is asked for agent FIRST_AGENT_ID before the owner loop runs;
    # the machine must start that very id first, or the early agent is wasted.
    from guildcore.config import load_config
    from guildcore.engine.events import StartAgent
    from guildcore.engine.executor import _settings_from
    from guildcore.engine.machine import Machine
    from guildcore.engine.pool import FIRST_AGENT_ID

    for overrides in ({}, {"min_agents": 0}):
        machine = Machine(_settings_from(load_config(overrides, environ={})), new_task_id=lambda: 1)
        actions = machine.handle_batch([], 0.0)
        if not overrides:  # min_agents 1: it starts at once; else with the first task
            starts = [a.agent_id for a in actions if isinstance(a, StartAgent)]
        else:
            from test_machine import make_task

            from guildcore.engine.events import Submitted

            starts = [a.agent_id for a in machine.handle_batch([Submitted([make_task()])], 0.0) if isinstance(a, StartAgent)]
        assert starts == [FIRST_AGENT_ID]
    with Guild(max_agents=2) as g:
        g.submit(faults.inc, 1).result(timeout=60)
        assert g._starter._early is None and g._starter._direct is None  # received, not let go
        assert [a["id"] for a in g.stats()["agents"]] == [FIRST_AGENT_ID]


def test_a_cache_store_open_when_the_template_forks_keeps_storing(tmp_path: Path) -> None:
    # The fork closes the caller's LMDB environment (never used across a
    # fork) and it reopens with new handles: writes after it must use those.
    cfg = {"caching": {"path": str(tmp_path / "cache")}}
    with Guild(max_agents=1, **cfg) as g:
        # The lookup opens the store; the pool (and its fork) starts after it.
        assert g.map(faults.inc, range(40), chunksize=4, cache=True) == list(range(1, 41))
        assert g.stats()["cache"]["items_missed"] == 40
    with Guild(max_agents=1, **cfg) as g:
        assert g.map(faults.inc, range(40), chunksize=4, cache=True) == list(range(1, 41))
        assert g.stats()["cache"]["items_hit"] == 40


def test_preloaded_modules_are_imported_once_for_every_agent(tmp_path: Path) -> None:
    proc = _script(
        tmp_path,
        """
        import os, sys
        from guildcore import Guild

        def where(_):
            return os.getpid(), "heavy" in sys.modules

        if __name__ == "__main__":
            with Guild(max_agents=2, min_agents=2, optimization={"preload": ["heavy"]}) as g:
                seen = set(g.map(where, range(40), chunksize=1))
            print(len({pid for pid, _ in seen}), all(has for _, has in seen), "heavy" in sys.modules)
            print(len(open("marks").read().split()))
        """,
        heavy="""
        with open("marks", "a") as f:
            f.write("imported ")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    # Two agents had it, the caller never imported it, and it ran once (in the template).
    assert proc.stdout.split() == ["2", "True", "False", "1"]


_IDENTITY_TASKS = """
import logging
import ast
import os

def who():
    before = "multiprocessing" in __import__("sys").modules
    import multiprocessing as mp

    me = mp.current_process()
    record = logging.LogRecord("job", logging.INFO, __file__, 1, "msg", None, None)
    parent = mp.parent_process()
    return {
        "loaded before the task": before,
        "name": me.name,
        "daemon": me.daemon,
        "pid is mine": me.pid == os.getpid(),
        "parent": parent.pid if parent is not None else None,
        "ppid": os.getppid(),
        "start method": mp.get_start_method(),
        "log processName": record.processName,
    }
"""


@pytest.mark.parametrize("caller_imports_multiprocessing", [False, True])
def test_a_task_sees_its_agent_as_multiprocessing_names_a_fork_child(tmp_path: Path, caller_imports_multiprocessing: bool) -> None:
    """Agents of a caller without multiprocessing skip its imports, yet a task that asks gets the same answers."""
    proc = _script(
        tmp_path,
        f"""
        import sys
        {"import multiprocessing" if caller_imports_multiprocessing else ""}
        import tasks
        from guildcore import Guild

        if __name__ == "__main__":
            print("multiprocessing" in sys.modules)
            with Guild(max_agents=1, start_method="fork") as g:
                print(g.submit(tasks.who).result(timeout=30))
        """,
        tasks=_IDENTITY_TASKS,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(caller_imports_multiprocessing)  # guildcore itself never imports it
    seen = ast.literal_eval(lines[1])
    assert seen["loaded before the task"] is caller_imports_multiprocessing
    assert seen["name"] == "guild-agent-1"
    assert seen["log processName"] == "guild-agent-1"
    assert seen["daemon"] is True
    assert seen["pid is mine"] is True
    assert seen["start method"] == "fork"
    if not caller_imports_multiprocessing:
        assert seen["parent"] == seen["ppid"]  # the template, which forked it


def test_the_first_agent_does_not_wait_for_the_template_to_start_itself(tmp_path: Path) -> None:
    # The template forks the first agent at birth, then readies itself for
    # later agents: its start-up is held here until the first result is
    # back, which must come all the same; a later agent comes after it.
    proc = _script(
        tmp_path,
        """
        import os
        import faults
        from guildcore import AgentDied, Guild
        from guildcore.engine import template

        release_r, release_w = os.pipe()
        started = template._start_template

        def held_start(preload):
            os.read(release_r, 1)  # in the template: until the caller has its first result
            started(preload)

        template._start_template = held_start
        with Guild(max_agents=1) as g:
            print(g.submit(faults.inc, 1).result(timeout=20))
            os.write(release_w, b"x")
            first = g.stats()["agents"][0]["pid"]
            try:
                g.submit(faults.exit_hard, 3, retries=0).result(timeout=20)
            except AgentDied:
                pass
            # Its replacement comes from the template, started now.
            print(g.submit(faults.pid, retries=1).result(timeout=20) != first, g.stats()["start_method"])
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "True", "fork"]


def test_an_agent_that_ends_before_the_template_watches_for_exits_is_reported(tmp_path: Path) -> None:
    # The first agent is forked before the template sets its SIGCHLD handler;
    # one that has already exited by then must still be reaped and its exit
    # code sent, or the supervisor would wait for it forever.
    proc = _script(
        tmp_path,
        """
        import os
        from guildcore.engine import template

        fork_agent = template._fork_agent

        def fork_and_wait_for_its_end(agent_id, conn_fd, status_w, run_agent, status_of, in_child):
            fork_agent(agent_id, conn_fd, status_w, run_agent, status_of, in_child)
            for pid in status_of:  # in the template: the agent is a zombie before the handler exists
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

        def exit_at_once(agent_id, conn):
            os._exit(7)

        template._fork_agent = fork_and_wait_for_its_end
        t = template.Template.fork(exit_at_once, first_agent=1)
        child, conn = t.receive(t.first)
        child.join(20)
        print(child.exitcode)
        conn.close()
        child.close()
        t.close()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["7"]


def test_a_first_agent_forked_by_the_caller_and_never_taken_ends_with_the_pool() -> None:
    # A later pool (the rules are imported: nothing left to import before its
    # owner loop) forks its first agent itself; a pool that ends before
    # taking it must end and reap it.
    import guildcore.engine.machine  # noqa: F401 - what makes this process a later pool's
    from guildcore.engine.pool import AgentStarter

    starter = AgentStarter(start_method="auto", limit_bytes=None)
    starter.prepare(first_agent=True)
    direct = starter._direct
    assert direct is not None, "forked by the caller"
    child, _conn = direct
    assert psutil.Process(child.pid).ppid() == os.getpid()
    starter.close()
    assert starter._direct is None and child.exitcode == -signal.SIGKILL  # it held no task: not waited for
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # reaped


_SIGNALS_TASKS = """
import os, signal, subprocess

def child_exit_code():
    return subprocess.run(["sh", "-c", "exit 3"]).returncode

def raise_sigwinch():
    os.kill(os.getpid(), signal.SIGWINCH)
    return os.getppid()
"""


def test_a_first_agent_has_its_own_sigchld_and_wakeup_fd(tmp_path: Path) -> None:
    # A caller that ignores SIGCHLD, or wakes an event loop through
    # set_wakeup_fd, must not hand either to its first agents: a task's
    # subprocess gives its exit code, and a signal in the agent does not
    # reach the caller. A later Guild's first agent is then the template's
    # (a caller that ignores SIGCHLD would reap an agent of its own).
    proc = _script(
        tmp_path,
        """
        import os, signal
        import sigtasks
        from guildcore import Guild

        if __name__ == "__main__":
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
            signal.signal(signal.SIGWINCH, lambda *_: None)
            wake_r, wake_w = os.pipe()
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)
            signal.set_wakeup_fd(wake_w)
            for _ in range(2):  # a first Guild, then a later one
                with Guild(max_agents=1) as g:
                    code = g.submit(sigtasks.child_exit_code).result(timeout=30)
                    parent = g.submit(sigtasks.raise_sigwinch).result(timeout=30)
                try:
                    woken = os.read(wake_r, 100)
                except BlockingIOError:
                    woken = b""
                print(code, woken == b"", parent != os.getpid())
        """,
        sigtasks=_SIGNALS_TASKS,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "True", "True"] * 2


def test_a_direct_childs_exit_code_taken_by_another_waiter_is_unknown_not_invented() -> None:
    from guildcore.engine.template import DirectChild

    pid = os.fork()
    if pid == 0:
        os._exit(5)
    child = DirectChild(pid, os.pidfd_open(pid))
    os.waitpid(pid, 0)  # a waiter of the caller's own (an os.wait(), a SIGCHLD handler)
    child.join(10)
    assert child.exitcode is None and not child.is_alive()
    child.close()
    pid = os.fork()
    if pid == 0:
        os._exit(5)
    child = DirectChild(pid, os.pidfd_open(pid))
    child.join(10)
    assert child.exitcode == 5 and not child.is_alive()
    child.close()


def test_an_agent_whose_supervisor_let_go_exits_quietly(tmp_path: Path) -> None:
    # Its pipe closed before it said READY: it has no one to report to, and
    # must not print a traceback on the user's stderr.
    proc = _script(
        tmp_path,
        """
        import os
        import faults
        import guildcore.engine.machine  # a later pool's: its first agent is the caller's own
        from guildcore.engine.pool import AgentStarter

        if __name__ == "__main__":
            # Its initializer holds it until the pipe is closed; then it says READY.
            starter = AgentStarter(start_method="auto", limit_bytes=None, initializer=faults.wait_for_path, initargs=("go",))
            starter.prepare(first_agent=True)
            child, conn = starter._direct
            conn.close()
            open("go", "w").close()
            child.join(30)
            print(child.exitcode)
            starter._direct = None
            child.close()
            starter.close()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0"]
    assert "Traceback" not in proc.stderr, proc.stderr
