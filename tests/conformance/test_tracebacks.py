"""Tracebacks from workers: every frame keeps its file, line and source text.

A function sent by value (here a classmethod inherited by a class the
script defines, and a lambda) fails in the agent; the caller's error
carries the agent's traceback as ``__cause__``, as ``ProcessPoolExecutor``
does with ``_RemoteTraceback``, and that traceback names the real file, the
line and its source, for both executors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MOD = """\
class Base:
    @classmethod
    def meth(cls, x):
        raise ValueError(f"bad {x} in {cls.__name__}")
"""

SCRIPT = """\
import sys
import mod
from concurrent.futures import ProcessPoolExecutor
from guildcore import GuildExecutor

class Sub(mod.Base):
    pass

if __name__ == "__main__":
    Executor = {"ProcessPoolExecutor": ProcessPoolExecutor, "GuildExecutor": GuildExecutor}[sys.argv[1]]
    with Executor(1) as ex:
        for fn, arg in ((Sub.meth, 3), (lambda x: 1 // x, 0)):
            try:
                ex.submit(fn, arg).result(timeout=60)
            except Exception as exc:
                print(type(exc).__name__, "|", type(exc.__cause__).__name__)
                print(str(exc.__cause__))
                print("-----")
"""


@pytest.mark.parametrize("executor", ["ProcessPoolExecutor", "GuildExecutor"])
def test_remote_frames_keep_file_line_and_source(tmp_path: object, executor: str) -> None:
    folder = str(tmp_path)
    with open(os.path.join(folder, "mod.py"), "w") as f:
        f.write(MOD)
    script = os.path.join(folder, "script.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, script, executor], capture_output=True, text=True, timeout=100, cwd=folder, env=env
    )
    assert proc.returncode == 0, proc.stderr
    inherited, lam = proc.stdout.split("-----\n")[:2]
    # The agent's traceback is the __cause__, as CPython's _RemoteTraceback.
    assert inherited.startswith("ValueError | ") and "RemoteTraceback" in inherited.splitlines()[0]
    assert textwrap.dedent(f"""\
          File "{os.path.join(folder, 'mod.py')}", line 4, in meth
            raise ValueError(f"bad {{x}} in {{cls.__name__}}")
        ValueError: bad 3 in Sub""") in inherited
    assert "<dynamic-code>" not in inherited
    if executor == "ProcessPoolExecutor":  # the stdlib cannot send a lambda at all
        assert lam.startswith("PicklingError | ")
        return
    assert "<dynamic-code>" not in lam
    assert lam.startswith("ZeroDivisionError | ")
    assert f'File "{script}", line 12, in <lambda>' in lam
    assert "for fn, arg in ((Sub.meth, 3), (lambda x: 1 // x, 0)):" in lam
