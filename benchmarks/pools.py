"""The pools the engine suites compare, behind one small interface.

Each system is a ``System``: ``start()`` makes its pool (or executor) with
two agents or workers, ``map(fn, items, chunksize)`` returns the list of
results in order (``chunksize=None`` means the system's own default), and
``stop()`` shuts it down. The suites time these; nothing here times.

Also here: ``cold_program``, the source of a fresh-interpreter script that
imports one system, starts it, runs one map and prints the elapsed time, so
the start-up and cold-total measurements start every system the same way;
and ``wait_session_gone``, which the suites that launch programs call after
each, so that no launch shares the cores with the last one's helpers.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKERS = 2

# Systems whose default map sends one item per message (chunksize=1): at
# 200,000 tiny items they take tens of seconds, so suites cap the item count
# for them and extrapolate.
ONE_BY_ONE_DEFAULT = frozenset({"ProcessPoolExecutor", "loky", "guildcore GuildExecutor"})


@dataclass
class System:
    name: str
    module: str  # what must import for the system to run
    make: Callable[[], Any]
    run: Callable[[Any, Callable[..., Any], list[Any], int | None], list[Any]]
    close: Callable[[Any], None]
    pool: Any = field(default=None, repr=False)

    def start(self) -> None:
        self.pool = self.make()

    def map(self, fn: Callable[..., Any], items: list[Any], chunksize: int | None = None) -> list[Any]:
        return self.run(self.pool, fn, items, chunksize)

    def stop(self) -> None:
        if self.pool is not None:
            self.close(self.pool)
            self.pool = None


def _mp_pool() -> Any:
    return multiprocessing.Pool(WORKERS)


def _mp_map(pool: Any, fn: Callable[..., Any], items: list[Any], cs: int | None) -> list[Any]:
    return pool.map(fn, items) if cs is None else pool.map(fn, items, chunksize=cs)


def _mp_close(pool: Any) -> None:
    pool.close()
    pool.join()


def _ppe() -> Any:
    return concurrent.futures.ProcessPoolExecutor(WORKERS)


def _executor_map(ex: Any, fn: Callable[..., Any], items: list[Any], cs: int | None) -> list[Any]:
    return list(ex.map(fn, items) if cs is None else ex.map(fn, items, chunksize=cs))


def _executor_close(ex: Any) -> None:
    ex.shutdown(wait=True)


def _joblib() -> Any:
    import joblib

    # One Parallel object, entered once: its workers stay up between calls,
    # as a warm pool of the other systems does.
    par = joblib.Parallel(n_jobs=WORKERS)
    par.__enter__()
    return par


def _joblib_map(par: Any, fn: Callable[..., Any], items: list[Any], cs: int | None) -> list[Any]:
    import joblib

    par.batch_size = "auto" if cs is None else cs
    out: list[Any] = par(joblib.delayed(fn)(x) for x in items)
    return out


def _joblib_close(par: Any) -> None:
    par.__exit__(None, None, None)


def _loky() -> Any:
    import loky

    return loky.get_reusable_executor(max_workers=WORKERS, reuse=True)


def _mpire() -> Any:
    import mpire

    # keep_alive: without it mpire starts and joins its workers on every
    # map, which is no warm pool. Its workers fork (mpire's default), so the
    # suites start mpire first, before other pools have threads, and warm it
    # here: a fork from a process with live threads can deadlock.
    pool = mpire.WorkerPool(n_jobs=WORKERS, keep_alive=True)
    pool.__enter__()
    pool.map(abs, [0] * WORKERS * 4, chunk_size=1)
    return pool


def _mpire_map(pool: Any, fn: Callable[..., Any], items: list[Any], cs: int | None) -> list[Any]:
    out: list[Any] = pool.map(fn, items) if cs is None else pool.map(fn, items, chunk_size=cs)
    return out


def _mpire_close(pool: Any) -> None:
    pool.__exit__(None, None, None)


def _guild() -> Any:
    from guildcore import Guild

    return Guild(max_agents=WORKERS)


def _guild_map(g: Any, fn: Callable[..., Any], items: list[Any], cs: int | None) -> list[Any]:
    out: list[Any] = g.map(fn, items) if cs is None else g.map(fn, items, chunksize=cs)
    return out


def _guild_close(g: Any) -> None:
    g.shutdown()


def _guild_executor() -> Any:
    from guildcore import GuildExecutor

    return GuildExecutor(max_workers=WORKERS)


def systems() -> list[System]:
    """Every pool system, in start order: the forking ones first (see ``_mpire``)."""
    return [
        System("mpire", "mpire", _mpire, _mpire_map, _mpire_close),
        System("multiprocessing.Pool", "multiprocessing", _mp_pool, _mp_map, _mp_close),
        System("ProcessPoolExecutor", "concurrent.futures", _ppe, _executor_map, _executor_close),
        System("joblib", "joblib", _joblib, _joblib_map, _joblib_close),
        System("loky", "loky", _loky, _executor_map, _executor_close),
        System("guildcore Guild", "guildcore", _guild, _guild_map, _guild_close),
        System("guildcore GuildExecutor", "guildcore", _guild_executor, _executor_map, _executor_close),
    ]


# Fresh-interpreter programs: {setup} imports and starts the system into
# ``pool``, {call} runs fn over items, {stop} shuts down. The program prints
# the seconds from just before the import of the system to the first
# result, or to the end of the map, then what the caller asked for.
_PROGRAMS: dict[str, tuple[str, str, str]] = {
    "multiprocessing.Pool": (
        "import multiprocessing\npool = multiprocessing.Pool({workers})",
        "pool.map(fn, items{cs})",
        "pool.close(); pool.join()",
    ),
    "ProcessPoolExecutor": (
        "import concurrent.futures\npool = concurrent.futures.ProcessPoolExecutor({workers})",
        "list(pool.map(fn, items{cs}))",
        "pool.shutdown()",
    ),
    "joblib": (
        "import joblib\npool = joblib.Parallel(n_jobs={workers}{batch})",
        "pool(joblib.delayed(fn)(x) for x in items)",
        "",
    ),
    "loky": (
        "import loky\npool = loky.get_reusable_executor(max_workers={workers})",
        "list(pool.map(fn, items{cs}))",
        "pool.shutdown()",
    ),
    "mpire": (
        "import mpire\npool = mpire.WorkerPool(n_jobs={workers}, keep_alive=True); pool.__enter__()",
        "pool.map(fn, items{mcs})",
        "pool.__exit__(None, None, None)",
    ),
    "guildcore Guild": (
        "import guildcore\npool = guildcore.Guild(max_agents={workers})",
        "pool.map(fn, items{cs})",
        "pool.shutdown()",
    ),
    "guildcore GuildExecutor": (
        "import guildcore\npool = guildcore.GuildExecutor(max_workers={workers})",
        "list(pool.map(fn, items{cs}))",
        "pool.shutdown()",
    ),
}


def wait_session_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until every process of the session ``pid`` leads has exited (then SIGKILL what is left).

    For a program launched with ``start_new_session=True`` whose own process
    has been waited for. A pool's helpers (a forkserver, workers, a
    template, a resource tracker) exit after their parent, on their own
    time; a sample launched while they do pays for their exit on the same
    cores. ``/proc`` is scanned for processes of the session: they may have
    been re-parented to init.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = _session_members(pid)
        if not left:
            return
        if time.monotonic() > deadline:
            for member in left:
                try:
                    os.kill(member, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout_s
        time.sleep(0.002)


def _session_members(sid: int) -> list[int]:
    """Live processes (zombies excluded) of session ``sid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command: state, ppid, pgrp, session, ...
        if fields[0] != b"Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def compile_bytecode() -> str:
    """Compile guildcore's and the suites' ``.pyc`` files; return a note saying so.

    A fresh interpreter otherwise compiles every guildcore module from
    source when ``PYTHONDONTWRITEBYTECODE`` is set (as on the shared dev
    host), while the peers, installed by pip, have their bytecode: ~120 ms
    of compile time that no installed guildcore pays.
    """
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("guildcore", "benchmarks"):
        compileall.compile_dir(str(root / package), quiet=1)
    return "guildcore's bytecode compiled before the cold runs, as pip does on install"


def cold_program(system: str, fn: str, items: str, chunksize: int | None, tail: str = "") -> str:
    """A script timing import + start + one map of ``fn`` over ``items`` in a fresh interpreter.

    ``fn`` and ``items`` are Python expressions (``workloads.inc``,
    ``list(range(200000))``); ``tail`` runs after the timing, before stop,
    with ``pool`` and ``elapsed`` in scope (the start-up suite reads memory there).
    """
    setup, call, stop = _PROGRAMS[system]
    cs = "" if chunksize is None else f", chunksize={chunksize}"
    fields = {
        "workers": WORKERS,
        "cs": cs,
        "mcs": "" if chunksize is None else f", chunk_size={chunksize}",
        "batch": "" if chunksize is None else f", batch_size={chunksize}",
    }
    lines = [
        "import time, sys",
        "from benchmarks import workloads",
        f"fn = {fn}",
        f"items = {items}",
        "t0 = time.perf_counter()",
        setup.format(**fields),
        "result = " + call.format(**fields),
        "elapsed = time.perf_counter() - t0",
        "print(repr(elapsed))",
        tail,
        "sys.stdout.flush()",
        stop.format(**fields),
    ]
    return "\n".join(line for line in lines if line) + "\n"
