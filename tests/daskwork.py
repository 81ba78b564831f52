"""Task functions for the Dask backend tests (module level: they travel by reference)."""

from __future__ import annotations

import os
import threading

import faults

import guildcore


def spin_with_finally(marker: str) -> None:
    """Spin in Python code until interrupted; ``finally`` writes ``marker``."""
    try:
        n = 0
        while True:
            n += 1
    finally:
        with open(marker, "w") as f:
            f.write("finally ran")


def grow_forever(step: int) -> None:
    """Allocate ``step`` bytes at a time, touching each page, in Python code, until stopped."""
    held = []
    while True:
        block = bytearray(step)
        for i in range(0, step, 4096):
            block[i] = 1
        held.append(block)


def hold_from_another_thread(nbytes: int) -> None:
    """A thread of the task's allocates ``nbytes`` and holds them while the task blocks in C.

    The watchdog interrupts the task's own thread, which is blocked in a lock
    by the time the memory grows: nothing in Python to interrupt.
    """
    ready, never = threading.Event(), threading.Lock()
    never.acquire()

    def hold() -> None:
        ready.wait()
        block = bytearray(nbytes)  # zeroed: resident
        never.acquire()
        del block

    threading.Thread(target=hold, daemon=True).start()
    ready.set()
    never.acquire()


def first_signals_then_square(x: int, fifo: str, marker: str) -> int:
    """The first item to run (``marker`` does not exist yet) tells the test, through ``fifo``."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        faults.signal_started(fifo)
        faults.hang()  # until its worker is killed: the test kills exactly this one
    total = 0
    for i in range(20_000):  # a little work, so that the batch is still running when one dies
        total += i
    return x * x + (total - total)


def context_plus(key: str, x: int) -> object:
    return guildcore.context()[key] + x  # type: ignore[operator]


def worker_pid(_: object = None) -> int:
    return os.getpid()
