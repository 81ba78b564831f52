"""Chaos: /dev/shm full. Nothing hangs; big values fall back to the pipe or fail clearly.

The real thing: each script runs in its own mount namespace (``unshare -m``,
root, as here and in CI) over a 1 MB tmpfs on /dev/shm, so every segment
guildcore makes meets a full /dev/shm; the rest of the machine is not
touched. Before pages were reserved, a big result or a stream chunk written
into such a segment killed the agent with SIGBUS. A second set injects
ENOSPC at the seam (``shm.reserve``, ``os.posix_fallocate`` for the
context writer) in this process.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from guildcore import ContextError, Guild, shm
from guildcore.engine import ring

pytestmark = pytest.mark.timeout(180)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = """
import os, sys
from concurrent.futures import ProcessPoolExecutor
from guildcore import ContextError, Guild, GuildExecutor
from guildcore.context import writer

def big(n):
    return b"y" * n

def big_list(n):
    return list(range(n))

def chunks(n):
    for i in range(n):
        yield bytes([i]) * (512 * 1024)

def read_context(key):
    import guildcore
    return len(guildcore.context()[key])

if __name__ == "__main__":
    with Guild(max_agents=1, per_agent="400MB") as g:
        print("result bytes", len(g.submit(big, 20_000_000).result(timeout=60)) == 20_000_000, flush=True)
        print("result list", g.submit(big_list, 2_000_000).result(timeout=60)[-1] == 1_999_999, flush=True)
        got = list(g.stream(chunks, 12))
        print("stream", len(got) == 12 and all(c == bytes([i]) * (512 * 1024) for i, c in enumerate(got)), flush=True)
        try:
            g.share({"big": b"x" * 20_000_000})
        except ContextError as exc:
            print("share refused", "enlarge /dev/shm" in str(exc), flush=True)
        # Room seen by the check, then gone before the write: the reservation catches it.
        writer._check_free_space = lambda needed: None
        try:
            g.share({"big": b"x" * 20_000_000})
        except ContextError as exc:
            print("share raced", "could not provide it" in str(exc), flush=True)
        small = g.share({"small": b"s" * 1000})
        print("small context", g.submit(read_context, "small").result(timeout=60) == 1000, flush=True)
    with GuildExecutor(1) as ex:
        print("executor", len(ex.submit(big, 20_000_000).result(timeout=60)) == 20_000_000, flush=True)
    print("leftover", sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"guild_{os.getpid()}_")), flush=True)
"""


def _in_small_shm(tmp_path: Any, body: str, size: str = "1m") -> subprocess.CompletedProcess[str]:
    script = os.path.join(str(tmp_path), "script.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(body))
    command = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {sys.executable} {script}"
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=150, cwd=str(tmp_path), env=env
    )


def test_full_dev_shm_falls_back_to_the_pipe_or_fails_clearly(tmp_path: Any) -> None:
    proc = _in_small_shm(tmp_path, SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "result bytes True",
        "result list True",
        "stream True",
        "share refused True",
        "share raced True",
        "small context True",
        "executor True",
        "leftover []",
    ]
    assert "SIGBUS" not in proc.stderr and "Traceback" not in proc.stderr


def _enospc(*args: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _numbers(n: int) -> Any:
    for i in range(n):
        yield bytes([i]) * (256 * 1024)


def test_injected_enospc_for_a_stream_ring_uses_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shm, "reserve", _enospc)
    assert ring.Ring.create(os.getpid(), 1, 4, 1 << 20) is None  # the seam refuses: no ring
    with Guild(max_agents=1) as g:
        got = list(g.stream(_numbers, 6))
    assert got == [bytes([i]) * (256 * 1024) for i in range(6)]


def test_injected_enospc_while_sharing_is_a_context_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with Guild(max_agents=1) as g:
        monkeypatch.setattr(os, "posix_fallocate", _enospc)
        with pytest.raises(ContextError, match=r"could not provide it .*No space left on device"):
            g.share({"k": b"v" * 100_000})
        monkeypatch.undo()
        ref = g.share({"k": b"v" * 100_000})  # the next share works, nothing was left behind
        assert ref.size > 100_000
