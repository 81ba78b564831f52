"""Suite-wide guards: after every test, nothing of ours is left running.

A test fails if it leaves behind a child process (other than the
interpreter-wide forkserver and resource tracker that multiprocessing keeps
for its lifetime, and guildcore's own forkserver), a /dev/shm segment owned
by this process, or a thread.
Leftovers get a short deadline to go away, since joins and reaps are
asynchronous; the wait is on their state, never a fixed sleep.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

SHM_DIR = "/dev/shm"


def pytest_configure(config: pytest.Config) -> None:
    """Dask's scratch space (its lock files and spills) in a folder of this run's, removed at the end.

    Dask reads ``DASK_TEMPORARY_DIRECTORY`` when it is first imported, which
    is after this hook; the ``dask`` command-line processes the tests start
    inherit it. Without it every run leaves ``dask-scratch-space`` in /tmp.
    """
    import tempfile

    if "DASK_TEMPORARY_DIRECTORY" not in os.environ:
        config._dask_scratch = tempfile.mkdtemp(prefix="guild-tests-dask-")  # type: ignore[attr-defined]
        os.environ["DASK_TEMPORARY_DIRECTORY"] = config._dask_scratch  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    scratch = getattr(config, "_dask_scratch", None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        os.environ.pop("DASK_TEMPORARY_DIRECTORY", None)
LEAK_DEADLINE_S = 5.0
# Backends an engine test module runs under when it asks for the ``backend``
# fixture (``pytestmark = pytest.mark.usefixtures("backend")``); a test marked
# ``local_only`` runs on local agents alone.
BACKENDS = ("local", "dask-local")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        local_only = metafunc.definition.get_closest_marker("local_only") is not None
        metafunc.parametrize("backend", ["local"] if local_only else list(BACKENDS), indirect=True)


# What Guilds shared by a module's tests (``dask_guild``) started: their
# processes and threads outlive each test by design, and no test leaks them.
_shared_pids: set[int] = set()
_shared_threads: set[threading.Thread] = set()


@pytest.fixture(scope="module")
def dask_guild() -> Iterator[Callable[..., Any]]:
    """``dask_guild(**settings)``: a dask-local Guild shared by the tests of one module.

    A LocalCluster costs seconds to start, against a fifth of one for agents;
    tests that only use a Guild (not its start, its counters or its workers'
    deaths) share one per module and settings. Its cluster is started when it
    is made, so what it started is known then.
    """
    from guildcore import Guild

    made: dict[str, Any] = {}

    def get(**settings: Any) -> Any:
        key = repr(sorted(settings.items()))
        if key not in made:
            threads, children = _threads(), _children()
            made[key] = guild = Guild(backend="dask-local", **settings)
            guild.submit(abs, -1).result(timeout=60)  # its cluster starts on first need: now
            _shared_pids.update(_children() - children)
            _shared_threads.update(_threads() - threads)
        return made[key]

    yield get
    for guild in made.values():
        guild.shutdown()
    _shared_pids.clear()
    _shared_threads.clear()


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The backend every Guild of the test uses: set through the environment, as a user would."""
    name: str = request.param
    if name != "local":
        monkeypatch.setenv("GUILD_PARALLELIZATION__BACKEND", name)
    return name


def _interpreter_helpers() -> set[int]:
    """Pids multiprocessing keeps alive for the interpreter's lifetime."""
    pids: set[int] = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        fs_pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
        rt_pid = getattr(resource_tracker._resource_tracker, "_pid", None)
        pids.update(p for p in (fs_pid, rt_pid) if p)
        from guildcore.engine import ownserver

        own = ownserver.server_pid()  # guildcore's own forkserver: it too lives as long as the interpreter
        if own:
            pids.add(own)
    except Exception:
        pass
    return pids


def _children() -> set[int]:
    """Live descendants: agents started through the forkserver are its children."""
    helpers = _interpreter_helpers()
    alive = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in helpers or child.status() == psutil.STATUS_ZOMBIE:
                continue
            alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _our_segments() -> set[str]:
    prefix = f"guild_{os.getpid()}_"
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    threads_before = _threads()
    segments_before = _our_segments()
    children_before = _children()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    deadline = time.monotonic() + LEAK_DEADLINE_S
    while True:
        children = _children() - children_before - _shared_pids
        segments = _our_segments() - segments_before
        threads = {t for t in _threads() - threads_before - _shared_threads if not t.daemon or t.name.startswith("guild")}
        if not (children or segments or threads) or time.monotonic() > deadline:
            break
        for t in threads:
            t.join(timeout=0.05)
        if children:
            psutil.wait_procs([psutil.Process(p) for p in children if psutil.pid_exists(p)], timeout=0.05)
    problems = []
    if children:
        problems.append(f"child processes still running: {sorted(children)}")
        for pid in children:  # do not let one leak cascade into the next tests
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
    if segments:
        problems.append(f"/dev/shm segments left: {sorted(segments)}")
        for name in segments:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass
    if threads:
        problems.append(f"threads still running: {sorted(t.name for t in threads)}")
    if problems:
        pytest.fail("test left resources behind: " + "; ".join(problems), pytrace=False)
