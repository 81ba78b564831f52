"""Helpers that run inside an agent to make it fail on purpose.

Each is a module-level function so it travels by reference. Tests wait for
``signal_started`` through a FIFO (a real event, no sleeping) before they
kill an agent.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import select
import time


def make_fifo(path: str) -> str:
    os.mkfifo(path)
    return path


def signal_started(fifo: str) -> None:
    """Tell the test this task is running (blocks until the test listens)."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def wait_started(fifo: str, timeout_s: float = 20.0) -> int:
    """Wait for ``signal_started``; returns the agent's pid."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + timeout_s
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"task did not signal start on {fifo} within {timeout_s} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 64)
                if not chunk:
                    # Writer not connected yet (EOF on a FIFO with no writer):
                    # reopen blocking-free and wait again.
                    os.close(fd)
                    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                    select.select([fd], [], [], min(0.01, max(remaining, 0)))
                data += chunk
        return int(data.strip())
    finally:
        os.close(fd)


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def parent_death_signal(_: object = None) -> int:
    """The signal this process gets when its parent dies (``prctl(PR_GET_PDEATHSIG)``; 0: none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    sig = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
    return sig.value


def pid(_: object = None) -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def hang(fifo: str | None = None) -> None:
    """Sleep until killed (interruptible: a soft timeout stops it)."""
    if fifo:
        signal_started(fifo)
    while True:
        time.sleep(3600)


def hang_holding_the_gil(fifo: str | None = None) -> None:
    """Loop forever inside one C call, the GIL held: no other thread of the agent runs again."""
    if fifo:
        signal_started(fifo)
    sum(itertools.repeat(1))


def hang_stubborn(fifo: str | None = None) -> None:
    """Ignore soft timeouts: only SIGTERM/SIGKILL stops this task."""
    if fifo:
        signal_started(fifo)
    while True:
        try:
            time.sleep(3600)
        except BaseException:
            pass


def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def finally_marker(path: str) -> None:
    """Sleeps past its timeout; writes ``path`` in ``finally`` (proves it ran)."""
    try:
        time.sleep(3600)
    finally:
        with open(path, "w") as f:
            f.write("finally ran")


def segfault() -> None:
    ctypes.string_at(0)


def exit_hard(code: int) -> None:
    os._exit(code)


def allocate(nbytes: int, hold: bool = False) -> int:
    """Allocate and touch ``nbytes`` of private memory; with ``hold``, keep it until killed."""
    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    while hold:
        time.sleep(3600)
    return len(block)


def record(path: str, value: object) -> object:
    """Append ``value`` to ``path`` (one line): the order tasks ran in."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


def unencodable_result() -> object:
    import threading

    return threading.Lock()


def gen_numbers(n: int) -> object:
    yield from range(n)


def block(started: str, release: str) -> str:
    """Signal start, then wait until the test calls ``release(release)``."""
    signal_started(started)
    fd = os.open(release, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return "released"


def release(fifo: str) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def pid_after(seconds: float, _item: object = None) -> int:
    """Sleep, then say which process ran this (the caller, for an inline run)."""
    time.sleep(seconds)
    return os.getpid()


def touch_then_pid(path: str, seconds: float) -> int:
    """Create ``path`` (opening an agent's gate), sleep, return the pid that ran this."""
    with open(path, "a"):
        pass
    time.sleep(seconds)
    return os.getpid()


def wait_for_path(path: str, timeout_s: float = 30.0) -> None:
    """An initializer that holds an agent before READY until ``path`` exists."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.002)


def hold_agent(name: str, path: str, timeout_s: float = 60.0) -> None:
    """An initializer that holds the agent called ``name`` before READY until ``path`` exists; others go on."""
    import multiprocessing

    if multiprocessing.current_process().name == name:
        wait_for_path(path, timeout_s)


def nap(seconds: float, value: object) -> object:
    """``value`` after ``seconds``; with 0, no system call at all: a tiny item."""
    if seconds:
        time.sleep(seconds)
    return value


class ExitOnLoad:
    """A value whose unpickling calls ``sys.exit(1)`` (in whoever decodes it)."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        import sys

        return (sys.exit, (1,))


def exit_on_load() -> ExitOnLoad:
    return ExitOnLoad()


def raise_system_exit(code: int = 3) -> None:
    raise SystemExit(code)


def gated_init(started: str, release_fifo: str) -> None:
    """An initializer that runs until the test releases it (a slow initializer)."""
    signal_started(started)
    fd = os.open(release_fifo, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)


def _this_agent() -> object:
    """The running agent's ``Agent`` object (found on the heap: tests only)."""
    import gc

    from guildcore.engine.agent import Agent

    agents = [o for o in gc.get_objects() if isinstance(o, Agent)]
    assert len(agents) == 1, agents
    return agents[0]


def send_raw(kind: str, fifo: str | None = None) -> None:
    """Write a hostile frame to the supervisor, then wait to be killed.

    ``kind``: ``short`` (a RESULT without its value), ``short-error`` (an
    ERROR with one field), ``wrong-type`` (an ERROR whose flags are text),
    ``garbage`` (bytes that are not msgpack), ``oversized`` (a length
    header of 2 GiB with no body), ``not-a-frame`` (a msgpack string),
    ``supervisor-kind`` (a SHUTDOWN frame, which only the supervisor sends).
    """
    import struct

    from guildcore import codec
    from guildcore.codec import Kind

    agent = _this_agent()
    task_id = agent.timer.task_id  # type: ignore[attr-defined]
    conn = agent.conn  # type: ignore[attr-defined]
    frames = {
        "short": lambda: codec.encode_frame(Kind.RESULT, task_id),
        "short-error": lambda: codec.encode_frame(Kind.ERROR, task_id, None),
        "short-ready": lambda: codec.encode_frame(Kind.READY, 0),
        "wrong-type": lambda: codec.encode_frame(Kind.ERROR, task_id, None, "tb", "T", "m", "not-flags"),
        "garbage": lambda: b"\xc1\xc1\xc1 definitely not msgpack",
        "not-a-frame": lambda: codec.encode("hello"),
        "supervisor-kind": lambda: codec.encode_frame(Kind.SHUTDOWN, 0),
        "initializer-error": lambda: codec.encode_frame(Kind.ERROR, 0, None),
    }
    if fifo:
        signal_started(fifo)
    with agent.write_lock:  # type: ignore[attr-defined]
        if kind == "oversized":
            os.write(conn.fileno(), struct.pack("!i", 2**31 - 1) + b"\0" * 16)
        else:
            conn.send_bytes(frames[kind]())
    while True:
        time.sleep(3600)


def die_on(i: int, poison: int, log: str) -> int:
    """Item ``poison`` kills its agent (SIGKILL) every time; the others log themselves."""
    if i == poison:
        os.kill(os.getpid(), 9)
    with open(log, "a") as f:
        f.write(f"{i}\n")
    return i


def die_first_times(i: int, marker: str, times: int) -> int:
    """Item 0 kills its agent the first ``times`` runs (``marker`` counts them)."""
    if i == 0:
        with open(marker, "a+") as f:
            f.seek(0)
            runs = len(f.read())
            f.write("x")
        if runs < times:
            os.kill(os.getpid(), 9)
    return i
