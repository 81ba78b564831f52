"""A long run of everything at once, with agents killed along the way: run by hand.

Usage::

    python tools/soak.py                   30 minutes (the release check)
    python tools/soak.py --minutes 2       a short look
    python tools/soak.py --agents 4 --seed 7

Each round, on one Guild that lives for the whole run: a map of 20,000
items with ``retries=3`` while a killer SIGKILLs random busy agents; a few
thousand small submits; a stream; a cached map (half hits); a task that
goes over its memory limit and one that runs past its timeout (both must
fail, with their own errors, and nothing else). Every result is checked.

The report, each minute and at the end: rounds, tasks and items done,
kills survived, failures expected and unexpected, the high-water marks of
private memory of the supervisor and of any agent, and what the supervisor
holds at the end against after its first round (threads, file descriptors,
/dev/shm segments). The exit code is 1 if any result was wrong, any unexpected
failure happened or something leaked.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from typing import Any

from guildcore import Guild, MemoryLimitExceeded, TaskTimeout
from guildcore.engine import limits
from guildcore.errors import format_bytes

ROUNDS = 120  # work(): ~20-40 µs per item


def work(x: int) -> int:
    h = x
    for _ in range(ROUNDS):
        h = (h * 1_000_003 + 7) % 2_147_483_647
    return h


def numbers(n: int) -> Any:
    yield from range(n)


def hog(nbytes: int) -> int:
    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    while True:
        time.sleep(3600)


def stubborn() -> None:
    while True:
        try:
            time.sleep(3600)
        except BaseException:
            pass


class Killer:
    """SIGKILLs a random busy agent every ``every_s`` while armed."""

    def __init__(self, guild: Guild, rng: random.Random, every_s: tuple[float, float]) -> None:
        self.guild, self.rng, self.every_s = guild, rng, every_s
        self.kills = 0
        self.armed = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-killer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.rng.uniform(*self.every_s)):
            if not self.armed.is_set():
                continue
            try:
                busy = [a["pid"] for a in self.guild.stats()["agents"] if a["state"] == "BUSY" and a["held"]]
            except Exception:
                return
            if busy:
                try:
                    os.kill(self.rng.choice(busy), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass


class Tally:
    def __init__(self) -> None:
        self.rounds = 0
        self.items = 0
        self.expected_failures = 0
        self.wrong: list[str] = []
        self.peak_supervisor = 0
        self.peak_agent = 0

    def sample(self, guild: Guild) -> None:
        mine = limits.read_private_bytes(os.getpid()) or 0
        self.peak_supervisor = max(self.peak_supervisor, mine)
        stats = guild.stats()
        peaks = list((stats.get("peak_private_bytes") or {}).values())
        peaks += [a["peak_private_bytes"] or 0 for a in stats["agents"]]
        self.peak_agent = max([self.peak_agent, *peaks])


def one_round(g: Guild, rng: random.Random, killer: Killer, tally: Tally) -> None:
    n = 20_000
    killer.armed.set()
    try:
        out = g.map(work, range(n), retries=3)
    finally:
        killer.armed.clear()
    if out != [work(x) for x in range(n)]:
        tally.wrong.append(f"round {tally.rounds}: the map under the killer returned wrong results")
    tally.items += n
    futures = [g.submit(work, x) for x in range(3000)]
    if [f.result(timeout=120) for f in futures] != [work(x) for x in range(3000)]:
        tally.wrong.append(f"round {tally.rounds}: submits returned wrong results")
    tally.items += 3000
    if list(g.stream(numbers, 500)) != list(range(500)):
        tally.wrong.append(f"round {tally.rounds}: the stream returned wrong values")
    base = rng.randrange(10**6)
    half = list(range(base, base + 2000))
    g.map(work, half[:1000], cache=True)
    if g.map(work, half, cache=True) != [work(x) for x in half]:
        tally.wrong.append(f"round {tally.rounds}: the cached map returned wrong results")
    tally.items += 3000
    for fn, args, kw, err in ((hog, (300 * 2**20,), {"timeout": None}, MemoryLimitExceeded), (stubborn, (), {"timeout": 0.2}, TaskTimeout)):
        try:
            g.submit(fn, *args, **kw).result(timeout=120)
            tally.wrong.append(f"round {tally.rounds}: {fn.__name__} did not fail")
        except err:
            tally.expected_failures += 1
    tally.rounds += 1


def _held() -> tuple[int, int, int]:
    threads = sum(1 for t in threading.enumerate() if t.name.startswith("guild"))
    fds = len(os.listdir("/proc/self/fd"))
    segments = sum(1 for s in os.listdir("/dev/shm") if s.startswith(f"guild_{os.getpid()}_"))
    return threads, fds, segments


def report(tally: Tally, killer: Killer, started: float, stats: dict[str, Any] | None) -> None:
    minutes = (time.monotonic() - started) / 60
    counters = (stats or {}).get("counters", {})
    print(
        f"[{minutes:5.1f} min] rounds {tally.rounds}, tasks done {counters.get('done', 0):,} "
        f"(items checked {tally.items:,}), kills {killer.kills} (agents died {counters.get('agents_died', '?')}, "
        f"retried {counters.get('retried', '?')}, split {counters.get('split', '?')}), "
        f"expected failures {tally.expected_failures}, wrong {len(tally.wrong)}; peak private: "
        f"supervisor {format_bytes(tally.peak_supervisor)}, agent {format_bytes(tally.peak_agent)}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--agents", type=int, default=2, help="max_agents (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the killer and the inputs")
    args = parser.parse_args(argv)
    # Tasks slowed by the killer set off the slow-task alerts by design: keep the report readable.
    logging.getLogger("guildcore.alerts").setLevel(logging.ERROR)
    rng = random.Random(args.seed)
    tally = Tally()
    started = time.monotonic()
    end = started + args.minutes * 60
    before: tuple[int, int, int] | None = None
    with tempfile.TemporaryDirectory(prefix="guild-soak-") as tmp:
        cache_dir = os.path.join(tmp, "cache")
        with Guild(max_agents=args.agents, min_agents=args.agents, per_agent="100MB",
                   caching={"path": cache_dir}, limits={"timeout_grace": 0.2}) as g:  # fmt: skip
            killer = Killer(g, random.Random(args.seed + 1), (0.05, 0.3))
            next_report = started + 60
            try:
                while time.monotonic() < end:
                    one_round(g, rng, killer, tally)
                    tally.sample(g)
                    if before is None:  # after one round: the interpreter's own helpers (forkserver, tracker) are up
                        before = _held()
                    if time.monotonic() >= next_report and time.monotonic() < end:
                        report(tally, killer, started, g.stats())
                        next_report += 60
            except Exception as exc:  # an unexpected failure: reported, the run ends
                tally.wrong.append(f"round {tally.rounds}: {type(exc).__name__}: {exc}")
            finally:
                killer.stop.set()
                killer.thread.join()
            stats = g.stats()
        peak_mid = tally.peak_supervisor
    after = _held()
    report(tally, killer, started, stats)
    print(f"supervisor private memory at the end {format_bytes(limits.read_private_bytes(os.getpid()))} "
          f"(peak during the run {format_bytes(peak_mid)})")  # fmt: skip
    start = before or after
    leaks = [f"{what}: {a} after the first round, {b} at the end"
             for what, a, b in zip(("guild threads", "fds", "segments"), start, after, strict=True) if b > a]  # fmt: skip
    for line in tally.wrong + leaks:
        print("PROBLEM:", line)
    return 1 if tally.wrong or leaks else 0


if __name__ == "__main__":
    sys.exit(main())
