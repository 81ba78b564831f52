"""What ``guild cache stats | clear | compact`` calls: one function each.

Each opens the store named by a ``Config``, does one thing and closes it. A
folder without a store is reported as empty, not created.
"""

from __future__ import annotations

import os
from typing import Any

from guildcore.cache.tiers import TieredCache
from guildcore.errors import CacheError

__all__ = ["cache_clear", "cache_compact", "cache_stats"]


def _exists(cfg: Any) -> bool:
    return os.path.exists(os.path.join(cfg.cache_path(), "data.mdb"))


def cache_stats(cfg: Any) -> dict[str, Any]:
    """Entries and bytes per namespace, plus the hit and miss totals agents saved."""
    if not _exists(cfg):
        return {"path": cfg.cache_path(), "exists": False, "namespaces": {}}
    with TieredCache.from_config(cfg) as cache:
        stats = cache.stats()
    stats["exists"] = True
    return stats


def cache_clear(cfg: Any, namespace: str | None = None) -> None:
    """Remove every entry of ``namespace`` (or of all namespaces)."""
    if not _exists(cfg):
        return
    with TieredCache.from_config(cfg) as cache:
        if namespace is not None and namespace not in cache.policies:
            if namespace not in cache.l3.namespaces():
                known = ", ".join(sorted(set(cache.policies) | set(cache.l3.namespaces())))
                raise CacheError(f"no cache namespace {namespace!r} in {cfg.cache_path()}; known: {known}")
            cache.l3.clear(namespace)
        else:
            cache.clear(namespace)


def cache_compact(cfg: Any) -> tuple[int, int]:
    """Rewrite the store without free space; ``(bytes_before, bytes_after)``."""
    if not _exists(cfg):
        return 0, 0
    with TieredCache.from_config(cfg) as cache:
        return cache.compact()
