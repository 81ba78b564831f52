"""The Dask backend: a Guild's tasks run on a Dask cluster.

``parallelization.backend: dask`` (with ``address`` or ``scheduler_file``)
connects to a running cluster; ``dask-local`` starts a ``LocalCluster`` of
``pool.max_agents`` one-thread worker processes for the Guild and stops it
with the Guild. Either way the Guild's API, its futures, errors, cache and
context work as with local agents: this backend takes the place of the
``Supervisor`` under the same ``Guild`` (``open_pool`` is what
``engine.backend`` calls) and receives the same ``Task`` records.

This module covers opening a pool: refusing settings that would not act on
Dask, a clear error when Dask is not installed, the worker plugin, and
stopping the pool at interpreter exit. The rooms of the backend:

- ``daskpool``: the owner loop (dispatch, results, retries, timeouts, streams);
- ``daskqueue``: the queue of tasks and how each one ends;
- ``daskworker``: what runs inside a Dask worker for each task;
- ``daskstreams``: the caller's side of a streaming task;
- ``daskcluster``: connecting to a cluster, or starting dask-local's;
- ``daskerrors``: the errors, worded as the agents' are.

Nothing here imports Dask until a pool is opened.
"""

from __future__ import annotations

import functools
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guildcore.engine.supervisor import SupervisorSettings
from guildcore.errors import ConfigError, PoolBroken

if TYPE_CHECKING:
    from guildcore.backends.daskcluster import ClusterLink
    from guildcore.backends.daskpool import DaskPool
    from guildcore.config import Config

EXTRA = "pip install 'guildcore[dask]'"

# Pool settings that act only on guildcore's own agents. Set to anything but
# their default, they are refused on Dask rather than silently ignored.
_AGENT_ONLY = ("prefetch", "balancing", "idle_timeout", "max_tasks_per_agent", "start_method")
# Settings only the memory monitor reads (it does not run on Dask).
_MONITOR_LIMITS = ("total_system", "cache_size")
_MONITOR_ONLY = ("check_interval", "warning_threshold", "critical_threshold")


def open_pool(
    config: Config,
    settings: SupervisorSettings,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    preload: tuple[str, ...] = (),
    recorder: Any = None,
) -> DaskPool:
    """The pool of the cluster ``config`` names.

    A cluster someone else runs is reached now: its size is the pool's. A
    dask-local cluster starts with the pool, on the Guild's first need, as
    agents do: a Guild whose maps are all served by the cache starts none.
    """
    _check_settings(config)
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"parallelization.backend {config.parallelization.backend} needs Dask distributed, "
            f"which cannot be imported ({exc}); install it with  {EXTRA}",
            key="parallelization.backend",
            value=config.parallelization.backend,
        ) from None
    from guildcore.backends.daskpool import DaskPool

    opener = functools.partial(_open_link, config, settings.max_agents, initializer, tuple(initargs), tuple(preload))
    if config.parallelization.backend == "dask-local":
        pool = DaskPool(None, settings, config, recorder, opener=opener)
    else:
        link, broken = opener()
        try:
            pool = DaskPool(link, settings, config, recorder)
        except BaseException:
            link.close()
            raise
        pool._broken = broken
    _stop_at_exit(pool)
    return pool


def _open_link(
    config: Config,
    workers: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    preload: tuple[str, ...],
) -> tuple[ClusterLink, PoolBroken | None]:
    """Reach the cluster and install the worker plugin; a failing initializer breaks the pool."""
    from guildcore.backends.daskcluster import ClusterLink, GuildWorkerPlugin

    link = ClusterLink.open(config, workers)
    broken = None
    try:
        if initializer is not None or preload:
            plugin = GuildWorkerPlugin(f"guildcore-{uuid.uuid4().hex[:12]}", preload, initializer, initargs)
            try:
                link.register(plugin)
            except PoolBroken as exc:
                broken = exc  # as with agents: the Guild runs, and every task fails with it
    except BaseException:
        link.close()
        raise
    return link, broken


def _stop_at_exit(pool: DaskPool) -> None:
    """At interpreter exit, let ``pool`` finish its work while Dask still works.

    The engine's exit hook finishes every Guild's work (``executor``); it
    runs among the hooks of ``threading._register_atexit``, last registered
    first. Importing Dask registered ``concurrent.futures``' own hook after
    the engine's: it runs first and refuses new work to every thread pool,
    Dask's included, which would leave this pool unable to finish. So this
    pool registers its own, later still, which runs before both: it finishes
    the work (as the engine's hook would) and closes the client and cluster.
    """
    ref = weakref.ref(pool)

    def stop() -> None:
        alive = ref()
        if alive is None:
            return
        if not alive._closed:
            alive.shutdown(wait=True, cancel_futures=False)
        alive.join()

    try:
        threading._register_atexit(stop)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # pragma: no cover - other Pythons, or exit under way
        pass


def _check_settings(config: Config) -> None:
    from guildcore.config import PoolConfig

    defaults = PoolConfig()
    for name in _AGENT_ONLY:
        value = getattr(config.pool, name)
        if name == "prefetch" and value == 0:
            continue  # what Dask does here anyway: no task waits on a busy worker
        if value != getattr(defaults, name):
            raise ConfigError(
                f"pool.{name} {value!r} acts only on guildcore's own agents, and parallelization.backend is "
                f"{config.parallelization.backend}: Dask places and starts its workers itself; remove pool.{name} "
                "or use backend local",
                key=f"pool.{name}",
                value=value,
            )
    # The memory monitor watches guildcore's own agents and caches; on Dask,
    # Dask's worker memory manager (target, spill, pause, terminate) does,
    # with limits.per_agent as above. The monitor does not run, and its own
    # settings changed from their defaults are refused, not ignored.
    from guildcore.config import LimitsConfig, MonitoringConfig

    monitor_defaults: tuple[tuple[str, tuple[str, ...], object], ...] = (
        ("limits", _MONITOR_LIMITS, LimitsConfig()),
        ("monitoring", _MONITOR_ONLY, MonitoringConfig()),
    )
    for section, names, section_defaults in monitor_defaults:
        for name in names:
            value = getattr(getattr(config, section), name)
            if value != getattr(section_defaults, name):
                raise ConfigError(
                    f"{section}.{name} {value!r} is read by guildcore's memory monitor, which watches local "
                    f"agents only, and parallelization.backend is {config.parallelization.backend}: Dask's "
                    f"worker memory manager governs its workers (see distributed.worker.memory); remove "
                    f"{section}.{name} or use backend local",
                    key=f"{section}.{name}",
                    value=value,
                )
