"""``@cached``: memoize a function in a cache namespace, across agents and runs.

Covers the decorator and the process-wide default cache it uses. Does not
cover the tiers themselves (``tiers``).

A call's key is ``keys.key_of(fingerprint(fn), args, sorted kwargs)``: the
fingerprint changes when the function's code changes, so results of old code
are never served (they become unreachable and age out). The default cache is
made on first use in each process from ``load_config()``; its L3 environment
is opened there, after the agent started, never inherited (see ``l3``).

A cache failure never fails the call: an argument the key cannot encode, a
result the codec cannot store, or a store that cannot be opened is logged
and the function simply runs.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from guildcore import keys
from guildcore.cache.tiers import TieredCache

__all__ = [
    "cached",
    "close_default_cache",
    "configure_default_cache",
    "default_cache",
    "default_cache_if_made",
    "set_default_caching",
]

log = logging.getLogger("guildcore.cache")
P = ParamSpec("P")
R = TypeVar("R")


class _DefaultCache:
    """Holder of the process-wide default cache (one instance, below)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cache: TieredCache | None = None
        self.settings: dict[str, Any] | None = None
        self.caching: tuple[bool, float] | None = None  # (writes, budget) the monitor set; None: full

    def get(self) -> TieredCache:
        cache = self.cache
        if cache is None:
            with self.lock:
                if self.cache is None:
                    if self.settings is not None:
                        made = TieredCache(**self.settings)
                    else:
                        from guildcore.config import load_config

                        made = TieredCache.from_config(load_config())
                    if self.caching is not None:
                        made.set_caching(writes=self.caching[0], budget=self.caching[1])
                    self.cache = made
                cache = self.cache
        return cache

    def replace(self, settings: dict[str, Any] | None) -> None:
        with self.lock:
            old, self.cache, self.settings = self.cache, None, settings
        if old is not None:
            old.close()


_DEFAULT = _DefaultCache()


def default_cache() -> TieredCache:
    """The process-wide cache ``@cached`` uses, made on first use."""
    return _DEFAULT.get()


def default_cache_if_made() -> TieredCache | None:
    """The default cache if this process has made it (None: never used); makes nothing."""
    return _DEFAULT.cache


def set_default_caching(*, writes: bool, budget: float) -> None:
    """Cache writes on or off and the in-process budget fraction, for the default cache now and when made.

    The memory monitor's lever on ``@cached`` (in agents, and in the
    supervisor's process for tasks run there).
    """
    with _DEFAULT.lock:
        _DEFAULT.caching = None if (writes, budget) == (True, 1.0) else (writes, budget)
        cache = _DEFAULT.cache
    if cache is not None:
        cache.set_caching(writes=writes, budget=budget)


def configure_default_cache(path: str | None = None, **settings: Any) -> None:
    """Point the default cache elsewhere (``TieredCache`` keyword arguments).

    ``configure_default_cache()`` with no arguments goes back to
    ``load_config()``. The current default cache, if any, is closed.
    """
    _DEFAULT.replace(None if path is None else {"path": path, **settings})


def close_default_cache() -> None:
    """Close the default cache; the next use makes a new one."""
    _DEFAULT.replace(_DEFAULT.settings)


_MISS = object()


@overload
def cached(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def cached(
    *,
    namespace: str = "result",
    ttl: float | str | None = None,
    tags: tuple[str, ...] = (),
    cache: TieredCache | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def cached(
    fn: Callable[P, R] | None = None,
    /,
    *,
    namespace: str = "result",
    ttl: float | str | None = None,
    tags: tuple[str, ...] = (),
    cache: TieredCache | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Memoize ``fn`` in ``namespace`` of ``cache`` (default: the process-wide cache).

    ``ttl`` is a duration written as in the config (``"30min"``, ``"1h"``,
    ``"250ms"``, a number of seconds), ``math.inf`` for never, or ``None``
    for the namespace's TTL; a bad one fails at decoration with a
    ``ConfigError`` naming the function. Arguments and results must be
    encodable by ``guildcore.codec`` to reach L3; values that need pickle are
    stored signed.
    """

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        ttl_s = _ttl_seconds(ttl, f)
        fingerprint: list[str] = []  # computed once per process, on first call

        @functools.wraps(f)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                if not fingerprint:
                    fingerprint.append(keys.fingerprint(f))
                key = keys.key_of(fingerprint[0], args, tuple(sorted(kwargs.items())))
                store = cache if cache is not None else _DEFAULT.get()
                value = store.get(namespace, key, _MISS)
            except Exception as exc:
                log.warning(
                    "@cached %s: cache lookup skipped: %s: %s",
                    f.__qualname__,
                    type(exc).__name__,
                    exc,
                )
                return f(*args, **kwargs)
            if value is not _MISS:
                return value  # type: ignore[no-any-return]
            result = f(*args, **kwargs)
            try:
                store.set(namespace, key, result, ttl=ttl_s, tags=tags)
            except Exception as exc:
                log.warning(
                    "@cached %s: result not cached: %s: %s", f.__qualname__, type(exc).__name__, exc
                )
            return result

        return wrapper

    return decorate if fn is None else decorate(fn)


def _ttl_seconds(ttl: object, fn: Callable[..., Any]) -> float | None:
    """Seconds from a config-style duration; refused at decoration, never per call."""
    if ttl is None or ttl == math.inf:
        return ttl  # type: ignore[return-value]
    from guildcore.config_values import parse_duration
    from guildcore.errors import ConfigError

    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    try:
        return parse_duration(ttl, f"@cached(ttl=) of {name}")
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}; or math.inf for never, or None for the namespace's TTL",
            key="ttl",
            value=ttl,
        ) from None
