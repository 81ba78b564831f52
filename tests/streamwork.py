"""Generators and helpers that run inside an agent for the streaming tests.

Module-level so they travel by reference. Progress is reported through FIFOs
(one line per event) that the test reads with deadlines: no sleeping.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

from faults import signal_started


class LineReader:
    """The test's end of a FIFO an agent writes lines to; reads with deadlines."""

    def __init__(self, path: str) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._buf = b""

    def line(self, timeout_s: float = 20.0) -> str | None:
        """The next line, or None if none came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                data = os.read(self.fd, 4096)
                if not data:  # no writer yet, or it closed: wait for more on a fresh select
                    select.select([], [], [], min(0.01, remaining))
                self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        os.close(self.fd)


def _writer(path: str) -> int:
    return os.open(path, os.O_WRONLY)


def first_then_wait(release: str) -> Iterator[str]:
    """Yield 'first', then block until the test writes to ``release``, then 'second'."""
    yield "first"
    fd = os.open(release, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    yield "second"


def counted(progress: str, n: int, size: int = 0) -> Iterator[object]:
    """Write 'produced i' to ``progress`` before yielding item i (bytes of ``size`` if given)."""
    fd = _writer(progress)
    try:
        for i in range(n):
            os.write(fd, f"produced {i}\n".encode())
            yield bytes([i % 256]) * size if size else i
    finally:
        os.write(fd, b"finally\n")
        os.close(fd)


def forever_with_finally(marker: str) -> Iterator[int]:
    """Yield its pid, then 0, 1, 2, ... forever; ``finally`` writes ``marker``."""
    try:
        yield os.getpid()
        i = 0
        while True:
            yield i
            i += 1
    finally:
        with open(marker, "w") as f:
            f.write("finally ran")


def fails_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"boom after {n}")


def unencodable_at(n: int) -> Iterator[object]:
    yield from range(n)
    yield threading.Lock()


def pid_then_hang(size: int, started: str) -> Iterator[object]:
    """Yield the pid, then a chunk of ``size`` bytes (through the ring if big), then hang."""
    yield os.getpid()
    yield b"\1" * size
    signal_started(started)
    while True:
        time.sleep(3600)


def one_then_spin(n_first: int) -> Iterator[int]:
    """Yield ``n_first`` items, then compute forever (a production timeout)."""
    yield from range(n_first)
    while True:
        time.sleep(3600)


def mixed_chunks(chunk_size: int) -> Iterator[object]:
    """Small values and big buffers of each kind, in and beyond the ring's slot size."""
    yield 1
    yield b"small"
    yield b"a" * (100 * 1024)
    yield bytearray(b"b" * chunk_size)
    yield memoryview(b"c" * (chunk_size // 2))
    yield b"d" * (chunk_size + 1)  # too big for a slot: the pipe
    yield {"k": (1, 2)}
    yield bytes(range(256)) * 4096


def big_bytes(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


def big_bytearray(n: int) -> bytearray:
    return bytearray(b"z" * n)


def big_list(n: int) -> list[object]:
    return [(i, "x" * 100) for i in range(n)]


def leave_result_segment(owner_pid: int, task_id: int, started: str) -> None:
    """Create the big-result segment of ``task_id``, as an agent about to reply would, then hang."""
    from guildcore.engine import shmbuf

    fields = shmbuf.write_result(owner_pid, task_id, b"r" * 1_000_000, None)
    assert fields is not None
    signal_started(started)
    while True:
        time.sleep(3600)


def slow_item(release: str | None, value: int) -> int:
    """Return ``value``; if ``release`` is given, first wait for the test to write to it."""
    if release:
        fd = os.open(release, os.O_RDONLY)
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
    return value


def arrays(chunk_size: int) -> Iterator[object]:
    """numpy chunks of several dtypes and layouts, in and beyond a slot."""
    import numpy as np

    yield np.arange(1000, dtype=np.float64).reshape(10, 100)
    yield np.arange(chunk_size // 8, dtype="<i8")
    yield np.arange(200, dtype=np.int32).reshape(10, 20).T  # not C-contiguous
    yield np.array(3.5)  # 0-d
    yield np.zeros(chunk_size // 4 + 1, dtype=np.float64)  # too big for a slot
    yield np.array(["a", None], dtype=object)  # no raw buffer: encoded


def numbered_blocks(n: int, size: int) -> Iterator[bytes]:
    """``n`` blocks of ``size`` bytes, block ``i`` filled with ``i % 256``."""
    for i in range(n):
        yield bytes([i % 256]) * size
