"""Namespace policies: how long entries live and how many a namespace keeps.

This module covers the policy table (TTL, entry cap, scope per namespace) and
the rules for namespace names. It does not cover where entries are stored
(see ``l1``, ``l2``, ``l3``) or how a policy is read from a config file (see
``guildcore.config``, which also holds the one table of built-in namespaces;
:func:`policies_from_config` only converts).

A *session* namespace lives in this process only (L1 and L2): it is never
written to disk, so it may hold values the codec cannot encode, and it is
gone when the process ends. A *persistent* namespace is written through to L3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guildcore.config import BUILTIN_NAMESPACES, FOLLOWS_TTL, CachingConfig
from guildcore.errors import ConfigError

__all__ = [
    "DEFAULT_POLICIES",
    "DEFAULT_TTL_S",
    "CachePolicy",
    "check_namespace",
    "policies_from_config",
]

SESSION = "session"
PERSISTENT = "persistent"

# The general TTL, used by namespaces that follow caching.ttl (result).
DEFAULT_TTL_S: float = CachingConfig().ttl

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class CachePolicy:
    """TTL (seconds, ``None`` for never), entry cap (``None`` for none) and scope."""

    ttl_s: float | None = None
    max_entries: int | None = None
    scope: str = PERSISTENT

    def __post_init__(self) -> None:
        if self.scope not in (SESSION, PERSISTENT):
            raise ConfigError(f"scope must be 'session' or 'persistent', not {self.scope!r}", key="scope")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ConfigError(f"ttl_s must be positive or None, not {self.ttl_s!r}", key="ttl_s")
        if self.max_entries is not None and self.max_entries < 1:
            raise ConfigError(f"max_entries must be at least 1 or None, not {self.max_entries!r}", key="max_entries")

    @property
    def persistent(self) -> bool:
        return self.scope == PERSISTENT


def default_policies(general_ttl_s: float = DEFAULT_TTL_S) -> dict[str, CachePolicy]:
    """The built-in namespaces, from the one table in ``guildcore.config``."""
    return {
        name: CachePolicy(
            ttl_s=general_ttl_s if name == FOLLOWS_TTL else ns.ttl,
            max_entries=ns.max_entries,
            scope=ns.scope,
        )
        for name, ns in BUILTIN_NAMESPACES.items()
    }


DEFAULT_POLICIES: Mapping[str, CachePolicy] = default_policies()


def check_namespace(name: str) -> str:
    """Return ``name`` if it is a valid namespace name, else raise ``ConfigError``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"namespace {name!r} is not a valid name; use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return name


def policies_from_config(caching: Any) -> dict[str, CachePolicy]:
    """Convert ``Config.caching`` (general ``ttl``, ``namespaces``) into policies.

    Duck-typed (tests pass simple stand-ins): a namespace entry needs ``ttl``,
    ``max_entries`` and ``scope`` attributes.
    """
    general = float(getattr(caching, "ttl", DEFAULT_TTL_S) or DEFAULT_TTL_S)
    policies = default_policies(general)
    for name, ns in dict(getattr(caching, "namespaces", {}) or {}).items():
        ttl = getattr(ns, "ttl", None)
        if ttl is None and name == FOLLOWS_TTL:  # result follows caching.ttl
            ttl = general
        policies[check_namespace(name)] = CachePolicy(
            ttl_s=None if ttl is None else float(ttl),
            max_entries=getattr(ns, "max_entries", None),
            scope=getattr(ns, "scope", PERSISTENT),
        )
    return policies
