"""The Python front end: ``Process`` builds the same tree as a YAML file.

Both forms below become the definition tree of ``model`` (``from_python``
keeps the tree's shape; lines are the line of the ``Process(...)`` call), so
a process defined in Python is checked, cached and run exactly like
``.guild/processes/NAME.yaml``, and the same process (name, version, steps,
functions) written either way shares its cached results.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guildcore.config_values import from_python
from guildcore.process.model import ProcessDef, build_definition

__all__ = ["Process"]

_UNSET: Any = object()  # Process.step(timeout=...) not given: the Guild's limits.timeout


class Process:
    """A process defined in Python: the same model as ``.guild/processes/NAME.yaml``.

    Either give every step at once, with the keys of the YAML form
    (``run`` may be the function itself)::

        squares = Process("squares", steps={
            "numbers": {"run": step_list, "inputs": {"n": "n"}},
            "squares": {"run": step_square, "map": "numbers"},
            "total": {"run": step_total, "inputs": {"xs": "squares"}},
        })

    or add steps with the decorator (the step is named after the function
    unless a name is given; the function is returned unchanged)::

        squares = Process("squares")

        @squares.step(inputs={"n": "n"})
        def numbers(n): return list(range(n))

    Run it with ``g.run_process(squares, n=200)``. Step functions must be
    module-level: agents import them by name.
    """

    def __init__(
        self,
        name: str,
        steps: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        version: str | int = 1,
        inputs: Sequence[str] | Mapping[str, Any] | None = None,
        fail_fast: bool = False,
        description: str = "",
    ) -> None:
        caller = sys._getframe(1)
        self.name = name
        self._where = f"process {name!r} ({os.path.basename(caller.f_code.co_filename)})"
        self._line: int | None = caller.f_lineno
        self._steps: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (steps or {}).items()}
        self._top: dict[str, Any] = {"version": version, "fail_fast": fail_fast, "description": description}
        if inputs is not None:
            self._top["inputs"] = list(inputs) if not isinstance(inputs, Mapping) else dict(inputs)
        self._built: ProcessDef | None = None

    def step(
        self,
        name: str | None = None,
        /,
        *,
        needs: Sequence[str] = (),
        map: str | Mapping[str, str] | None = None,  # the YAML key's name, though a builtin
        inputs: Mapping[str, str] | None = None,
        timeout: float | str | object | None = _UNSET,
        retries: int | None = None,
        priority: int = 0,
        cache: bool = True,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: add the function as a step (named ``name`` or after the function)."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            spec: dict[str, Any] = {"run": fn, "needs": list(needs), "priority": priority, "cache": cache}
            if map is not None:
                spec["map"] = map
            if inputs is not None:
                spec["inputs"] = dict(inputs)
            if timeout is not _UNSET:
                spec["timeout"] = timeout
            if retries is not None:
                spec["retries"] = retries
            self._steps[name or fn.__name__] = spec
            self._built = None
            return fn

        return add

    def definition(self) -> ProcessDef:
        """The checked model (built once; adding a step builds it again)."""
        if self._built is None:
            tree = from_python({**self._top, "steps": self._steps})
            self._built = build_definition(self.name, tree, self._where, default_line=self._line)
        return self._built

    def __repr__(self) -> str:
        return f"<Process {self.name!r} steps={list(self._steps)}>"
