"""Agents start preloaded even when the interpreter's forkserver was started by someone else.

multiprocessing preloads modules into its one forkserver only when that
server first starts. A program whose ProcessPoolExecutor started it first
would leave guildcore's agents importing the agent module one by one; they
start from guildcore's own server instead (``engine.ownserver``). Run in a
fresh interpreter: the suite's own forkserver is whatever earlier tests made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)

SCRIPT = """
import json, multiprocessing, os, sys, threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver

import faults
from guildcore import Guild
from guildcore.engine import ownserver

def agent_facts():
    return [os.getppid(), "guildcore.engine.agent" in sys.modules]

if __name__ == "__main__":
    out = {}
    if sys.argv[1] == "after_executor":
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as ex:
            out["executor"] = ex.submit(faults.inc, 1).result(timeout=30)
    with Guild(max_agents=2, start_method="forkserver", caching={"enabled": False}) as g:
        out["results"] = g.map(faults.inc, list(range(8)), chunksize=1)
        out["parent"], out["agent_imported"] = g.submit(agent_facts).result(timeout=30)
    out["shared"] = forkserver._forkserver._forkserver_pid
    out["own"] = ownserver.server_pid()
    out["own_preload"] = list(ownserver._server._preload_modules) if ownserver._server else []
    out["shared_preload"] = list(forkserver._forkserver._preload_modules or [])
    print(json.dumps(out))
"""


def _run(tmp_path: Path, mode: str) -> dict[str, object]:
    (tmp_path / "job.py").write_text(f"import sys\nsys.path[:0] = [{TESTS!r}]\n" + textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "job.py"), mode], capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_agents_start_from_guildcores_own_server_after_an_executor_started_the_interpreters(tmp_path: Path) -> None:
    out = _run(tmp_path, "after_executor")
    assert out["executor"] == 2
    assert out["results"] == [x + 1 for x in range(8)]
    # The interpreter's server holds nothing of guildcore: agents are children of guildcore's own.
    assert not any(m.startswith("guildcore") for m in out["shared_preload"])  # type: ignore[union-attr]
    assert out["own"] is not None and out["parent"] == out["own"] != out["shared"]
    assert "guildcore.engine.agent" in out["own_preload"]  # type: ignore[operator]


def test_a_guild_first_uses_the_interpreters_server_with_guildcore_preloaded(tmp_path: Path) -> None:
    out = _run(tmp_path, "guild_first")
    assert out["results"] == [x + 1 for x in range(8)]
    assert out["own"] is None and out["parent"] == out["shared"]
    assert "guildcore.engine.agent" in out["shared_preload"]  # type: ignore[operator]
