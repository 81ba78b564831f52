"""Step functions for the process tests (module-level: agents import them by name).

The workflow over a generated codebase: ``index`` lists the files, then
``lint`` and ``rewrite`` run per file (independent steps), then ``report``
sums both up. ``lint`` and ``rewrite`` meet once through a FIFO when given
one: the lint of ``sync.py`` waits until the rewrite of ``sync.py`` has
started, so the two steps provably run at the same time.
"""

from __future__ import annotations

import os
from typing import Any

import xxhash

from guildcore.demo.refactor import refactor_path
from tests.faults import signal_started, wait_started

SYNC_FILE = "sync.py"


def step_list(n: int) -> list[int]:
    return list(range(n))


def step_square(x: int) -> int:
    return x * x


def step_total(xs: list[int]) -> int:
    return sum(xs)


def index(root: str) -> list[tuple[str, str, str]]:
    """Every .py file under ``root`` as (root, rel, digest), sorted."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    digest = xxhash.xxh3_64_hexdigest(f.read())
                out.append((root, os.path.relpath(path, root), digest))
    return out


def lint(item: tuple[str, str, str], fifo: str | None = None) -> tuple[str, int]:
    """(rel, lines over 60 characters)."""
    root, rel, _digest = item
    if fifo and rel == SYNC_FILE:
        wait_started(fifo)  # until rewrite has begun on its own agent
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return rel, sum(1 for line in f if len(line.rstrip("\n")) > 60)


def lint_tabs(item: tuple[str, str, str], fifo: str | None = None) -> tuple[str, int]:
    """A changed lint: counts lines with a tab instead."""
    root, rel, _digest = item
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return rel, sum(1 for line in f if "\t" in line)


def rewrite(item: tuple[str, str, str], old: str, new: str, fifo: str | None = None) -> tuple[str, str, int]:
    root, rel, _digest = item
    if fifo and rel == SYNC_FILE:
        signal_started(fifo)  # blocks until lint is listening
    status, digest, count = refactor_path(root, rel, old, new, None)
    return status, digest, count


def report(lints: list[tuple[str, int]], rewrites: list[tuple[str, str, int]]) -> dict[str, Any]:
    return {
        "files": len(lints),
        "long_lines": sum(n for _rel, n in lints),
        "changed": sum(1 for status, _d, _n in rewrites if status == "changed"),
        "renamed": sum(n for _s, _d, n in rewrites),
    }


def broken_lint(item: tuple[str, str, str], fifo: str | None = None) -> tuple[str, int]:
    raise ValueError(f"cannot lint {item[1]}")


def calls_counted(item: int, log: str) -> int:
    """Appends one line per call to ``log`` (shows how many calls really ran)."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{item}\n")
    return item * 10


def size_of(data: bytes, x: int) -> int:
    """A map step reading a big input: its type survives the shared-memory path."""
    assert type(data) is bytes, type(data)
    return len(data) + x


def make_blob(n: int) -> bytes:
    return b"x" * n


def pid_of(_: object = None) -> int:
    return os.getpid()


def modules_loaded(names: list[str]) -> dict[str, bool]:
    import sys

    return {n: n in sys.modules for n in names}


def wait_for_file(path: str, timeout_s: float = 30.0) -> None:
    """Block until ``path`` exists (a deadline, not a guess at how long something takes)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.005)


def fail_now(message: str) -> None:
    raise ValueError(message)


def gate(flag: str) -> str:
    """Returns once the test has created ``flag``."""
    wait_for_file(flag)
    return "opened"


def after(value: str) -> str:
    return value + " and after"


def held(item: int, started: str, release: str, log: str) -> int:
    """Item 0 tells the test it runs, then waits for its release; every call is logged."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{item}\n")
    if item == 0:
        signal_started(started)
        wait_started(release)
    return item


def _squares() -> Any:
    from guildcore import Process

    p = Process("py-squares", inputs={"n": 10})
    p.step("numbers", inputs={"n": "n"})(step_list)
    p.step("squares", map="numbers")(step_square)
    p.step("total", inputs={"xs": "squares"})(step_total)
    return p


SQUARES = _squares()  # a Process defined in Python, for `guild run tests.procwork:SQUARES`
