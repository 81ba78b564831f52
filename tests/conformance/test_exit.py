"""Interpreter exit, as ``concurrent.futures`` defines it, in fresh interpreters.

Each script runs against ``ProcessPoolExecutor`` (the reference),
``GuildExecutor`` and ``Guild``: work submitted and never waited for still
runs before the interpreter exits (unless it was cancelled), and a submit
from an ``atexit`` handler, once interpreter shutdown has begun, raises
``RuntimeError("cannot schedule new futures after interpreter shutdown")``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAKERS = {
    "ProcessPoolExecutor": "from concurrent.futures import ProcessPoolExecutor as Pool\nmake = lambda n: Pool(n)",
    "GuildExecutor": "from guildcore import GuildExecutor as Pool\nmake = lambda n: Pool(n)",
    "Guild": "from guildcore import Guild\nmake = lambda n: Guild(max_agents=n)",
}


def _run(tmp_path: object, maker: str, body: str) -> subprocess.CompletedProcess[str]:
    script = os.path.join(str(tmp_path), "script.py")
    with open(script, "w") as f:
        f.write(MAKERS[maker] + "\n" + textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=100, cwd=str(tmp_path), env=env
    )


@pytest.mark.parametrize("maker", list(MAKERS))
def test_work_left_at_exit_runs_to_completion(tmp_path: object, maker: str) -> None:
    proc = _run(
        tmp_path,
        maker,
        """
        import time

        def sleep_and_print(seconds, word):
            time.sleep(seconds)
            print(word, flush=True)

        if __name__ == "__main__":
            ex = make(2)
            ex.submit(sleep_and_print, 0.5, "apple")
            ex.submit(sleep_and_print, 0.2, "pear")
            # the script ends here, with both tasks queued or running
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["apple", "pear"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("maker", list(MAKERS))
def test_cancelled_work_does_not_run_at_exit(tmp_path: object, maker: str) -> None:
    proc = _run(
        tmp_path,
        maker,
        """
        import os, time

        def wait_for(path):
            deadline = time.monotonic() + 60  # never outlive a failed script
            while not os.path.exists(path) and time.monotonic() < deadline:
                os.sched_yield()
            print("first", flush=True)

        def word(w):
            print(w, flush=True)

        def nothing():
            pass

        if __name__ == "__main__":
            ex = make(1)
            first = ex.submit(wait_for, "go")
            # ProcessPoolExecutor moves up to max_workers + 1 calls ahead into
            # its call queue, where they can no longer be cancelled: fillers
            # take those places, so the cancel below never races with it.
            for _ in range(3):
                ex.submit(nothing)
            queued = ex.submit(word, "never")
            assert queued.cancel()
            ex.submit(word, "last")
            open("go", "w").close()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["first", "last"]


@pytest.mark.parametrize("maker", list(MAKERS))
def test_submit_from_atexit_after_shutdown_began_raises(tmp_path: object, maker: str) -> None:
    proc = _run(
        tmp_path,
        maker,
        """
        import atexit

        def word(w):
            print(w, flush=True)

        def late():
            try:
                ex.submit(word, "late")
            except RuntimeError as exc:
                print(type(exc).__name__, isinstance(exc, RuntimeError), exc, flush=True)

        if __name__ == "__main__":
            ex = make(1)
            ex.submit(word, "early").result()
            atexit.register(late)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "early"
    # The stdlib says "after shutdown" here (its manager thread flagged the
    # executor first) and "after interpreter shutdown" where it had not yet.
    expected = "after shutdown" if maker == "ProcessPoolExecutor" else "after interpreter shutdown"
    assert lines[1] == f"RuntimeError True cannot schedule new futures {expected}" or (
        maker != "ProcessPoolExecutor" and lines[1].endswith(f"True cannot schedule new futures {expected}")
    )
    assert "late" not in lines
