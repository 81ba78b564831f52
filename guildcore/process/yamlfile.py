"""The YAML front end: ``.guild/processes/NAME.yaml`` into the process model.

The file is read with the same reader as the settings files
(``config_values.read_yaml``), which keeps the line of every key, so every
error names the file, the step, the key and its line. The process is named
after the file (``squares.yaml`` is ``squares``).

``modules_named`` reads the ``run:`` lines without importing anything: what
``optimization.preload: [process:NAME]`` needs at Guild start.
"""

from __future__ import annotations

import os

from guildcore.config_values import RawMap, read_text, read_yaml
from guildcore.process.model import ProcessDef, build_definition

__all__ = ["load_text", "modules_named", "process_name"]

SUFFIXES = (".yaml", ".yml")


def process_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def load_text(text: str, source: str, name: str) -> ProcessDef:
    """Check and build the definition in ``text`` (the file's content; ``source`` names it)."""
    return build_definition(name, read_yaml(text, source, 1), source, default_line=1)


def modules_named(path: str, source: str) -> list[str]:
    """The modules of the ``run:`` functions of the file, in order, not imported."""
    tree = read_yaml(read_text(path, source), source, 1)
    out: list[str] = []
    for top, value, _line in tree.items if isinstance(tree, RawMap) else ():
        if top != "steps" or not isinstance(value, RawMap):
            continue
        for _step, spec, _at in value.items:
            for key, run, _l in spec.items if isinstance(spec, RawMap) else ():
                if key == "run" and isinstance(run, str) and ":" in run:
                    out.append(run.partition(":")[0])
    return list(dict.fromkeys(out))
