"""Three-tier cache: L1 dict, L2 LRU, L3 LMDB; namespaces, TTLs, ``@cached``.

See ``tiers`` for the data flow, ``l3`` for the on-disk hazards and
``record`` for the stored byte layout.
"""

from guildcore.cache.admin import cache_clear, cache_compact, cache_stats
from guildcore.cache.cached import (
    cached,
    close_default_cache,
    configure_default_cache,
    default_cache,
)
from guildcore.cache.policy import DEFAULT_POLICIES, CachePolicy
from guildcore.cache.tiers import TieredCache

__all__ = [
    "DEFAULT_POLICIES",
    "CachePolicy",
    "TieredCache",
    "cache_clear",
    "cache_compact",
    "cache_stats",
    "cached",
    "close_default_cache",
    "configure_default_cache",
    "default_cache",
]
