"""What a Guild needs of whatever runs its tasks, and how another backend is found.

The local ``Supervisor`` is one ``Pool``; ``parallelization.backend`` may
name another (``dask``, ``dask-local``), which takes the Guild's ``Task``
records and ends each one as the supervisor would. Backends live in
``guildcore.backends``, above the engine: the engine finds one by module
name here and never imports that package, which in turn loads nothing
(Dask included) until a Guild asks for it.

It does not cover any backend itself, nor choosing between the local
supervisor and another backend (``executor.Guild``).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from guildcore.config import Config
    from guildcore.engine.pool import AgentStarter
    from guildcore.engine.supervisor import SupervisorSettings
    from guildcore.engine.task import Task
    from guildcore.metrics.recorder import RunRecorder

# parallelization.backend -> the module whose ``open_pool`` starts it.
BACKEND_MODULES: Mapping[str, str] = {
    "dask": "guildcore.backends.dask",
    "dask-local": "guildcore.backends.dask",
}


class Pool(Protocol):
    """The face a Guild sees: the supervisor's public methods."""

    settings: SupervisorSettings
    booted: threading.Event  # set once a task can run off the caller's thread

    @property
    def counters(self) -> Any: ...
    def start(self) -> None: ...
    def check_open(self) -> None: ...
    def new_task_id(self) -> int: ...
    def submit(self, tasks: list[Task]) -> None: ...
    def call(self, fn: Callable[[], Any]) -> Future[Any]: ...
    def on_owner_thread(self) -> bool: ...
    def grant_credit(self, task: Task, n: int) -> None: ...
    def cancel_stream(self, task: Task) -> None: ...
    def shutdown(self, *, wait: bool, cancel_futures: bool, kill: bool = False) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def snapshot(self) -> dict[str, Any]: ...


def open_backend(
    config: Config, settings: SupervisorSettings, starter: AgentStarter, recorder: RunRecorder | None = None
) -> Pool:
    """The pool of the backend ``parallelization.backend`` names, connected and ready to start.

    ``starter`` holds what every worker runs first, as agents do (its
    initializer and preload list); ``recorder`` takes the pool's events for
    the run's metrics, as the supervisor's (None when ``monitoring.metrics``
    is off).
    """
    module = importlib.import_module(BACKEND_MODULES[config.parallelization.backend])
    pool: Pool = module.open_pool(
        config, settings, initializer=starter.initializer, initargs=starter.initargs,
        preload=starter.preload, recorder=recorder,
    )  # fmt: skip
    return pool
