"""An agent's identity for ``multiprocessing``, given the moment something there asks.

A child that ``multiprocessing`` forks runs ``BaseProcess._bootstrap``:
``current_process()`` is the child (its name, the daemon flag, its parent),
the start method is ``fork``, stdin is closed. Agents forked from the
template did the same, and paid for it: ``multiprocessing.context`` and
``util`` bring pickle, socket, subprocess and more, about 10 ms on the path
to a script's first result. Most callers never import ``multiprocessing``
(guildcore does not), and then nothing in an agent can ask who it is until
a task imports it. So such an agent does now only what needs no import
(stdin, the thread's native id), and leaves a finder on ``sys.meta_path``
that, once ``multiprocessing.context`` has loaded in the agent, makes
``current_process()`` the agent exactly as the bootstrap would have: a
task's ``current_process().name``, a log record's ``processName`` and
``get_start_method()`` read the same either way.

A caller that imported ``multiprocessing`` before its pool started keeps
the stdlib's bootstrap (``template._run_child``): its agents have those
modules already.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

# Loaded by every import of multiprocessing (its __init__ imports it), and
# it loads ``process`` first: once it has run, both can be set.
_TRIGGER = "multiprocessing.context"


def bootstrap(name: str, run: Callable[[], object]) -> int:
    """Run ``run()`` as a fork child named ``name``, as ``BaseProcess._bootstrap`` would; the exit code.

    The caller flushes the std streams before it exits (``template._serve``).
    """
    _close_stdin()
    native_id = getattr(threading.main_thread(), "_set_native_id", None)
    if native_id is not None:
        native_id()
    sys.meta_path.insert(0, Adopt(name, os.getppid()))
    try:
        run()
        return 0
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except BaseException:
        import traceback

        sys.stderr.write(f"Process {name}:\n")
        traceback.print_exc()
        return 1


class Adopt:
    """A ``sys.meta_path`` finder that finds nothing itself: it names the agent once multiprocessing loads."""

    def __init__(self, name: str, parent_pid: int) -> None:
        self.name = name
        self.parent_pid = parent_pid

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TRIGGER:
            return None
        try:
            sys.meta_path.remove(self)  # once; and the search below must not find this finder again
        except ValueError:
            pass
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenCall(spec.loader, self.adopt)
        return spec

    def adopt(self, context: ModuleType) -> None:
        """What ``BaseProcess._bootstrap`` sets in a fork child, set now that the modules exist."""
        from multiprocessing import process

        child = context.ForkProcess(name=self.name, daemon=True)
        # Made here, it would name this agent its own parent: the parent is
        # the template, as for a child the template's multiprocessing forked.
        child._parent_pid = self.parent_pid
        child._parent_name = "MainProcess"
        process._current_process = child  # type: ignore[attr-defined]
        process._parent_process = process._ParentProcess("MainProcess", self.parent_pid, None)  # type: ignore[attr-defined]
        process._children = set()  # type: ignore[attr-defined]
        process._process_counter = itertools.count(1)  # type: ignore[attr-defined]
        context._force_start_method("fork")


class _ThenCall:
    """A loader that runs ``then(module)`` after the real loader has executed the module."""

    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._then(module)
        except Exception:
            pass  # another Python's multiprocessing: it keeps its own idea of this process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)  # get_source (tracebacks), is_package, ...


def _close_stdin() -> None:
    """``multiprocessing.util._close_stdin``: a child reads nothing from the caller's terminal."""
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            sys.stdin = open(fd, encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the process
        except BaseException:
            os.close(fd)
            raise
    except (OSError, ValueError):
        pass
