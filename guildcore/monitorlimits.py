"""The memory monitor's settings, resolved from the configuration to plain values.

This module covers ``MonitorLimits`` and the record base the monitor's
records share (``MonitorRecord``). Every Guild that monitors makes its
limits when it is made; the monitor itself (``guildcore.monitor``: the
decisions and the probe) loads with its first reading, a tenth of a second
into the pool's life, so a script's first result does not wait for it. It
does not cover what the limits mean to a decision (``guildcore.monitor``).
"""

from __future__ import annotations

from guildcore._records import Frozen

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.config import Config

__all__ = ["HOLD_CHECKS", "MonitorLimits", "MonitorRecord"]

# Back to a lower mode only after the pressure stays under its threshold
# (less the recovery margin) this many check intervals (5 s at the default 1 s).
HOLD_CHECKS = 5


class MonitorRecord(Frozen):
    """A frozen record (``_records.Frozen``) whose ``__init__`` sets its fields in one call.

    Not a dataclass: the monitor's records are made by every Guild that
    monitors, and a frozen dataclass costs a millisecond or more to create
    at import.
    """

    __slots__ = ()

    def _set_fields(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}


class MonitorLimits(MonitorRecord):
    """The settings the decisions read, resolved to plain values."""

    _fields = (
        "total_system_bytes", "cache_size_bytes", "per_agent_bytes", "warning", "critical",
        "check_interval_s", "min_agents", "max_agents", "alerts",
    )  # fmt: skip
    __slots__ = _fields
    total_system_bytes: int
    cache_size_bytes: int
    per_agent_bytes: int
    warning: float
    critical: float
    check_interval_s: float
    min_agents: int
    max_agents: int
    alerts: bool

    def __init__(
        self,
        *,
        total_system_bytes: int,
        cache_size_bytes: int,
        per_agent_bytes: int,
        warning: float,
        critical: float,
        check_interval_s: float,
        min_agents: int,
        max_agents: int,
        alerts: bool = True,
    ) -> None:
        self._set_fields(
            total_system_bytes=total_system_bytes, cache_size_bytes=cache_size_bytes,
            per_agent_bytes=per_agent_bytes, warning=warning, critical=critical,
            check_interval_s=check_interval_s, min_agents=min_agents, max_agents=max_agents, alerts=alerts,
        )  # fmt: skip

    @classmethod
    def from_config(cls, config: Config, *, max_agents: int | None = None) -> MonitorLimits:
        lim, mon = config.limits, config.monitoring
        return cls(
            total_system_bytes=lim.total_system,
            cache_size_bytes=lim.cache_size,
            per_agent_bytes=lim.per_agent,
            warning=mon.warning_threshold,
            critical=mon.critical_threshold,
            check_interval_s=mon.check_interval,
            min_agents=config.pool.min_agents,
            max_agents=config.pool.max_agents if max_agents is None else max_agents,
            alerts=mon.alerts,
        )

    @property
    def base_hold_s(self) -> float:
        return HOLD_CHECKS * self.check_interval_s
