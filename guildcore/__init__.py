"""guildcore: a supervised multiprocessing engine.

The public API lives here and only here; every other module may change.

``import guildcore`` stays cheap (target: under 50 ms on top of interpreter
start): only ``__version__`` and the ``context()`` accessor load eagerly.
Every other public name loads its module on first use (PEP 562
``__getattr__``), so the engine, multiprocessing, the cache stores, yaml and
psutil load when a program first touches ``Guild``, ``TieredCache``,
``load_config`` or an error class, not before.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"  # read by the build (pyproject.toml, [tool.hatch.version])

# Invariant: ``guildcore.context`` is the function, not the subpackage of the
# same name. Importing a package sets it as an attribute of its parent only
# the first time, i.e. here, before the next line rebinds the name; later
# imports of ``guildcore.context.view`` and the like only touch the
# subpackage's attributes. So keep this import eager (the package is cheap).
from guildcore.context.current import current as context

TYPE_CHECKING = False  # typing costs ~10 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from guildcore.cache.cached import cached
    from guildcore.cache.tiers import TieredCache
    from guildcore.config import Config, load_config
    from guildcore.context.ref import ContextRef
    from guildcore.engine.executor import Guild
    from guildcore.engine.futures import GuildExecutor
    from guildcore.engine.shmbuf import ResultStream
    from guildcore.errors import (
        AgentDied,
        AgentError,
        CacheError,
        ConfigError,
        ContextError,
        GuildError,
        MemoryLimitExceeded,
        PoolBroken,
        ProcessFailed,
        SerializationError,
        ShutdownError,
        TaskCancelled,
        TaskError,
        TaskTimeout,
    )
    from guildcore.metrics.alerts import Alert
    from guildcore.metrics.run import recorded_run
    from guildcore.process import Process, ProcessRun

_LAZY = {  # public name -> the module that defines it, imported on first use
    "TieredCache": "guildcore.cache",
    "cached": "guildcore.cache",
    "Config": "guildcore.config",
    "load_config": "guildcore.config",
    "ContextRef": "guildcore.context.ref",
    "Guild": "guildcore.engine.executor",
    "GuildExecutor": "guildcore.engine.futures",
    "ResultStream": "guildcore.engine.shmbuf",
    "Alert": "guildcore.metrics.alerts",
    "recorded_run": "guildcore.metrics.run",
    "Process": "guildcore.process",
    "ProcessRun": "guildcore.process",
    **dict.fromkeys(
        (
            "AgentDied",
            "AgentError",
            "CacheError",
            "ConfigError",
            "ContextError",
            "GuildError",
            "MemoryLimitExceeded",
            "PoolBroken",
            "ProcessFailed",
            "SerializationError",
            "ShutdownError",
            "TaskCancelled",
            "TaskError",
            "TaskTimeout",
        ),
        "guildcore.errors",
    ),
}

__all__ = [
    "AgentDied",
    "AgentError",
    "Alert",
    "CacheError",
    "Config",
    "ConfigError",
    "ContextError",
    "ContextRef",
    "Guild",
    "GuildError",
    "GuildExecutor",
    "MemoryLimitExceeded",
    "PoolBroken",
    "Process",
    "ProcessFailed",
    "ProcessRun",
    "ResultStream",
    "SerializationError",
    "ShutdownError",
    "TaskCancelled",
    "TaskError",
    "TaskTimeout",
    "TieredCache",
    "__version__",
    "cached",
    "context",
    "load_config",
    "recorded_run",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(module)  # importlib itself is ~0.3 ms of import: not for one call
    value = getattr(sys.modules[module], name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
