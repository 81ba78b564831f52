"""Settings of guildcore: typed sections, their sources, merge and checks.

This module covers the frozen ``Config`` records (one per section, each
field carrying its kind and a one-line help in its metadata: the one table of
settings; declared as frozen dataclasses are, without ``dataclasses``, which
a script's first ``Guild`` would wait ~25 ms for: ``_records.Declared``), reading the sources and merging them, lowest to highest:

    1. built-in defaults (the field defaults below)
    2. the fenced ```yaml block whose top key is ``performance:`` in
       ``.guild/instructions.md``
    3. ``.guild/config.yaml`` (sections at top level or under ``performance:``)
    4. ``GUILD_SECTION__KEY`` environment variables (``GUILD_POOL__MAX_AGENTS=4``;
       ``GUILD_CACHING__NAMESPACES__MINE__TTL=10m``), values read as YAML scalars.
       Only names with a ``__`` are settings; other ``GUILD_*`` names are ignored.
    5. keyword arguments by section (``pool={"max_agents": 4}``) and the flat
       shortcuts in ``SHORTCUTS`` (``max_agents=4``), which win over sections.

Every value remembers its source (``explain_config``, ``guild config show``),
and checks that span fields run on the merged result. The ``.guild`` folder is
found by walking up from the working directory; its parent is ``Config.root``.
It does not cover single values (sizes, durations: ``config_values.py``) or
acting on settings (each room reads its own section).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType

from guildcore._records import MISSING, Declared, field, fields
from guildcore.config_values import (
    BOOL,
    FRACTION,
    GB,
    MB,
    MIB,
    OPTIONAL_TEXT,
    PRELOAD,
    SIZE,
    TEXT,
    Kind,
    Origin,
    RawMap,
    bad_value,
    choice,
    duration,
    from_python,
    integer,
    parse_duration,
    parse_size,
    performance_block,
    plain,
    read_text,
    read_yaml,
    render_scalar,
)
from guildcore.errors import ConfigError

__all__ = [
    "AGENT_MODULES",
    "BUILTIN_NAMESPACES",
    "FOLLOWS_TTL",
    "SHORTCUTS",
    "CachingConfig",
    "Config",
    "LimitsConfig",
    "MonitoringConfig",
    "NamespacePolicy",
    "OptimizationConfig",
    "ParallelizationConfig",
    "PoolConfig",
    "StreamingConfig",
    "agent_cache_env",
    "explain_config",
    "find_guild_dir",
    "load_config",
    "parse_duration",
    "parse_size",
    "performance_yaml",
    "render_value",
    "usable_cpus",
]

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")
FALLBACK_CPUS = 5  # when neither sched_getaffinity nor cpu_count can tell
GUILD_DIR = ".guild"
DEFAULT = Origin("default")
KEYWORD = Origin("keyword argument")


def usable_cpus() -> int:
    """CPUs this process may run on: affinity mask, else ``os.cpu_count()``, else 5."""
    try:
        return len(os.sched_getaffinity(0)) or FALLBACK_CPUS
    except (AttributeError, OSError):
        return os.cpu_count() or FALLBACK_CPUS


def _setting(default: T, kind: Kind, help: str, *, template: str | None = None) -> T:
    meta = {"kind": kind, "help": help, "template": template}
    result: T = field(default=default, metadata=meta)
    return result


# -- the table of settings ---------------------------------------------------------------


class ParallelizationConfig(Declared):
    enabled: bool = _setting(True, BOOL, "false runs every task inline, in this process")
    max_parallel: int | None = _setting(
        None, integer(1, optional=True), "tasks at once; null = pool.max_agents"
    )
    strategy: str = _setting(
        "auto",
        choice("auto", "pool", "sequential", "adaptive"),
        "auto lets the router choose; adaptive also follows host load and memory",
    )
    backend: str = _setting(
        "local", choice("local", "dask", "dask-local"), "where tasks run: agents here, or Dask"
    )
    address: str | None = _setting(
        None, OPTIONAL_TEXT, "backend dask: the scheduler, e.g. tcp://host:8786"
    )
    scheduler_file: str | None = _setting(
        None, OPTIONAL_TEXT, "backend dask: a scheduler file instead of an address"
    )


class PoolConfig(Declared):
    min_agents: int = _setting(1, integer(0), "agents kept alive when idle")
    max_agents: int = field(
        default_factory=usable_cpus,
        metadata={
            "kind": integer(1, auto=usable_cpus),
            "help": "auto = usable CPUs",
            "template": "auto",
        },
    )
    idle_timeout: float = _setting(
        60.0, duration(), "an idle agent above min_agents stops after this"
    )
    scale_up_queue_length: int = _setting(
        3, integer(1), "queued tasks per agent before one more starts"
    )
    queue_strategy: str = _setting("priority", choice("priority", "fifo"), "order of queued tasks")
    balancing: str = _setting(
        "least_loaded", choice("least_loaded", "round_robin"), "which agent gets a task"
    )
    start_method: str = _setting(
        "auto", choice("auto", "forkserver", "fork", "spawn"), "auto: fork from a template when safe, else forkserver"
    )
    prefetch: int = _setting(2, integer(0), "tasks sent ahead to a busy agent")
    max_tasks_per_agent: int | None = _setting(
        None, integer(1, optional=True), "recycle an agent after N tasks"
    )
    retries: int = _setting(0, integer(0), "times a task is retried after its agent died")
    quarantine_after: int = _setting(
        2, integer(1), "a task that killed this many agents fails for good"
    )


class LimitsConfig(Declared):
    per_agent: int = _setting(100 * MB, SIZE, "private memory (RssAnon) one agent may use")
    total_system: int = _setting(512 * MB, SIZE, "supervisor + agents + caches, for the monitor")
    cache_size: int = _setting(256 * MB, SIZE, "in-process cache bytes, for the monitor")
    sample_interval: float = _setting(0.1, duration(), "how often busy agents' memory is sampled")
    timeout: float | None = _setting(30.0, duration(optional=True), "per task; null disables")
    timeout_grace: float = _setting(2.0, duration(allow_zero=True), "SIGTERM to SIGKILL on timeout")


class NamespacePolicy(Declared):
    """Policy of one cache namespace; ``ttl=None`` means no expiry within the store.

    ``scope`` is ``session`` (dropped when the supervisor stops) or
    ``persistent`` (kept in L3 across runs).
    """

    ttl: float | None = _setting(None, duration(optional=True), "null = no expiry")
    max_entries: int | None = _setting(None, integer(1, optional=True), "null = no cap")
    scope: str = _setting("persistent", choice("session", "persistent"), "session or persistent")


class FrozenMap(Mapping[str, NamespacePolicy]):
    """A read-only, hashable, picklable mapping of namespace policies.

    Not MappingProxyType: that cannot be pickled, and a Config travels to agents.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, NamespacePolicy] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> NamespacePolicy:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[str, NamespacePolicy]]]:
        return (FrozenMap, (self._data,))


# The one table of built-in namespaces (the cache's policies are made from
# it: guildcore.cache.policy). `result` (and any namespace declared without a
# ttl) follows caching.ttl; its entry here shows the default of 1 h.
BUILTIN_NAMESPACES = FrozenMap({
    # Per-process values such as resolved functions: never worth a disk round trip.
    "process": NamespacePolicy(None, 100, "session"),
    # Agent-level facts that stay true across runs.
    "agent": NamespacePolicy(None, None, "persistent"),
    "research": NamespacePolicy(3600.0, 50, "persistent"),
    # Routing decisions go stale when the agent set or the load changes.
    "routing": NamespacePolicy(1800.0, 100, "persistent"),
    # Task results: the general TTL, no cap (the disk budget bounds them).
    "result": NamespacePolicy(3600.0, None, "persistent"),
})  # fmt: skip
FOLLOWS_TTL = "result"
_NAMESPACE_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"  # no dots: keys are dotted paths; compiled at first use


class CachingConfig(Declared):
    enabled: bool = _setting(True, BOOL, "false turns every cache tier off")
    memory_cache: int = _setting(64 * MB, SIZE, "byte budget of the in-process L1 + L2")
    memory_entries: int = _setting(10000, integer(1), "entry cap of the in-process L1 + L2")
    disk_cache: int = _setting(1 * GB, SIZE, "LMDB map size (L3)")
    ttl: float = _setting(3600.0, duration(), "default time to live of an entry")
    path: str = _setting(".guild/cache", TEXT, "L3 folder, relative to the folder holding .guild")
    namespaces: Mapping[str, NamespacePolicy] = field(default_factory=lambda: BUILTIN_NAMESPACES)


class StreamingConfig(Declared):
    enabled: bool = _setting(True, BOOL, "generators stream chunk by chunk")
    stream_threshold: int = _setting(8 * MB, SIZE, "a result bigger than this moves in chunks")
    chunk_size: int = _setting(1 * MIB, SIZE, "bytes per chunk")
    window: int = _setting(4, integer(1), "credit window: chunks in flight")


class MonitoringConfig(Declared):
    enabled: bool = _setting(True, BOOL, "watch memory and load")
    check_interval: float = _setting(1.0, duration(), "how often the monitor samples")
    warning_threshold: float = _setting(
        0.80, FRACTION, "of limits: log, evict L1/L2, recycle idle agents"
    )
    critical_threshold: float = _setting(0.95, FRACTION, "of limits: caching off, one agent")
    alerts: bool = _setting(True, BOOL, "log an alert on each threshold crossing")
    metrics: bool = _setting(
        True, BOOL, "record task and agent metrics, run history and live status"
    )


# What an agent imports by itself on its first tasks (shared-memory results
# and streams, the context view): what `optimization.preload: true` preloads
# when nothing better is known of this project.
AGENT_MODULES = ("guildcore.engine.shmbuf", "guildcore.engine.ring", "guildcore.context.view")


class OptimizationConfig(Declared):
    preload: bool | tuple[str, ...] = _setting(
        (), PRELOAD, "modules agents import at start; true = what is likely"
    )
    streaming: bool = _setting(True, BOOL, "move big results in chunks")
    compression: bool = _setting(True, BOOL, "compress big cache values")

    def preload_modules(self, learned: Sequence[str] = ()) -> tuple[str, ...]:
        """The modules to preload: a list as given; ``true`` what is likely.

        Likely means ``learned`` (modules this project's functions needed
        before, where known), else guildcore's own ``AGENT_MODULES``.
        """
        if self.preload is True:
            return tuple(dict.fromkeys(learned)) or AGENT_MODULES
        if self.preload is False:
            return ()
        return self.preload


class Config(Declared):
    """The merged settings; ``root`` is the folder holding ``.guild`` (None if none)."""

    parallelization: ParallelizationConfig = field(default_factory=ParallelizationConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    caching: CachingConfig = field(default_factory=CachingConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    root: str | None = None

    def guild_dir(self) -> str | None:
        return None if self.root is None else os.path.join(self.root, GUILD_DIR)

    def cache_path(self) -> str:
        """Absolute L3 path: ``caching.path`` relative to ``root`` (else the working dir)."""
        base = self.root if self.root is not None else os.getcwd()
        return os.path.normpath(os.path.join(base, os.path.expanduser(self.caching.path)))

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (lists, not tuples) for display and JSON."""
        out: dict[str, Any] = {}
        for key, value in self.flat().items():
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = list(value) if isinstance(value, tuple) else value
        return out

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, e.g. ``caching.namespaces.result.ttl``."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                value = getattr(section, f.name)
                if f.name == "namespaces":
                    for ns, policy in value.items():
                        for pf in fields(NamespacePolicy):
                            out[f"{name}.namespaces.{ns}.{pf.name}"] = getattr(policy, pf.name)
                else:
                    out[f"{name}.{f.name}"] = value
        return out


# Section name -> its record class, in the order of Config's fields.
SECTIONS: Mapping[str, type[Any]] = MappingProxyType({
    "parallelization": ParallelizationConfig, "pool": PoolConfig, "limits": LimitsConfig,
    "caching": CachingConfig, "streaming": StreamingConfig, "monitoring": MonitoringConfig,
    "optimization": OptimizationConfig,
})  # fmt: skip
# Invariant: SECTIONS lists Config's fields but root, in order (checked at import).
assert list(SECTIONS) == [f.name for f in fields(Config) if f.name != "root"]
_KINDS: Mapping[str, Kind] = MappingProxyType({
    f"{name}.{f.name}": f.metadata["kind"] for name, cls in SECTIONS.items() for f in fields(cls) if "kind" in f.metadata
})  # fmt: skip
_POLICY_KINDS: Mapping[str, Kind] = MappingProxyType(
    {f.name: f.metadata["kind"] for f in fields(NamespacePolicy)}
)
SHORTCUTS: Mapping[str, str] = MappingProxyType({
    "max_agents": "pool.max_agents", "min_agents": "pool.min_agents", "per_agent": "limits.per_agent",
    "timeout": "limits.timeout", "start_method": "pool.start_method",
    "backend": "parallelization.backend", "address": "parallelization.address",
    "scheduler_file": "parallelization.scheduler_file",
})  # fmt: skip


def _kind(key: str) -> Kind:
    parts = key.split(".")
    return _POLICY_KINDS[parts[3]] if parts[1:2] == ["namespaces"] else _KINDS[key]


def render_value(key: str, value: object) -> str:
    """A value as a user would write it: ``100MB``, ``1h``, ``null``."""
    try:
        return _kind(key).render(value)
    except (KeyError, IndexError):
        return render_scalar(value)


# -- reading sources ---------------------------------------------------------------------


class _Entry(Declared):
    key: str  # the setting: pool.max_agents (caching.namespaces.NAME declares a namespace)
    shown: str  # as written in its source: performance.pool.max_agents
    raw: object
    origin: Origin


def _mapping(value: object, shown: str, origin: Origin) -> RawMap:
    if value is None:
        return RawMap(())
    if not isinstance(value, RawMap):
        raise bad_value(
            plain(value), shown, origin, "expected a mapping (key: value lines indented below it)"
        )
    return value


def _unknown(shown: str, name: str, options: Sequence[str], origin: Origin) -> ConfigError:
    import difflib  # only for this error's hint

    close = difflib.get_close_matches(name, options, n=1)
    fix = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(options)
    return ConfigError(
        f"unknown key {shown!r} in {origin}; {fix}",
        source=origin.source,
        line=origin.line,
        key=shown,
    )


def _items(tree: RawMap, prefix: str, source: str) -> Iterator[tuple[str, str, object, Origin]]:
    """(name, shown path, value, origin) of each key of ``tree``; a key given twice is an error."""
    seen: dict[str, Origin] = {}
    for name, value, line in tree.items:
        origin, shown = Origin(source, line), f"{prefix}{name}"
        if str(name) in seen:
            raise ConfigError(
                f"duplicate key {shown!r} in {origin} (first at {seen[str(name)]}); keep one of them",
                source=source, line=line, key=shown,
            )  # fmt: skip
        seen[str(name)] = origin
        yield str(name), shown, value, origin


def _walk(tree: RawMap, prefix: str, source: str, extra: Sequence[str] = ()) -> Iterator[_Entry]:
    """Entries of a mapping of sections, checked against the table of settings."""
    for name, shown, value, origin in _items(tree, prefix, source):
        if name not in SECTIONS:
            raise _unknown(shown, name, [*SECTIONS, *extra], origin)
        names = [f.name for f in fields(SECTIONS[name])]
        for fname, fshown, fvalue, forigin in _items(
            _mapping(value, shown, origin), f"{shown}.", source
        ):
            if fname not in names:
                raise _unknown(fshown, fname, names, forigin)
            if name == "caching" and fname == "namespaces":
                yield from _walk_namespaces(_mapping(fvalue, fshown, forigin), f"{fshown}.", source)
            else:
                yield _Entry(f"{name}.{fname}", fshown, plain(fvalue), forigin)


def _walk_namespaces(tree: RawMap, prefix: str, source: str) -> Iterator[_Entry]:
    for ns, shown, value, origin in _items(tree, prefix, source):
        if not re.match(_NAMESPACE_NAME, ns):
            raise bad_value(
                ns,
                shown,
                origin,
                "a namespace name is letters, digits, _ and -, starting with a letter",
            )
        yield _Entry(f"caching.namespaces.{ns}", shown, None, origin)
        for pname, pshown, pvalue, porigin in _items(
            _mapping(value, shown, origin), f"{shown}.", source
        ):
            if pname not in _POLICY_KINDS:
                raise _unknown(pshown, pname, list(_POLICY_KINDS), porigin)
            yield _Entry(f"caching.namespaces.{ns}.{pname}", pshown, plain(pvalue), porigin)


def _instructions_entries(text: str, source: str) -> Iterator[_Entry]:
    block, first = performance_block(text, source)
    doc = _mapping(read_yaml(block, source, first), "performance", Origin(source, first))
    for name, shown, value, origin in _items(doc, "", source):
        if name != "performance":
            raise _unknown(shown, name, ["performance"], origin)
        yield from _walk(_mapping(value, shown, origin), "performance.", source)


def _config_yaml_entries(text: str, source: str) -> Iterator[_Entry]:
    doc = _mapping(read_yaml(text, source, 1), "(top level)", Origin(source))
    for name, shown, value, origin in _items(doc, "", source):
        if name == "performance":
            yield from _walk(_mapping(value, shown, origin), "performance.", source)
        else:
            yield from _walk(
                RawMap(((name, value, origin.line),)), "", source, extra=["performance"]
            )


def _env_value(text: str) -> object:
    import yaml  # ~20 ms; loaded by the first load_config, not by import

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict):  # a subtree: GUILD_CACHING__NAMESPACES='{Mine: {ttl: 10m}}'
        return from_python(value)
    return value if value is None or isinstance(value, (str, int, float, list)) else text


def _env_entries(environ: Mapping[str, str]) -> Iterator[_Entry]:
    for name in sorted(environ):
        if not name.startswith("GUILD_") or "__" not in name:
            continue
        *parents, leaf = name[len("GUILD_") :].lower().split("__")
        tree = RawMap(((leaf, _env_value(environ[name]), None),))
        for part in reversed(parents):
            tree = RawMap(((part, tree, None),))
        yield from _walk(tree, "", f"env {name}")


def _override_entries(overrides: Mapping[str, Any]) -> Iterator[_Entry]:
    sections = tuple(
        (name, from_python(v), None) for name, v in overrides.items() if name not in SHORTCUTS
    )
    yield from _walk(RawMap(sections), "", KEYWORD.source, extra=list(SHORTCUTS))
    for name, value in overrides.items():
        if name in SHORTCUTS:  # flat shortcuts win over the same key given by section
            yield _Entry(SHORTCUTS[name], name, value, KEYWORD)


# -- merge and check ---------------------------------------------------------------------

if TYPE_CHECKING:
    _Values = dict[str, tuple[Any, Origin]]


def _merge(entries: Iterable[_Entry], values: _Values, declared: dict[str, Origin]) -> None:
    for entry in entries:
        if entry.key.count(".") == 2:  # caching.namespaces.NAME
            declared.setdefault(entry.key.split(".")[2], entry.origin)
        else:
            values[entry.key] = (
                _kind(entry.key).parse(entry.raw, entry.shown, entry.origin),
                entry.origin,
            )


def _conflict(values: _Values, a: str, relation: str, b: str, fix: str) -> ConfigError:
    (va, oa), (vb, ob) = values[a], values[b]
    blame_a = oa != DEFAULT
    blame = oa if blame_a else ob
    return ConfigError(
        f"{a} {render_value(a, va)} ({oa}) {relation} {b} {render_value(b, vb)} ({ob}); {fix}",
        source=blame.source, line=blame.line, key=a if blame_a else b, value=va if blame_a else vb,
    )  # fmt: skip


def _check(values: _Values) -> None:
    """Invariants across fields, on the merged values."""
    if values["pool.min_agents"][0] > values["pool.max_agents"][0]:
        raise _conflict(values, "pool.min_agents", "is greater than", "pool.max_agents",
                        "lower pool.min_agents or raise pool.max_agents")  # fmt: skip
    if values["monitoring.warning_threshold"][0] >= values["monitoring.critical_threshold"][0]:
        raise _conflict(values, "monitoring.warning_threshold", "is not below", "monitoring.critical_threshold",
                        "set the warning threshold below the critical one")  # fmt: skip
    _check_backend(values)


def _check_backend(values: _Values) -> None:
    """A Dask scheduler is named exactly when, and only when, backend dask is chosen."""
    backend, backend_origin = values["parallelization.backend"]
    given = [k for k in ("parallelization.address", "parallelization.scheduler_file") if values[k][0] is not None]
    if backend == "dask" and len(given) != 1:
        problem = "names no scheduler" if not given else "names two schedulers"
        raise ConfigError(
            f"parallelization.backend dask ({backend_origin}) {problem}; set exactly one of "
            "parallelization.address (tcp://host:8786) and parallelization.scheduler_file",
            source=backend_origin.source, line=backend_origin.line, key="parallelization.backend", value=backend,
        )  # fmt: skip
    if backend != "dask" and given:
        key = given[0]
        value, origin = values[key]
        raise ConfigError(
            f"{key} {render_value(key, value)} ({origin}) is read only by backend dask, and "
            f"parallelization.backend is {backend} ({backend_origin}); set backend: dask or remove {key}",
            source=origin.source, line=origin.line, key=key, value=value,
        )  # fmt: skip


def _build(
    values: _Values, declared: Mapping[str, Origin], root: str | None
) -> tuple[Config, dict[str, str]]:
    _check(values)
    sources = {key: str(origin) for key, (_, origin) in values.items()}
    namespaces: dict[str, NamespacePolicy] = {}
    for ns in declared:
        policy: dict[str, Any] = {}
        for pf in fields(NamespacePolicy):
            key = f"caching.namespaces.{ns}.{pf.name}"
            if key in values:
                policy[pf.name] = values[key][0]
            elif pf.name == "ttl":  # result, and namespaces declared without a ttl
                policy[pf.name], sources[key] = (
                    values["caching.ttl"][0],
                    "default (follows caching.ttl)",
                )
            else:
                policy[pf.name], sources[key] = pf.default, str(DEFAULT)
        namespaces[ns] = NamespacePolicy(**policy)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        kwargs = {
            f.name: values[f"{name}.{f.name}"][0] for f in fields(cls) if f.name != "namespaces"
        }
        if name == "caching":
            kwargs["namespaces"] = FrozenMap(namespaces)
        sections[name] = cls(**kwargs)
    config = Config(**sections, root=root)
    return config, {key: sources[key] for key in config.flat()}


def _defaults() -> tuple[_Values, dict[str, Origin]]:
    follows = f"caching.namespaces.{FOLLOWS_TTL}.ttl"
    values = {key: (value, DEFAULT) for key, value in Config().flat().items() if key != follows}
    return values, dict.fromkeys(BUILTIN_NAMESPACES, DEFAULT)


# -- public entry points -----------------------------------------------------------------


def find_guild_dir(start: str | os.PathLike[str] | None = None) -> str | None:
    """The nearest ``.guild`` folder at or above ``start`` (default: the working dir)."""
    here = os.path.abspath(os.fspath(start) if start is not None else os.getcwd())
    while True:
        candidate = os.path.join(here, GUILD_DIR)
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


# The .guild files' settings as read, by path and the name errors give
# them, with the text they were read from: every Guild made reads the files,
# and parsing instructions.md costs ~1 ms even with libyaml, where reading
# it and comparing its text costs microseconds. Converted values are
# immutable, so loads share them; an ``auto`` (the CPUs usable now) is
# converted again at each load.
_read_files: dict[tuple[str, str], tuple[str, _Values, dict[str, Origin], list[_Entry]]] = {}


def _merge_file(
    path: str, source: str, read: Callable[[str, str], Iterable[_Entry]], values: _Values, declared: dict[str, Origin]
) -> None:
    """One .guild file's settings into ``values``, parsed once for each text the file has had."""
    text = read_text(path, source)
    hit = _read_files.get((path, source))
    if hit is None or hit[0] != text:
        entries = list(read(text, source))
        file_values: _Values = {}
        file_declared: dict[str, Origin] = {}
        _merge(entries, file_values, file_declared)
        live = [
            e for e in entries
            if isinstance(e.raw, str) and e.raw.lower() in _AUTO and e.key in file_values and file_values[e.key][1] == e.origin
        ]  # fmt: skip
        hit = (text, file_values, file_declared, live)
        _read_files[(path, source)] = hit
    _text, file_values, file_declared, live = hit
    values.update(file_values)
    for name, origin in file_declared.items():
        declared.setdefault(name, origin)
    _merge(live, values, declared)


_AUTO = ("auto", "auto_detect")  # converted by the host's state when read (``integer(auto=...)``)


def explain_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Config, dict[str, str]]:
    """The merged Config and, for each dotted key, where its value came from."""
    start = os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())
    guild_dir = find_guild_dir(start)
    values, declared = _defaults()
    if guild_dir is not None:
        readers = (
            ("instructions.md", _instructions_entries),
            ("config.yaml", _config_yaml_entries),
        )
        for filename, read in readers:
            path = os.path.join(guild_dir, filename)
            if os.path.isfile(path):
                _merge_file(path, os.path.relpath(path, start), read, values, declared)
    _merge(_env_entries(os.environ if environ is None else environ), values, declared)
    _merge(_override_entries(overrides or {}), values, declared)
    return _build(values, declared, None if guild_dir is None else os.path.dirname(guild_dir))


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < instructions.md < config.yaml < GUILD_* env < ``overrides``; checked."""
    return explain_config(overrides, cwd=cwd, environ=environ)[0]


def agent_cache_env(config: Config) -> dict[str, str]:
    """``GUILD_*`` variables that give an agent's own cache this config's settings.

    ``@cached`` inside a task builds its cache from ``load_config()`` in the
    agent, which reads the project files and the environment but not the
    keyword arguments the ``Guild`` was made with. Every setting the cache
    reads (``caching.*``, ``optimization.compression``) therefore travels as
    a variable holding the merged value, JSON-encoded so that it reads back
    exactly; namespaces go as one mapping, so that their names keep their case
    (the names of variables are read lowercased).
    """
    env: dict[str, str] = {}
    for f in fields(CachingConfig):
        if f.name == "namespaces":
            continue
        value = config.cache_path() if f.name == "path" else getattr(config.caching, f.name)
        env[f"GUILD_CACHING__{f.name.upper()}"] = _json_text(value)
    env["GUILD_CACHING__NAMESPACES"] = _json_text({
        ns: {pf.name: getattr(policy, pf.name) for pf in fields(NamespacePolicy)}
        for ns, policy in config.caching.namespaces.items()
    })  # fmt: skip
    env["GUILD_OPTIMIZATION__COMPRESSION"] = _json_text(config.optimization.compression)
    return env


def _json_text(value: object) -> str:
    """``json.dumps(value)``, written here for the plain values of settings.

    Every Guild encodes its caching settings for its agents, and ``json``
    costs ~4 ms to import; anything but null, bools, ints, finite floats,
    plain printable ASCII text and mappings of those still goes through it.
    """
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if type(value) is int:
        return str(value)
    if type(value) is float and math.isfinite(value):
        return repr(value)
    if type(value) is str and value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    if type(value) is dict and all(type(k) is str for k in value):
        return "{" + ", ".join(f"{_json_text(k)}: {_json_text(v)}" for k, v in value.items()) + "}"
    import json

    return json.dumps(value)


def performance_yaml() -> str:
    """The ``performance:`` block with every default, commented: what ``guild init`` writes."""
    lines = ["performance:"]
    for name, cls in SECTIONS.items():
        lines.append(f"  {name}:")
        for f in fields(cls):
            if f.name == "namespaces":
                lines += _namespace_lines()
                continue
            default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc,operator]
            text = f.metadata["template"] or f.metadata["kind"].render(default)
            lines.append(_commented(f"    {f.name}: {text}", f.metadata["help"]))
    return "\n".join(lines) + "\n"


def _namespace_lines() -> list[str]:
    out = [
        _commented(
            "    namespaces:", "per namespace; add your own: mine: {ttl: 10m, max_entries: 5}"
        )
    ]
    for ns, policy in BUILTIN_NAMESPACES.items():
        parts = [
            f"{pf.name}: {_POLICY_KINDS[pf.name].render(getattr(policy, pf.name))}"
            for pf in fields(NamespacePolicy)
            if not (ns == FOLLOWS_TTL and pf.name == "ttl")
        ]
        note = "ttl follows caching.ttl" if ns == FOLLOWS_TTL else ""
        out.append(_commented(f"      {ns}: {{{', '.join(parts)}}}", note))
    return out


def _commented(text: str, note: str) -> str:
    return f"{text:<44} # {note}" if note else text
