"""Namespace policies: how long entries live and how many a namespace keeps.

This module covers the policy table (TTL, entry cap, scope per namespace) and
the rules for namespace names. It does not cover where entries are stored
(see ``l1``, ``l2``, ``l3``) or how a policy is read from a config file (see
``guildcore.config``; :func:`policies_from_config` only converts).

A *session* namespace lives in this process only (L1 and L2): it is never
written to disk, so it may hold values the codec cannot encode, and it is
gone when the process ends. A *persistent* namespace is written through to L3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_POLICIES",
    "DEFAULT_TTL_S",
    "CachePolicy",
    "check_namespace",
    "policies_from_config",
]

SESSION = "session"
PERSISTENT = "persistent"

# The general TTL, used by namespaces whose policy says "general" (result).
DEFAULT_TTL_S = 3600.0  # 1 h, as caching.ttl in guildcore.config

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class CachePolicy:
    """TTL (seconds, ``None`` for never), entry cap (``None`` for none) and scope."""

    ttl_s: float | None = None
    max_entries: int | None = None
    scope: str = PERSISTENT

    def __post_init__(self) -> None:
        if self.scope not in (SESSION, PERSISTENT):
            raise ValueError(f"scope must be 'session' or 'persistent', not {self.scope!r}")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive or None, not {self.ttl_s!r}")
        if self.max_entries is not None and self.max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 or None, not {self.max_entries!r}")

    @property
    def persistent(self) -> bool:
        return self.scope == PERSISTENT


def default_policies(general_ttl_s: float = DEFAULT_TTL_S) -> dict[str, CachePolicy]:
    """The built-in namespaces (see DESIGN.md, vocabulary: namespace)."""
    return {
        # Resolved task functions, per agent: never worth a disk round trip.
        "process": CachePolicy(ttl_s=None, max_entries=100, scope=SESSION),
        # Agent-level facts that stay true across runs.
        "agent": CachePolicy(ttl_s=None, max_entries=None, scope=PERSISTENT),
        "research": CachePolicy(ttl_s=3600.0, max_entries=50, scope=PERSISTENT),
        # Routing decisions go stale when the agent set or the load changes.
        "routing": CachePolicy(ttl_s=1800.0, max_entries=100, scope=PERSISTENT),
        # Task results: the general TTL, no cap (the disk budget bounds it).
        "result": CachePolicy(ttl_s=general_ttl_s, max_entries=None, scope=PERSISTENT),
    }


DEFAULT_POLICIES: Mapping[str, CachePolicy] = default_policies()


def check_namespace(name: str) -> str:
    """Return ``name`` if it is a valid namespace name, else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"namespace {name!r} is not a valid name; use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return name


def policies_from_config(caching: Any) -> dict[str, CachePolicy]:
    """Convert ``Config.caching`` (general ``ttl``, ``namespaces``) into policies.

    Duck-typed so that this package does not import ``guildcore.config``: a
    namespace entry needs ``ttl``, ``max_entries`` and ``scope`` attributes.
    """
    general = float(getattr(caching, "ttl", DEFAULT_TTL_S) or DEFAULT_TTL_S)
    policies = default_policies(general)
    for name, ns in dict(getattr(caching, "namespaces", {}) or {}).items():
        ttl = getattr(ns, "ttl", None)
        if ttl is None and name == "result":  # result follows caching.ttl
            ttl = general
        policies[check_namespace(name)] = CachePolicy(
            ttl_s=None if ttl is None else float(ttl),
            max_entries=getattr(ns, "max_entries", None),
            scope=getattr(ns, "scope", PERSISTENT),
        )
    return policies
