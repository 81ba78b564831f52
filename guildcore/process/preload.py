"""Agents that start with the modules of the processes likely to run.

``optimization.preload`` lists modules the forkserver imports once (and each
agent at start), so no agent pays for them on its first task. Two more
forms name processes instead of modules, and ``true`` ("what is likely")
means the modules of the processes run most recently, when there are any:

    process:NAME   the modules of process NAME's step functions: from its
                   YAML file (read, not imported), or from the recent-runs
                   record for a process defined in Python
    process:*      the modules of the processes run most recently in this
                   project (up to RECENT_PRELOADED), from the record the
                   runner keeps in the cache (see ``registry``)

``expand_preload`` turns them into module names when a Guild starts; it
opens the on-disk cache only for ``process:*`` and names not found as files.
``imported`` runs in an agent and says which modules it already holds:
``guild preload`` uses it to show agents starting warm. ``guild run`` needs
none of this: it knows its process and preloads its modules itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from guildcore.config import Config
from guildcore.errors import ConfigError

__all__ = ["PREFIX", "RECENT_PRELOADED", "expand_preload", "imported", "modules_for"]

PREFIX = "process:"
RECENT = "process:*"
RECENT_PRELOADED = 3  # processes of the recent-runs record whose modules process:* preloads


def expand_preload(config: Config) -> tuple[str, ...]:
    """``optimization.preload`` with ``process:`` entries replaced by module names."""
    if config.optimization.preload is True:
        learned = [m for r in _recent(config)[:RECENT_PRELOADED] for m in r.get("modules", [])]
        return config.optimization.preload_modules(learned)
    out: list[str] = []
    record: list[dict[str, Any]] | None = None
    for entry in config.optimization.preload_modules():
        if not entry.startswith(PREFIX):
            out.append(entry)
            continue
        name = entry[len(PREFIX) :]
        modules = None if name == "*" else _file_modules(name, config)
        if modules is None:
            if record is None:
                record = _recent(config)
            if name == "*":
                modules = [m for r in record[:RECENT_PRELOADED] for m in r.get("modules", [])]
            else:
                modules = next((list(r.get("modules", [])) for r in record if r.get("name") == name), None)
        if modules is None:
            raise ConfigError(
                f"optimization.preload names {entry!r}, but there is no process {name!r}: no "
                f"{name}.yaml in .guild/processes and no recent run of it; check the name, or use "
                "process:* for the processes run most recently",
                key="optimization.preload", value=entry,
            )  # fmt: skip
        out.extend(m for m in modules if isinstance(m, str))
    return tuple(dict.fromkeys(out))


def modules_for(name: str, config: Config) -> list[str] | None:
    """The modules of process ``name`` without importing them (None: unknown)."""
    found = _file_modules(name, config)
    if found is not None:
        return found
    return next((list(r.get("modules", [])) for r in _recent(config) if r.get("name") == name), None)


def _file_modules(name: str, config: Config) -> list[str] | None:
    from guildcore.process.registry import processes_dir
    from guildcore.process.yamlfile import SUFFIXES, modules_named

    folder = processes_dir(config)
    if folder is None:
        return None
    for suffix in SUFFIXES:
        path = os.path.join(folder, name + suffix)
        if os.path.isfile(path):
            return modules_named(path, os.path.relpath(path))
    return None


def _recent(config: Config) -> list[dict[str, Any]]:
    if not config.caching.enabled:
        return []
    from guildcore.cache import TieredCache
    from guildcore.process.registry import recent

    # Fork-safety: opened and closed before any agent starts.
    with TieredCache.from_config(config) as tiers:
        return recent(tiers)


def imported(modules: list[str]) -> dict[str, bool]:
    """Agent side: which of ``modules`` this agent had imported before being asked."""
    return {m: m in sys.modules for m in modules}
