"""Context segments across processes: generations and unlinking, attaching
in a child without the resource tracker, sweeping segments of dead owners,
and private memory staying flat while a child reads a 256 MB context."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from guildcore.context import (
    ContextRef,
    ContextRegistry,
    attach,
    detach_all,
    sweep_stale,
    write_context,
)
from guildcore.errors import ContextError

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")
CONTEXT_BYTES = 256 << 20  # 256 MB, the size the memory budget of the suite allows
RSS_ANON_GROWTH_LIMIT = 10 << 20  # reading the whole context may not add more private memory


def _exists(name: str) -> bool:
    return (SHM / name).exists()


def _python(code: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        **kwargs,
    )  # type: ignore[call-overload, no-any-return]


# -- registry ---------------------------------------------------------------


def test_superseded_generation_is_unlinked_once_released() -> None:
    with ContextRegistry() as registry:
        first = registry.share({"v": 1})
        ref1 = registry.acquire("task-1")
        assert ref1 == first.ref and registry.holders(1) == 1
        second = registry.share({"v": 2})
        assert registry.generation == 2 and registry.current is second
        assert _exists(first.name), "held by task-1"
        assert attach(ref1)["v"] == 1
        registry.release("task-1")
        assert not _exists(first.name) and first.unlinked
        assert registry.live_generations() == [2]
        assert registry.acquire("task-2") == second.ref
        registry.release("task-2")
        assert _exists(second.name), "the current generation stays"
        detach_all()
        with pytest.raises(
            ContextError, match=r"^context generation 1 \(segment guild_\d+_1_[0-9a-f]+\) is gone"
        ):
            attach(ref1)
    assert not _exists(second.name)


def test_unheld_generation_goes_at_the_next_share_and_close_unlinks_all() -> None:
    registry = ContextRegistry()
    assert registry.acquire("t") is None  # nothing shared yet
    first = registry.share({"v": 1})
    second = registry.share({"v": 2})
    assert not _exists(first.name) and _exists(second.name)
    registry.acquire("t")
    registry.close()
    registry.close()
    assert not _exists(second.name)
    registry.release("t")  # a task ending after close is harmless
    with pytest.raises(ContextError, match="registry is closed"):
        registry.share({"v": 3})


def test_failed_share_keeps_the_current_generation() -> None:
    with ContextRegistry() as registry:
        first = registry.share({"v": 1})
        with pytest.raises(ContextError, match="context value for key 'bad'"):
            registry.share({"bad": lambda: 0})
        assert registry.current is first and _exists(first.name)


def test_only_the_writing_process_unlinks() -> None:
    handle = write_context({"v": 1}, generation=1)
    handle.owner_pid = handle.owner_pid + 1  # as in a forked agent holding a copy
    handle.unlink()
    assert _exists(handle.name)
    handle.owner_pid = os.getpid()
    handle.unlink()
    assert not _exists(handle.name)


# -- attaching in a child ---------------------------------------------------

_CHILD_ATTACH = """
from guildcore.context import ContextRef, attach, detach_all
view = attach(ContextRef({name!r}, 1, {size}))
print(view["greeting"], bytes(view["blob"][:3]))
detach_all()
"""

_CHILD_STDLIB_ATTACH = """
from multiprocessing.shared_memory import SharedMemory
shm = SharedMemory(name={name!r})
shm.close()
"""


def test_child_attach_does_not_register_with_the_resource_tracker() -> None:
    handle = write_context({"greeting": "hello", "blob": b"abcdef"}, generation=1)
    try:
        # A separate interpreter has its own resource tracker, which would
        # unlink a registered segment when the child exits.
        out = _python(_CHILD_ATTACH.format(name=handle.name, size=handle.size))
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello b'abc'\n"
        assert out.stderr == ""
        assert _exists(handle.name)
    finally:
        handle.unlink()


def test_stdlib_attach_would_have_unlinked_the_segment() -> None:
    """The hazard the reader avoids, shown with the stdlib (so the test above means something)."""
    handle = write_context({"greeting": "hello"}, generation=1)
    try:
        out = _python(_CHILD_STDLIB_ATTACH.format(name=handle.name))
        assert "leaked shared_memory" in out.stderr
        assert not _exists(handle.name)
    finally:
        handle.unlink()  # already gone: only the tracker record is dropped


def _spawned_reader(ref: ContextRef, conn: Connection) -> None:
    view = attach(ref)
    conn.send((view["greeting"], bytes(view["blob"])))
    detach_all()


def test_spawned_agent_attaches_and_leaves_the_segment() -> None:
    handle = write_context({"greeting": "hi", "blob": b"xyz"}, generation=1)
    try:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_spawned_reader, args=(handle.ref, child))
        proc.start()
        assert parent.recv() == ("hi", b"xyz")
        proc.join(30)
        assert proc.exitcode == 0
        assert _exists(handle.name)
    finally:
        handle.unlink()


# -- sweeping ---------------------------------------------------------------

_CHILD_OWNER = """
import os, sys
import _posixshmem
name = f"guild_{os.getpid()}_1_0badc0de"
fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
os.ftruncate(fd, 4096)
print(name, flush=True)
sys.stdin.read()
"""


def _start_owner() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_OWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()  # the child signals: segment created
    return proc, name


def test_sweep_removes_segments_of_dead_owners_only() -> None:
    dead, dead_name = _start_owner()
    live, live_name = _start_owner()
    mine = write_context({"v": 1}, generation=1)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        assert dead.wait(10) == -signal.SIGKILL
        assert _exists(dead_name)
        removed = sweep_stale()
        assert dead_name in removed and not _exists(dead_name)
        assert _exists(live_name) and _exists(mine.name)
    finally:
        mine.unlink()
        live.communicate("", timeout=10)  # closing stdin ends it
        if dead.stdout is not None:
            dead.stdout.close()
        if dead.stdin is not None:
            dead.stdin.close()
    assert live_name in sweep_stale()


# -- memory -----------------------------------------------------------------


def _rss_anon_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def _read_everything(ref: ContextRef, conn: Connection) -> None:
    import hashlib

    before = _rss_anon_bytes()
    view = attach(ref)
    total = int(view["array"].sum())  # numpy reduction: no temporary copy
    blob = view["blob"]
    digest = hashlib.blake2b()
    for start in range(0, len(blob), 1 << 20):
        digest.update(blob[start : start + (1 << 20)])
    after = _rss_anon_bytes()
    conn.send((before, after, total, digest.hexdigest()))
    del blob
    detach_all()


@pytest.mark.slow
def test_reading_a_256mb_context_leaves_private_memory_flat() -> None:
    array = np.ones(CONTEXT_BYTES // 2 // 8, dtype=np.float64)  # 128 MB
    blob = b"\x07" * (CONTEXT_BYTES // 2)  # 128 MB
    import hashlib

    expected = hashlib.blake2b(blob).hexdigest()
    handle = write_context({"array": array, "blob": blob}, generation=1)
    del array, blob
    try:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_read_everything, args=(handle.ref, child))
        proc.start()
        before, after, total, digest = parent.recv()
        proc.join(60)
        assert proc.exitcode == 0
        assert total == CONTEXT_BYTES // 2 // 8 and digest == expected
        assert after - before < RSS_ANON_GROWTH_LIMIT, (
            f"RssAnon grew by {(after - before) / 1e6:.1f} MB"
        )
    finally:
        handle.unlink()
