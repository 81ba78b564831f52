"""guildcore: a supervised multiprocessing engine.

The public API lives here and only here; every other module may change.
"""

from guildcore._version import __version__
from guildcore.cache import TieredCache, cached
from guildcore.config import Config, load_config
from guildcore.context import ContextRef
from guildcore.context import current as context
from guildcore.engine.executor import Guild, GuildExecutor
from guildcore.errors import (
    AgentDied,
    AgentError,
    CacheError,
    ConfigError,
    ContextError,
    GuildError,
    MemoryLimitExceeded,
    PoolBroken,
    SerializationError,
    ShutdownError,
    TaskCancelled,
    TaskError,
    TaskTimeout,
)

__all__ = [
    "AgentDied",
    "AgentError",
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
]
