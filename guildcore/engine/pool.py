"""Starting agent processes, and the supervisor's handle on each one.

This module covers: choosing the start method (forkserver by default, with
guildcore preloaded so a new agent costs milliseconds), starting one agent,
and the ``AgentHandle`` record the owner loop keeps per agent. It does not
decide when to start or stop agents (``scaling``) nor which agent gets a task
(``dispatch``).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guildcore.engine.agent import AgentSettings, agent_main
from guildcore.engine.lazymain import AGENT_NAME_PREFIX
from guildcore.engine.states import AGENT_TRANSITIONS, AgentState, check_transition
from guildcore.errors import ConfigError, format_bytes

if TYPE_CHECKING:
    from guildcore.engine.task import Task

START_METHODS = ("forkserver", "fork", "spawn")


def _guard_main_path() -> None:
    """Stop forkserver and spawn children from importing a main script that is not a file.

    multiprocessing makes every forkserver or spawn child re-run the parent's
    ``__main__`` from ``__main__.__file__``. For a script read from stdin that
    is ``'<stdin>'``, and every child dies at start with FileNotFoundError
    (ProcessPoolExecutor too). Such a main module cannot be imported anyway,
    so its functions travel by value; the child is better off without it.
    Installed once, process-wide: it only drops a path that cannot exist.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_guild_main_guard", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        path = data.get("init_main_from_path")
        if path is not None and not os.path.isfile(path):
            del data["init_main_from_path"]
        if name.startswith(AGENT_NAME_PREFIX) and _main_at_start and not (
            "init_main_from_path" in data or "init_main_from_name" in data
        ):
            key, value = _main_at_start[0]
            data[key] = value  # the script has finished running: see remember_main
        return data

    get_preparation_data._guild_main_guard = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


_guard_main_path()

_main_at_start: list[tuple[str, str]] = []  # ("init_main_from_path" or "_name", value), once


def remember_main() -> None:
    """Note how the caller's script was started, while ``__main__`` still says so.

    CPython deletes ``__main__.__file__`` once the script has run. Agents
    started after that, for work queued by ``shutdown(wait=False)`` that
    finishes at interpreter exit, would not find the script, nor any
    function defined in it. Called when a Guild is made.
    """
    if _main_at_start:
        return
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    path = getattr(main, "__file__", None)
    if name is not None:
        if name != "__main__" and not name.endswith(".__main__"):
            _main_at_start.append(("init_main_from_name", name))
    elif path is not None and os.path.isfile(path):
        _main_at_start.append(("init_main_from_path", os.path.normpath(os.path.abspath(path))))


class StartFailed(Exception):
    """An agent process could not be started (internal; the owner loop handles it)."""


class AgentHandle:
    """What the supervisor knows of one agent. Owner thread only."""

    def __init__(self, agent_id: int, process: Any, conn: Any) -> None:
        self.id = agent_id
        self.process = process
        self.conn = conn
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel
        self.state = AgentState.STARTING
        self.held: deque[Task] = deque()
        self.tasks_done = 0
        self.started_at = time.monotonic()
        self.idle_since: float | None = None
        self.last_private: int | None = None
        self.peak_private: int | None = None
        self.exit_reason: tuple[str, Any] | None = None
        self.kill_at: float | None = None
        self.stop_deadline: float | None = None
        self.shutdown_sent = False
        self.baseline_private = 0  # private bytes inherited at start (fork only)

    def set_state(self, new: AgentState) -> None:
        check_transition(f"agent {self.id}", self.state, new, AGENT_TRANSITIONS)
        self.state = new

    def find(self, task_id: int) -> Task | None:
        for task in self.held:
            if task.id == task_id:
                return task
        return None

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.process.close()
        except ValueError:
            pass  # still running: it is SIGKILLed by the caller before this

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "state": self.state.name,
            "held": [t.id for t in self.held],
            "tasks_done": self.tasks_done,
            "private_bytes": self.last_private,
            "peak_private_bytes": self.peak_private,
        }

    def __repr__(self) -> str:
        task = f" task={self.held[0].id}" if self.held else ""
        mem = f" private={format_bytes(self.last_private)}" if self.last_private else ""
        return f"<Agent {self.id} pid={self.pid} {self.state.name}{task}{mem}>"


class AgentStarter:
    """Starts agents with one start method and one set of agent settings."""

    def __init__(
        self,
        *,
        start_method: str,
        limit_bytes: int | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        preload: tuple[str, ...] = (),
        cache_env: dict[str, str] | None = None,
        result_threshold: int | None = None,
        report_stats: bool = False,
    ) -> None:
        if start_method not in START_METHODS:
            raise ConfigError(
                f"unknown start method {start_method!r}; choose one of {', '.join(START_METHODS)}",
                key="pool.start_method",
                value=start_method,
            )
        self.ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Preloading only takes effect before the forkserver first starts;
            # afterwards the modules are imported by each agent on first use.
            self.ctx.set_forkserver_preload(["guildcore.engine.agent", *preload])
        remember_main()
        self.limit_bytes = limit_bytes
        self.initializer = initializer
        self.initargs = initargs
        self.preload = preload
        self.cache_env = dict(cache_env or {})
        self.result_threshold = result_threshold
        self.report_stats = report_stats

    def start(self, agent_id: int) -> AgentHandle:
        settings = AgentSettings(
            agent_id=agent_id,
            limit_bytes=self.limit_bytes,
            initializer=self.initializer,
            initargs=self.initargs,
            preload=self.preload,
            cache_env=self.cache_env,
            result_threshold=self.result_threshold,
            supervisor_pid=os.getpid(),
            forked=self.ctx.get_start_method() == "fork",
            report_stats=self.report_stats,
        )
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=agent_main, args=(child_conn, settings), name=f"{AGENT_NAME_PREFIX}{agent_id}", daemon=True
        )
        try:
            process.start()
        except Exception as exc:
            parent_conn.close()
            child_conn.close()
            raise StartFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            pass
        child_conn.close()
        return AgentHandle(agent_id, process, parent_conn)
