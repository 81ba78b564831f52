"""Forkserver agents run the caller's script only when a task needs a name from it.

Each script appends its pid to a marker file at import, outside any guard,
so the marker counts how many processes ran the script. The scripts pin
``start_method: forkserver``; agents forked from a template inherit the
script instead (``test_template.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guildcore.engine import lazymain
from guildcore.errors import SerializationError

pytestmark = pytest.mark.timeout(90)

TESTS = os.path.dirname(os.path.abspath(__file__))

MARK = f"""
import os, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mark"), "a") as f:
    f.write(f"{{os.getpid()}}\\n")
sys.path.insert(0, {TESTS!r})
"""


def _run(tmp_path: Path, body: str, *, module: bool = False) -> subprocess.CompletedProcess[str]:
    (tmp_path / "job.py").write_text(MARK + textwrap.dedent(body))
    argv = [sys.executable, "-m", "job"] if module else [sys.executable, str(tmp_path / "job.py")]
    env = {**os.environ, "GUILD_POOL__START_METHOD": "forkserver"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(tmp_path), env=env)


def _runs(tmp_path: Path) -> list[int]:
    return [int(line) for line in (tmp_path / "mark").read_text().split()]


def test_tasks_from_modules_never_run_the_script_in_agents(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        import faults
        from guildcore import Guild

        if __name__ == "__main__":
            with Guild(max_agents=2, min_agents=2) as g:
                print(g.map(faults.inc, range(100), chunksize=10) == list(range(1, 101)))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "True"
    assert _runs(tmp_path) == [_runs(tmp_path)[0]]  # the caller only


def test_names_from_the_script_load_it_on_first_use(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        import os
        import faults
        from guildcore import Guild

        class Point:
            def __init__(self, x):
                self.x = x

        def square(x):
            return x * x

        def getx(p):
            return p.x

        def setup(p):
            global OFFSET
            OFFSET = p.x

        def offset(x):
            return x + OFFSET

        if __name__ == "__main__":
            with Guild(max_agents=2, min_agents=2, initializer=setup, initargs=(Point(100),)) as g:
                print(sum(g.map(square, range(10), chunksize=1)), g.submit(getx, Point(5)).result(), g.submit(offset, 1).result())
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["285", "5", "101"]
    runs = _runs(tmp_path)
    assert 2 <= len(runs) <= 3 and len(set(runs)) == len(runs)  # the caller, then each agent once


def test_script_classes_in_arguments_load_the_script_in_the_main_thread(tmp_path: Path) -> None:
    # The script sets a signal handler at import, which only the main thread
    # may do: unpickling a Point must not load it in the agent's reader thread.
    proc = _run(
        tmp_path,
        """
        import signal
        import faults
        from guildcore import Guild

        class Point:
            def __init__(self, x):
                self.x = x

        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

        if __name__ == "__main__":
            with Guild(max_agents=1, min_agents=1) as g:
                p = g.submit(faults.sleep_then, 0, Point(5)).result(timeout=30)
                print(type(p).__name__, p.x, g.stats()["counters"]["agents_died"])
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Point", "5", "0"]


def test_an_unguarded_script_passing_its_own_class_gets_the_fix(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        import faults
        from guildcore import Guild

        class Point:
            pass

        g = Guild(max_agents=1, min_agents=1)
        try:
            g.submit(faults.sleep_then, 0, Point()).result(timeout=30)
        except Exception as exc:
            print(type(exc).__name__, "|", exc, "|", g.stats()["counters"]["agents_died"])
        g.shutdown()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    name, message, died = proc.stdout.split("|")
    assert name.strip() == "SerializationError"
    assert "creates a Guild when imported" in message
    assert died.strip() == "0"  # the agent reported the failure and lived


def test_an_unguarded_script_with_functions_from_modules_runs_once(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        import faults
        from guildcore import Guild

        g = Guild(max_agents=2, min_agents=2)
        print("work", g.map(faults.inc, range(5), chunksize=1))
        g.shutdown()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "work [1, 2, 3, 4, 5]"
    assert len(_runs(tmp_path)) == 1


def test_an_unguarded_script_needing_its_own_functions_gets_the_fix(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        from guildcore import Guild

        def square(x):
            return x * x

        g = Guild(max_agents=1)
        print("work", flush=True)
        try:
            g.map(square, range(5), chunksize=1)
        finally:
            g.shutdown()
        """,
    )
    assert proc.returncode != 0
    assert "SerializationError" in proc.stderr
    assert "creates a Guild when imported" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr
    assert proc.stdout.split() == ["work"]  # the agent stopped at Guild(): no second run of the work


def test_a_main_module_run_with_dash_m_loads_lazily(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        import faults
        from guildcore import Guild

        def cube(x):
            return x ** 3

        if __name__ == "__main__":
            with Guild(max_agents=1) as g:
                before = len(open("mark").read().split())
                print(g.submit(faults.inc, 1).result(), before, g.map(cube, [1, 2, 3], chunksize=1))
        """,
        module=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2 1 [1, 8, 27]"
    assert len(_runs(tmp_path)) == 2


def test_lazy_main_runs_the_script_once_and_keeps_a_failure(tmp_path: Path) -> None:
    script = tmp_path / "side.py"
    script.write_text("import os\nCOUNT = []\nCOUNT.append(1)\nVALUE = 7\n")
    module = lazymain.LazyMain("path", str(script))
    with pytest.raises(AttributeError):
        module.__path__  # noqa: B018 - a dunder probe must not run the script
    assert "VALUE" not in module.__dict__
    assert module.VALUE == 7 and module.COUNT == [1]
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        module.missing  # noqa: B018
    assert module.COUNT == [1]

    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom at import')\n")
    bad = lazymain.LazyMain("path", str(broken))
    for _ in range(2):
        with pytest.raises(SerializationError, match="boom at import"):
            bad.anything  # noqa: B018


def test_guild_refuses_to_start_inside_a_script_import_on_that_thread_only() -> None:
    import threading

    lazymain._loading_in = threading.get_ident()
    try:
        with pytest.raises(SerializationError, match="creates a Guild when"):
            lazymain.check_not_importing_main()
        other: list[BaseException | None] = []

        def elsewhere() -> None:
            try:
                lazymain.check_not_importing_main()
                other.append(None)
            except BaseException as exc:
                other.append(exc)

        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
        assert other == [None]  # a task's own nested Guild on another thread is fine
    finally:
        lazymain._loading_in = None
