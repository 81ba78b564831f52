"""``SupervisorSettings``: the parts of Config the supervisor reads, resolved to plain values.

Its own module so that a Guild can be made without importing the state
machine (``poolstate`` and the rules): the owner thread imports those when
its loop starts, while the template forks the first agent.
"""

from __future__ import annotations

from guildcore._records import Frozen

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from guildcore.monitorlimits import MonitorLimits


class SupervisorSettings(Frozen):
    """The parts of Config the supervisor reads, resolved to plain values."""

    _fields = (
        "min_agents", "max_agents", "idle_timeout_s", "scale_up_queue_length", "balancing", "prefetch",
        "max_tasks_per_agent", "quarantine_after", "limit_bytes", "sample_interval_s", "timeout_grace_s",
        "stream_window", "parallel", "queue_strategy", "monitor", "adaptive",
    )  # fmt: skip
    __slots__ = _fields
    min_agents: int
    max_agents: int
    idle_timeout_s: float
    scale_up_queue_length: int
    balancing: str
    prefetch: int
    max_tasks_per_agent: int | None
    quarantine_after: int
    limit_bytes: int | None
    sample_interval_s: float
    timeout_grace_s: float
    stream_window: int
    parallel: bool
    queue_strategy: str
    monitor: MonitorLimits | None  # None: no monitor (monitoring.enabled false, or a Dask backend)
    adaptive: bool  # parallelization.strategy: adaptive (the monitor sizes the pool)

    def __init__(
        self,
        min_agents: int,
        max_agents: int,
        idle_timeout_s: float,
        scale_up_queue_length: int,
        balancing: str,
        prefetch: int,
        max_tasks_per_agent: int | None,
        quarantine_after: int,
        limit_bytes: int | None,
        sample_interval_s: float,
        timeout_grace_s: float,
        stream_window: int,
        parallel: bool,
        queue_strategy: str = "priority",
        monitor: MonitorLimits | None = None,
        adaptive: bool = False,
    ) -> None:
        self._set("min_agents", min_agents)
        self._set("max_agents", max_agents)
        self._set("idle_timeout_s", idle_timeout_s)
        self._set("scale_up_queue_length", scale_up_queue_length)
        self._set("balancing", balancing)
        self._set("prefetch", prefetch)
        self._set("max_tasks_per_agent", max_tasks_per_agent)
        self._set("quarantine_after", quarantine_after)
        self._set("limit_bytes", limit_bytes)
        self._set("sample_interval_s", sample_interval_s)
        self._set("timeout_grace_s", timeout_grace_s)
        self._set("stream_window", stream_window)
        self._set("parallel", parallel)
        self._set("queue_strategy", queue_strategy)
        self._set("monitor", monitor)
        self._set("adaptive", adaptive)
