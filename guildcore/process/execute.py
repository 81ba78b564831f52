"""One step on the Guild: its cache keys, the lookup, batching, the calls, the store.

Runs on the step's thread (the runner gives each running step one). A
single step is one ``Guild.submit`` of its adapter; a map step is one
``Guild.map`` over the items the cache does not hold, so items take the
usual routing (inline or pool) and chunking. Equal items of a cached map
step run once (``engine.batching``). Results go to the ``result``
namespace as soon as the step's calls return; a store that fails is logged,
never the step's failure.

Keys (the runner's docstring says why they are built this way)::

    step:      key_of("guild-process-step", process, version, step, fingerprint, inputs' key)
    map item:  key_of(key_of("guild-process-items", process, version, step, fingerprint, inputs' key), item)
    identity:  the step's key; a map step's: key_of(its item keys); uncached: key_of(its value)
               ("by content": then a dependant reading one key of it hashes that part only)

It does not decide when a step runs or what its inputs are (``runner``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guildcore import keys
from guildcore.engine.batching import group_by_key, spread
from guildcore.process.call import adapter_for
from guildcore.process.model import StepDef

if TYPE_CHECKING:
    from guildcore.cache import TieredCache
    from guildcore.engine.executor import Guild

__all__ = ["NAMESPACE", "Outcome", "Prepared", "StepExecutor", "key_or_none"]

NAMESPACE = "result"
log = logging.getLogger("guildcore.process")


def key_or_none(*parts: Any) -> bytes | None:
    """``keys.key_of(*parts)``, or None for parts that have no key (such a step is not cached)."""
    try:
        return keys.key_of(*parts)
    except Exception:
        return None


@dataclass
class Prepared:
    """What a step's thread needs, resolved on the runner's thread before it starts."""

    step: StepDef
    kwargs: dict[str, Any]
    shared: dict[str, Any]  # param -> ContextRef of a one-value segment
    inputs_key: bytes | None  # None: some input has no key; not cached
    items: list[Any] | None = None  # a map step's items


@dataclass
class Outcome:
    value: Any = None
    identity: bytes | None = None
    by_content: bool = False  # identity is the key of the value (uncached), not of the step
    start_s: float = 0.0
    end_s: float = 0.0
    items: int = 1
    hits: int = 0
    duplicates: int = 0
    pids: set[int] = field(default_factory=set)
    inline: int = 0  # calls the router ran in this process


class StepExecutor:
    """Runs the steps of one process run; shared by its step threads (no state of its own)."""

    def __init__(self, guild: Guild, tiers: TieredCache, process: str, version: str, t0: float) -> None:
        self.guild = guild
        self.tiers = tiers
        self.process = process
        self.version = version
        self.t0 = t0

    def run(self, prep: Prepared) -> Outcome:
        out = Outcome(start_s=time.perf_counter() - self.t0)
        if prep.items is None:
            self._call(prep, out)
        else:
            self._map(prep, out)
        out.end_s = time.perf_counter() - self.t0
        return out

    def _fingerprint(self, step: StepDef) -> str | None:
        if not step.cache:
            return None
        try:
            return keys.fingerprint(step.fn)
        except Exception:
            return None

    def _opts(self, step: StepDef) -> dict[str, Any]:
        opts: dict[str, Any] = {"priority": step.priority}
        if step.has_timeout:
            opts["timeout"] = step.timeout_s
        if step.retries is not None:
            opts["retries"] = step.retries
        return opts

    def _call(self, prep: Prepared, out: Outcome) -> None:
        step = prep.step
        fp = self._fingerprint(step)
        key = None
        if fp is not None and prep.inputs_key is not None:
            key = key_or_none("guild-process-step", self.process, self.version, step.name, fp, prep.inputs_key)
        if key is not None:
            found = self.tiers.get_many(NAMESPACE, [key])
            if key in found:
                out.value, out.identity, out.hits = found[key], key, 1
                return
        fut = self.guild.submit(adapter_for(step.ref), (prep.kwargs, prep.shared), **self._opts(step))
        value, pid = fut.result()
        out.value = value
        self._count(out, pid)
        if key is not None:
            self._store([(key, value)])
            out.identity = key
        else:
            out.identity, out.by_content = key_or_none("guild-process-value", value), True

    def _map(self, prep: Prepared, out: Outcome) -> None:
        step, items = prep.step, prep.items
        assert items is not None
        out.items = len(items)
        fp = self._fingerprint(step)
        item_keys: list[bytes | None] = [None] * len(items)
        if fp is not None and prep.inputs_key is not None:
            # The parts shared by every item are hashed once (a warm rerun is mostly this loop).
            head = key_or_none("guild-process-items", self.process, self.version, step.name, fp, prep.inputs_key)
            if head is not None:
                item_keys = [key_or_none(head, item) for item in items]
        wanted = [k for k in item_keys if k is not None]
        found = self.tiers.get_many(NAMESPACE, wanted) if wanted else {}
        results: list[Any] = [found.get(k) if k is not None else None for k in item_keys]
        missed = [i for i, k in enumerate(item_keys) if k is None or k not in found]
        out.hits = len(items) - len(missed)
        if missed:
            # Equal items of a cached step run once (see engine.batching).
            run, source = group_by_key([item_keys[i] for i in missed])
            todo = [missed[r] for r in run]
            out.duplicates = len(missed) - len(todo)
            self.guild._count_duplicates(out.duplicates)
            calls = [(items[i], step.map_param, prep.kwargs, prep.shared) for i in todo]
            computed = self.guild.map(adapter_for(step.ref), calls, **self._opts(step))
            values = [value for value, _pid in computed]
            for _value, pid in computed:
                self._count(out, pid)
            self._store([(item_keys[i], v) for i, v in zip(todo, values, strict=True) if item_keys[i] is not None])
            for i, value in zip(missed, spread(values, source), strict=True):
                results[i] = value
        out.value = results
        if all(k is not None for k in item_keys):
            out.identity = key_or_none("guild-process-map", item_keys)
        else:
            out.identity, out.by_content = key_or_none("guild-process-value", results), True

    @staticmethod
    def _count(out: Outcome, pid: int) -> None:
        if pid == os.getpid():
            out.inline += 1
        else:
            out.pids.add(pid)

    def _store(self, pairs: list[tuple[Any, Any]]) -> None:
        if not pairs:
            return
        try:
            self.tiers.set_many(NAMESPACE, pairs)
        except Exception as exc:  # a value the codec cannot store, a full disk
            log.warning("results of process %s were not cached: %s", self.process, exc)
