"""Finding processes, the session cache of definitions, and the record of recent runs.

- ``locate(name, config)``: ``.guild/processes/NAME.yaml`` (or ``.yml``) of
  the project, or a path to a YAML file; ``module:attr`` names a ``Process``
  defined in Python.
- ``definition(process, config, tiers)``: the checked ``ProcessDef``. YAML
  definitions are cached in the ``process`` namespace (session scope) under
  the file's path and the xxh3 hash of its bytes: a Guild parses, checks and
  imports a file once, and again only when its bytes change.
- ``record_run`` / ``recent``: the processes run most recently in this
  project and their modules, most recent first. This record lives in the
  persistent ``agent`` namespace ("agent-level facts that stay true across
  runs"), not in ``process``: that one is gone when the program ends, and
  preloading must know what the *previous* programs ran.

It does not run anything (``runner``) nor start agents (``preload``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guildcore.config import Config
from guildcore.errors import ConfigError
from guildcore.process.builder import Process
from guildcore.process.model import ProcessDef
from guildcore.process.yamlfile import SUFFIXES, load_text

if TYPE_CHECKING:
    from guildcore.cache import TieredCache

__all__ = ["RECENT_KEY", "Located", "definition", "locate", "recent", "record_run"]

DEFINITIONS = "process"  # session namespace: parsed definitions by file hash
RECORDS = "agent"  # persistent namespace: the recent-runs record
RECENT_KEY = b"process:recent"
RECENT_KEPT = 8  # processes remembered, most recent first


@dataclass(frozen=True, slots=True)
class Located:
    """A process found by name: its YAML file, or its Python object."""

    name: str
    path: str | None = None
    source: str = ""  # the path as messages show it
    obj: Process | None = None


def processes_dir(config: Config) -> str | None:
    guild_dir = config.guild_dir()
    return None if guild_dir is None else os.path.join(guild_dir, "processes")


def available(config: Config) -> list[str]:
    """The names of the project's YAML processes."""
    folder = processes_dir(config)
    if folder is None or not os.path.isdir(folder):
        return []
    names = [f.rsplit(".", 1)[0] for f in os.listdir(folder) if f.endswith(SUFFIXES)]
    return sorted(set(names))


def locate(name: str, config: Config) -> Located:
    """Find the process called ``name`` (or at the path ``name``, or the Python ``module:attr``)."""
    if name.endswith(SUFFIXES) or os.sep in name:
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise ConfigError(f"no process file {name!r}; check the path", source=name, key="process")
        from guildcore.process.yamlfile import process_name

        return Located(process_name(path), path, _shown(path))
    if ":" in name:
        return Located(name, obj=_python_process(name))
    folder = processes_dir(config)
    for suffix in SUFFIXES:
        path = os.path.join(folder, name + suffix) if folder is not None else ""
        if folder is not None and os.path.isfile(path):
            return Located(name, path, _shown(path))
    if folder is None:
        where = "no .guild folder here or above the working directory (guild init creates one)"
    else:
        found = available(config)
        where = f"no {name}.yaml in {_shown(folder)}; " + (f"processes: {', '.join(found)}" if found else "it has no processes")
    raise ConfigError(f"unknown process {name!r}: {where}", source=folder, key="process", value=name)


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _python_process(ref: str) -> Process:
    import importlib

    module_name, _, attr = ref.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"cannot import the process {ref} ({type(exc).__name__}: {exc}); MODULE:ATTR names a "
            "guildcore.Process in an importable module (the project folder is on sys.path)",
            source=ref, key="process",
        ) from None  # fmt: skip
    if not isinstance(obj, Process):
        raise ConfigError(f"{ref} is a {type(obj).__name__}, not a guildcore.Process", source=ref, key="process")
    return obj


def definition(
    process: str | Process | ProcessDef, config: Config, tiers: TieredCache | None
) -> tuple[ProcessDef, str]:
    """The checked definition and how it was had: ``parsed``, ``cached`` or ``python``."""
    if isinstance(process, ProcessDef):
        return process, "python"
    if isinstance(process, Process):
        return process.definition(), "python"
    located = locate(process, config)
    if located.obj is not None:
        return located.obj.definition(), "python"
    assert located.path is not None
    try:
        with open(located.path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {located.source} ({exc})", source=located.source) from None
    import xxhash

    key = b"def:" + located.path.encode() + b":" + xxhash.xxh3_128_digest(data)
    if tiers is not None:
        cached = tiers.get(DEFINITIONS, key)
        if isinstance(cached, ProcessDef):
            return cached, "cached"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{located.source} is not UTF-8 ({exc})", source=located.source) from None
    built = load_text(text, located.source, located.name)
    if tiers is not None:
        tiers.set(DEFINITIONS, key, built)
    return built, "parsed"


def recent(tiers: TieredCache) -> list[dict[str, Any]]:
    """The processes run most recently in this project: ``{name, modules, at}``, newest first."""
    try:
        value = tiers.get(RECORDS, RECENT_KEY)
    except Exception:
        return []
    if not isinstance(value, list):
        return []
    return [r for r in value if isinstance(r, dict) and isinstance(r.get("name"), str)]


def record_run(tiers: TieredCache, name: str, modules: tuple[str, ...] | list[str]) -> None:
    """Put ``name`` first in the project's recent-runs record (never fails the run)."""
    entry = {"name": name, "modules": list(modules), "at": time.time()}
    try:
        rest = [r for r in recent(tiers) if r.get("name") != name]
        tiers.set(RECORDS, RECENT_KEY, [entry, *rest][:RECENT_KEPT])
    except Exception:
        pass  # a full or read-only store must not fail a finished run
