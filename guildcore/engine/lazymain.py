"""Agents import the caller's script only when a task needs something from it.

multiprocessing makes every forkserver child re-run the parent's ``__main__``
(the script) before it does anything else. For an agent that is waste and a
hazard: a script that imports pandas makes every agent import pandas even
when its tasks live in other modules, and a script without an
``if __name__ == "__main__":`` guard runs its work again in every agent.

So in a guildcore agent started through the forkserver, ``__main__`` is a
``LazyMain`` module: the script runs (as ``__mp_main__``, like the stdlib
does) the first time anything looks up a name in it, for example
``__main__:square`` as a task's function, an initializer defined in the
script, or a pickled instance of a class the script defines. Tasks whose
functions live in importable modules never run the script at all.

A Guild created while an agent runs the script is a script without the
guard: ``Guild()`` raises (see ``check_not_importing_main``) and the task
that needed the script fails with a ``SerializationError`` that says how to
fix it, instead of the script's work running again inside the agent.

This module covers the forkserver start method, where the hook is installed
in the forkserver by preloading ``forkserver_hooks`` (the caller's own
``multiprocessing`` is never changed). ``spawn`` children run the
script before any guildcore code can step in (the stdlib behaviour), and
agents forked from the template inherit the caller's ``__main__`` as it was
when the Guild was made (names defined later come from a ``LazyMain``: see
``template``). A forkserver that other code started before the first Guild
did not preload the hooks, so its agents also run the script at start, as
the stdlib does; a script read from stdin then cannot start them.
"""

from __future__ import annotations

import os
import sys
import threading
import types

from guildcore._errors import SerializationError

AGENT_NAME_PREFIX = "guild-agent-"

_UNGUARDED = (
    "a Guild was created while an agent imported your script: agents import the script "
    "to find functions and classes defined in it, and this script creates a Guild when "
    'imported. Put the code that creates the Guild under  if __name__ == "__main__":'
)

_loading_in: int | None = None  # the thread running the caller's script, while it runs
# The reader thread may decode a pickle that names the script while the main
# thread loads it: one load, and lookups wait for it. Reentrant, so the
# script's own lookups of __main__ while it runs do not deadlock.
_load_lock = threading.RLock()
_previous_mains: list[types.ModuleType] = []  # kept alive, as the stdlib does


class LazyMain(types.ModuleType):
    """A ``__main__`` that runs the caller's script on the first lookup of a name."""

    def __init__(self, kind: str, target: str) -> None:
        super().__init__("__mp_main__")
        self._guild_kind = kind  # "path" or "name" (python -m)
        self._guild_target = target
        self._guild_state = "lazy"  # then "loading", then "loaded" or "failed"
        self._guild_error: SerializationError | None = None
        if kind == "path":
            self.__file__ = target

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # probes such as __path__ must not run a script
        if self._guild_state in ("lazy", "loading"):
            with _load_lock:
                if self._guild_state == "lazy":
                    self._guild_load(name)
        if self._guild_error is not None:
            raise self._guild_error
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module '__main__' ({self._guild_target}) has no attribute {name!r}") from None

    def _guild_load(self, wanted: str) -> None:
        global _loading_in
        import runpy

        self._guild_state = "loading"
        _loading_in = threading.get_ident()
        try:
            if self._guild_kind == "name":
                names = runpy.run_module(self._guild_target, run_name="__mp_main__", alter_sys=True)
            else:
                names = runpy.run_path(self._guild_target, run_name="__mp_main__")
        except BaseException as exc:
            if isinstance(exc, SerializationError) and str(exc) == _UNGUARDED:
                why = (
                    f"your script {self._guild_target} creates a Guild when imported, and agents "
                    f"import it to find {wanted!r}. Put the code that creates the Guild under  "
                    'if __name__ == "__main__":'
                )
            else:
                why = (
                    f"the agent could not run your script {self._guild_target} to find {wanted!r} "
                    f"({type(exc).__name__}: {exc}); agents import the script to reach what it defines"
                )
            error = SerializationError(why)
            error.__cause__ = exc
            self._guild_error = error  # Invariant: set before the state says "failed"
            self._guild_state = "failed"
            return
        finally:
            _loading_in = None
        self.__dict__.update(names)
        self._guild_state = "loaded"


def loading() -> bool:
    """Whether this thread is running the caller's script (in an agent) right now."""
    return _loading_in is not None and _loading_in == threading.get_ident()


def check_not_importing_main() -> None:
    """Refuse to build a Guild inside an agent that is running the caller's script.

    Only a script without an ``if __name__ == "__main__":`` guard does that,
    and going on would run the script's work again inside the agent.
    """
    inheriting = False
    if "multiprocessing" in sys.modules:
        from multiprocessing import process

        inheriting = bool(getattr(process.current_process(), "_inheriting", False))
    if loading() or inheriting:
        raise SerializationError(_UNGUARDED)


def _in_agent() -> bool:
    from multiprocessing import process

    return process.current_process().name.startswith(AGENT_NAME_PREFIX)


def _install(kind: str, target: str) -> None:
    current = sys.modules["__main__"]
    _previous_mains.append(current)
    module = LazyMain(kind, target)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def caller_main() -> tuple[str, str] | None:
    """How the caller's script was started, while ``__main__`` still says so.

    ``("path", file)`` for ``python script.py``, ``("name", module)`` for
    ``python -m module``, None for anything agents cannot import (``-c``, a
    script read from stdin, an interactive session). Taken when a Guild is
    made: CPython deletes ``__main__.__file__`` once the script has run, and
    agents started after that (for work that ``shutdown(wait=False)`` left
    to finish at exit) must still find the script. Forkserver and spawn
    agents get it in their settings (``ensure_main``).
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        if name != "__main__" and not name.endswith(".__main__"):
            return ("name", name)
        return None
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and os.path.isfile(path):
        return ("path", os.path.normpath(os.path.abspath(path)))
    return None


def ensure_main(main: tuple[str, str] | None) -> None:
    """In a new agent: give it the caller's script as a ``LazyMain`` if it has none.

    The forkserver's hooks do this from the preparation data, which names
    the script only while it runs: an agent started after the script has
    finished (work left to finish at exit) gets it from its settings.
    ``main`` is ``caller_main()``; None for agents that inherit
    ``__main__`` (forked) or callers without a script.
    """
    if main is None:
        return
    current = sys.modules.get("__main__")
    if isinstance(current, LazyMain) or getattr(current, "__file__", None) is not None:
        return
    if getattr(getattr(current, "__spec__", None), "name", None) == main[1]:
        return
    _install(*main)


def install_hooks() -> None:
    """Make forkserver children named ``guild-agent-*`` get a ``LazyMain``.

    Installed in the forkserver (``forkserver_hooks`` is preloaded there) and
    harmless elsewhere: other processes, including other libraries' workers
    started through the same forkserver, keep the stdlib behaviour.
    """
    from multiprocessing import spawn

    by_path = getattr(spawn, "_fixup_main_from_path", None)
    by_name = getattr(spawn, "_fixup_main_from_name", None)
    if by_path is None or by_name is None or getattr(by_path, "_guild_lazy", False):
        return  # another Python, or already installed

    def fixup_from_path(main_path: str) -> None:
        if not _in_agent():
            return by_path(main_path)  # type: ignore[no-any-return]
        name = os.path.splitext(os.path.basename(main_path))[0]
        current = sys.modules["__main__"]
        if name == "ipython" or getattr(current, "__file__", None) == main_path:
            return by_path(main_path)  # type: ignore[no-any-return]  # the stdlib's own early returns
        _install("path", main_path)
        return None

    def fixup_from_name(mod_name: str) -> None:
        if not _in_agent():
            return by_name(mod_name)  # type: ignore[no-any-return]
        current = sys.modules["__main__"]
        if mod_name == "__main__" or mod_name.endswith(".__main__"):
            return by_name(mod_name)  # type: ignore[no-any-return]
        if getattr(current.__spec__, "name", None) == mod_name:
            return None
        _install("name", mod_name)
        return None

    fixup_from_path._guild_lazy = True  # type: ignore[attr-defined]
    spawn._fixup_main_from_path = fixup_from_path  # type: ignore[attr-defined]
    spawn._fixup_main_from_name = fixup_from_name  # type: ignore[attr-defined]
