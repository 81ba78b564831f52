"""Process definitions: the one model behind both front ends, and its checks.

A definition is a tree, the same whether read from YAML or built in Python::

    version: 1                  # optional, part of every step's cache key
    fail_fast: false            # optional: true stops every step at the first failure
    inputs: {n: 100}            # optional: the process inputs, with defaults ([n] = required)
    steps:
      NAME:
        run: module:function    # in Python, the function itself may be given
        needs: [OTHER, ...]     # steps that must finish first
        map: SOURCE             # one call per item of SOURCE (a list); or {param: SOURCE}
        inputs: {param: SOURCE} # parameter <- a process input or a step's output
        timeout: 30s            # per call (per item for a map); null: none
        retries: 0
        priority: 0             # lower runs first
        cache: true

A SOURCE is a process input, a step name, or ``name.key`` (one key of a
mapping). Sources that are steps are needs too, listed or not.

``build_definition`` checks the tree and returns a ``ProcessDef``; every
problem is a ``ConfigError`` that names the file, the step, the key path and
the line, like the errors of settings: unknown keys, bad values, unknown
steps, cycles, inputs no parameter takes, parameters nothing fills, and
functions that cannot be imported (each function is imported here, in the
caller, so a typo fails before any agent starts).

This module does not read files (``yamlfile``), build trees from Python
(``builder``) nor run anything (``runner``).
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guildcore.config_values import Origin, RawMap, bad_value, duration, integer, plain
from guildcore.errors import ConfigError
from guildcore.process.plan import find_cycle

__all__ = ["REQUIRED", "ProcessDef", "Source", "StepDef", "build_definition", "resolve"]

TOP_KEYS = ("version", "description", "fail_fast", "inputs", "steps")
STEP_KEYS = ("run", "needs", "map", "inputs", "timeout", "retries", "priority", "cache")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_TIMEOUT = duration(optional=True)
_RETRIES = integer(0)


class _Required:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a declared process input without a default


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value comes from: ``name`` (a process input or a step), and ``key`` in its output."""

    name: str
    key: str | None
    is_step: bool

    def __str__(self) -> str:
        return self.name if self.key is None else f"{self.name}.{self.key}"


@dataclass(frozen=True, slots=True)
class StepDef:
    name: str
    ref: str  # module:qualname of the function
    fn: Callable[..., Any] = field(repr=False, compare=False)
    needs: tuple[str, ...]  # listed and implied (by inputs and map), in definition order
    inputs: Mapping[str, Source]  # parameter -> source
    map_source: Source | None = None
    map_param: str | None = None  # None: each item is the first positional argument
    timeout_s: float | None = None
    has_timeout: bool = False  # False: the Guild's limits.timeout applies
    retries: int | None = None
    priority: int = 0
    cache: bool = True
    line: int | None = field(default=None, compare=False)  # where it is defined, for messages


@dataclass(frozen=True, slots=True)
class ProcessDef:
    name: str
    version: str
    steps: tuple[StepDef, ...]
    inputs: Mapping[str, Any] | None  # declared inputs and defaults (REQUIRED); None: implied
    fail_fast: bool
    source: str  # the file, or "process 'NAME' (app.py)", for messages
    description: str = ""

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules of the step functions, in step order: what agents should preload."""
        return tuple(dict.fromkeys(s.ref.partition(":")[0] for s in self.steps))

    def input_names(self) -> tuple[str, ...]:
        """Every process input: declared, or implied by the steps' sources."""
        if self.inputs is not None:
            return tuple(self.inputs)
        names = []
        for s in self.steps:
            for src in (*s.inputs.values(), *([s.map_source] if s.map_source else [])):
                if not src.is_step:
                    names.append(src.name)
        return tuple(dict.fromkeys(names))


# -- checking the tree ----------------------------------------------------------------------


class _Checker:
    """Walks one definition tree; ``where(key, line)`` makes the origin part of a message."""

    def __init__(self, name: str, source: str, default_line: int | None) -> None:
        self.name = name
        self.source = source
        self.default_line = default_line

    def origin(self, line: int | None) -> Origin:
        return Origin(self.source, line if line is not None else self.default_line)

    def error(self, problem: str, key: str, line: int | None, fix: str) -> ConfigError:
        origin = self.origin(line)
        return ConfigError(
            f"{problem} ({key} in {origin}); {fix}", source=origin.source, line=origin.line, key=key
        )

    def items(self, tree: object, key: str, line: int | None) -> Iterator[tuple[str, object, int | None]]:
        if tree is None:
            return
        if not isinstance(tree, RawMap):
            raise bad_value(plain(tree), key, self.origin(line), "expected a mapping (key: value lines indented below it)")
        seen: dict[str, int | None] = {}
        for k, v, at in tree.items:
            name = str(k)
            if name in seen:
                raise self.error(f"key {name!r} is given twice", f"{key}.{name}", at, "keep one of them")
            seen[name] = at
            yield name, v, at

    def unknown(self, key: str, name: str, options: Sequence[str], line: int | None) -> ConfigError:
        close = difflib.get_close_matches(name, options, n=1)
        fix = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(options)
        origin = self.origin(line)
        return ConfigError(f"unknown key {key!r} in {origin}; {fix}", source=origin.source, line=origin.line, key=key)


def build_definition(
    name: str, tree: object, source: str, *, default_line: int | None = None
) -> ProcessDef:
    """Check a definition tree (``RawMap`` from YAML or ``from_python``) and build the model."""
    if not _NAME.match(name):
        raise ConfigError(
            f"process name {name!r} in {source} is not a name; use letters, digits, '_' and '-'",
            source=source, key="name",
        )  # fmt: skip
    ck = _Checker(name, source, default_line)
    top = {k: (v, at) for k, v, at in ck.items(tree, "(top level)", default_line)}
    for k, (_v, at) in top.items():
        if k not in TOP_KEYS:
            raise ck.unknown(k, k, TOP_KEYS, at)
    version = str(plain(top.get("version", (1, None))[0]))
    fail_fast = _flag(ck, top, "fail_fast", False)
    description = str(plain(top.get("description", ("", None))[0]) or "")
    declared = _declared_inputs(ck, top.get("inputs"))
    steps_tree, steps_line = top.get("steps", (None, default_line))
    raw_steps = list(ck.items(steps_tree, "steps", steps_line))
    if not raw_steps:
        raise ck.error(f"process {name!r} has no steps", "steps", steps_line, "add at least one step under steps:")
    names = [n for n, _v, _at in raw_steps]
    for n, _v, at in raw_steps:
        if not _NAME.match(n):
            raise ck.error(f"step name {n!r} is not a name", f"steps.{n}", at, "use letters, digits, '_' and '-'")
        if declared is not None and n in declared:
            raise ck.error(f"{n!r} is both a step and a process input", f"steps.{n}", at, "rename one of them")
    steps = tuple(_step(ck, n, v, at, names, declared) for n, v, at in raw_steps)
    cycle = find_cycle([s.name for s in steps], {s.name: s.needs for s in steps})
    if cycle is not None:
        first = next(s for s in steps if s.name == cycle[0])
        path = " -> ".join(cycle)
        raise ck.error(
            f"steps form a cycle: {path}", f"steps.{first.name}.needs", first.line,
            "remove one of these needs (or the input that implies it)",
        )  # fmt: skip
    return ProcessDef(name, version, steps, declared, fail_fast, source, description)


def _flag(ck: _Checker, top: Mapping[str, tuple[object, int | None]], key: str, default: bool) -> bool:
    value, at = top.get(key, (default, None))
    value = plain(value)
    if not isinstance(value, bool):
        raise bad_value(value, key, ck.origin(at), "expected true or false")
    return value


def _declared_inputs(ck: _Checker, entry: tuple[object, int | None] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    value, at = entry
    out: dict[str, Any] = {}
    if isinstance(value, list | tuple):
        pairs: list[tuple[object, object, int | None]] = [(v, REQUIRED, at) for v in value]
    elif isinstance(value, RawMap):
        pairs = [(k, plain(v), line) for k, v, line in ck.items(value, "inputs", at)]
    else:
        raise bad_value(plain(value), "inputs", ck.origin(at), "expected a list of input names or a mapping of names to defaults")
    for k, default, line in pairs:
        if not isinstance(k, str) or not _NAME.match(k):
            raise bad_value(k, "inputs", ck.origin(line), "an input name is letters, digits, '_' and '-'")
        out[k] = default
    return out


def _source(
    ck: _Checker, text: object, key: str, line: int | None, steps: Sequence[str], declared: Mapping[str, Any] | None
) -> Source:
    if not isinstance(text, str) or not text:
        raise bad_value(plain(text), key, ck.origin(line), "expected the name of a process input or a step (or step.key)")
    head, _dot, rest = text.partition(".")
    if not _NAME.match(head) or (_dot and not rest):
        raise bad_value(text, key, ck.origin(line), "expected the name of a process input or a step (or step.key)")
    if head in steps:
        return Source(head, rest or None, True)
    if declared is not None and head not in declared:
        options = [*steps, *declared]
        raise ck.error(
            f"{head!r} is neither a step nor a declared process input", key, line,
            _did_you_mean(head, options, "steps and inputs"),
        )  # fmt: skip
    return Source(head, rest or None, False)


def _did_you_mean(name: str, options: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    listed = ", ".join(options) if options else "none"
    return (f"did you mean {close[0]!r}? " if close else "") + f"{what}: {listed}"


_Entries = Mapping[str, tuple[object, "int | None"]]


def _step(
    ck: _Checker, name: str, tree: object, line: int | None, steps: Sequence[str], declared: Mapping[str, Any] | None
) -> StepDef:
    base = f"steps.{name}"
    entries = {k: (v, at) for k, v, at in ck.items(tree, base, line)}
    for k, (_v, at) in entries.items():
        if k not in STEP_KEYS:
            raise ck.unknown(f"{base}.{k}", k, STEP_KEYS, at)
    if "run" not in entries:
        raise ck.error(f"step {name!r} has nothing to run", base, line, "add run: module:function")
    ref, fn = _function(ck, name, *entries["run"])
    needs = _needs(ck, name, entries, line, steps)
    inputs: dict[str, Source] = {}
    inputs_value, inputs_line = entries.get("inputs", (None, line))
    for param, src, at in ck.items(inputs_value, f"{base}.inputs", inputs_line):
        inputs[param] = _source(ck, plain(src), f"{base}.inputs.{param}", at, steps, declared)
    map_source, map_param = _map(ck, name, entries, inputs, steps, declared)
    for src in (*inputs.values(), *([map_source] if map_source else [])):
        if src.is_step:  # a step read is a step needed
            if src.name == name:
                raise ck.error(f"step {name!r} takes its own output", base, line, "a step cannot read what it returns")
            needs.append(src.name)
    _check_signature(ck, name, ref, fn, inputs, map_source is not None, map_param, line)
    return StepDef(
        name=name, ref=ref, fn=fn, needs=tuple(dict.fromkeys(needs)), inputs=inputs,
        map_source=map_source, map_param=map_param, line=line, **_options(ck, base, entries),
    )  # fmt: skip


def _needs(ck: _Checker, name: str, entries: _Entries, line: int | None, steps: Sequence[str]) -> list[str]:
    key = f"steps.{name}.needs"
    value, at = entries.get("needs", (None, line))
    listed = plain(value)
    listed = [listed] if isinstance(listed, str) else [] if listed is None else listed
    if not isinstance(listed, list | tuple):
        raise bad_value(listed, key, ck.origin(at), "expected a list of step names")
    for need in listed:
        if need == name:
            raise ck.error(f"step {name!r} needs itself", key, at, "remove it from its needs")
        if need not in steps:
            raise ck.error(
                f"step {name!r} needs {need!r}, which is not a step", key, at,
                _did_you_mean(str(need), [s for s in steps if s != name], "steps"),
            )  # fmt: skip
    return list(listed)


def _map(
    ck: _Checker, name: str, entries: _Entries, inputs: Mapping[str, Source],
    steps: Sequence[str], declared: Mapping[str, Any] | None,
) -> tuple[Source | None, str | None]:  # fmt: skip
    """The map source, and the parameter that takes each item (None: the first one)."""
    if "map" not in entries:
        return None, None
    key = f"steps.{name}.map"
    value, at = entries["map"]
    if not isinstance(value, RawMap):
        return _source(ck, plain(value), key, at, steps, declared), None
    pairs = list(ck.items(value, key, at))
    if len(pairs) != 1:
        raise ck.error(
            f"step {name!r} maps over {len(pairs)} sources", key, at,
            "map takes one source: map: SOURCE, or map: {param: SOURCE}",
        )  # fmt: skip
    param, src, src_line = pairs[0]
    if param in inputs:
        raise ck.error(f"parameter {param!r} is both mapped and an input", key, src_line, "keep one")
    return _source(ck, plain(src), f"{key}.{param}", src_line, steps, declared), param


def _options(ck: _Checker, base: str, entries: _Entries) -> dict[str, Any]:
    """timeout, retries, priority and cache, checked."""
    out: dict[str, Any] = {"has_timeout": "timeout" in entries}
    if "timeout" in entries:
        value, at = entries["timeout"]
        out["timeout_s"] = _TIMEOUT.parse(plain(value), f"{base}.timeout", ck.origin(at))
    if "retries" in entries:
        value, at = entries["retries"]
        out["retries"] = _RETRIES.parse(plain(value), f"{base}.retries", ck.origin(at))
    priority, at = entries.get("priority", (0, None))
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise bad_value(plain(priority), f"{base}.priority", ck.origin(at), "expected a whole number (lower runs first)")
    cache, at = entries.get("cache", (True, None))
    if not isinstance(cache, bool):
        raise bad_value(plain(cache), f"{base}.cache", ck.origin(at), "expected true or false")
    out["priority"], out["cache"] = priority, cache
    return out


def _function(ck: _Checker, step: str, value: object, line: int | None) -> tuple[str, Callable[..., Any]]:
    """The step's ``module:qualname`` and the function, imported here so typos fail early."""
    key = f"steps.{step}.run"
    if callable(value):  # the Python front end
        from guildcore.keys import fn_ref

        ref = fn_ref(value)
        if "<" in ref or resolve(ref)[0] is not value:
            raise ck.error(
                f"step {step!r} runs {ref}, which agents cannot import by name", key, line,
                "define the function at module level (lambdas and nested functions have no importable name)",
            )  # fmt: skip
        return ref, value
    if not isinstance(value, str) or not _REF.match(value):
        raise bad_value(plain(value), key, ck.origin(line), "expected module:function such as mypkg.tasks:rewrite")
    fn, problem, fix = resolve(value)
    if fn is None:
        raise ck.error(f"step {step!r} runs {value}, which cannot be imported: {problem}", key, line, fix)
    return value, fn


def resolve(ref: str) -> tuple[Any, str, str]:
    """Import ``module:qualname``: (the object or None, what went wrong, how to fix it)."""
    import importlib

    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        where = os.getcwd()
        return None, f"{type(exc).__name__}: {exc}", (
            f"check the module name; modules are imported from sys.path (the project folder with guild run; "
            f"the working directory is {where})"
        )
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            owner = getattr(obj, "__name__", module_name)
            fix = f"did you mean {close[0]!r}?" if close else f"check the name in {getattr(sys.modules.get(module_name), '__file__', module_name)}"
            return None, f"{owner} has no attribute {part!r}", fix
    if not callable(obj):
        return None, f"it names a {type(obj).__name__}, not a function", "point run: at a function"
    return obj, "", ""


def _check_signature(
    ck: _Checker, step: str, ref: str, fn: Callable[..., Any], inputs: Mapping[str, Source],
    mapped: bool, map_param: str | None, line: int | None,
) -> None:  # fmt: skip
    """Every input names a parameter, and every parameter without a default gets a value."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return  # builtins without a signature: the call itself will say
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    given = dict.fromkeys(inputs)
    if map_param is not None:
        given[map_param] = None
    for param in given:
        if param not in named and not takes_any:
            where = f"steps.{step}.map" if param == map_param else f"steps.{step}.inputs.{param}"
            raise ck.error(
                f"step {step!r} passes {param!r}, but {ref} takes no parameter {param!r}", where, line,
                "its parameters: " + (", ".join(named) or "none"),
            )  # fmt: skip
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    first = None
    if mapped and map_param is None:
        if not positional and not any(p.kind is p.VAR_POSITIONAL for p in params):
            raise ck.error(
                f"step {step!r} maps, but {ref} takes no positional parameter for the item",
                f"steps.{step}.map", line, "add one, or name it: map: {param: SOURCE}",
            )  # fmt: skip
        first = positional[0].name if positional else None
    for p in params:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in given or p.name == first:
            continue
        raise ck.error(
            f"step {step!r}: parameter {p.name!r} of {ref} gets no value", f"steps.{step}", line,
            f"add it under inputs ({p.name}: SOURCE), or give it a default",
        )  # fmt: skip
