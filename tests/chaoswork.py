"""Work and weapons for the chaos tests (module level: they travel by reference).

``work`` costs some tens of microseconds of CPU per item, so a 100,000-item
map runs long enough for a killer to strike many times, and its result is
a checksum of the item that nothing but a correct computation produces.
``Killer`` SIGKILLs random busy agents of a Guild from a thread of the test.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from typing import Any

ROUNDS = 120  # ~20-40 µs per item on this kind of host


def work(x: int) -> int:
    h = x
    for _ in range(ROUNDS):
        h = (h * 1_000_003 + 7) % 2_147_483_647
    return h


def work_chunk(items: list[int]) -> list[int]:
    return [work(x) for x in items]


def logged(x: int, control: str) -> int:
    """``work(x)`` plus the task context's salt; logs ``x`` in ``control/calls.log``.

    When ``control/signal_at`` names ``x``, tells the test so through the
    FIFO ``control/halfway``. Its arguments stay the same from run to run,
    so runs share their cache keys.
    """
    from faults import signal_started

    import guildcore

    with open(os.path.join(control, "calls.log"), "a") as f:
        f.write(f"{x}\n")
    try:
        with open(os.path.join(control, "signal_at")) as f:
            if int(f.read()) == x:
                signal_started(os.path.join(control, "halfway"))
    except FileNotFoundError:
        pass
    return work(x) + int(guildcore.context()["salt"])


def calls(control: str) -> list[int]:
    try:
        with open(os.path.join(control, "calls.log")) as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


class Killer:
    """A thread that SIGKILLs a random busy agent of ``guild`` every so often, until stopped.

    Only busy agents (ready, holding a task): an agent killed before it is
    ready counts towards the pool's start failures, which is another test.
    """

    def __init__(self, guild: Any, *, every_s: tuple[float, float] = (0.05, 0.2), most: int = 10, seed: int = 1) -> None:
        self.guild = guild
        self.every_s = every_s
        self.most = most
        self.kills: list[int] = []
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while len(self.kills) < self.most and not self._stop.wait(self._random.uniform(*self.every_s)):
            try:
                agents = self.guild.stats()["agents"]
            except Exception:
                return  # the Guild is closing
            busy = [a["pid"] for a in agents if a["state"] == "BUSY" and a["held"] and a["pid"]]
            if not busy:
                continue
            pid = self._random.choice(busy)
            self.kills.append(pid)  # before the kill: its failure may be seen at once
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                self.kills.remove(pid)
