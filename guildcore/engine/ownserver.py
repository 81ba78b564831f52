"""guildcore's own forkserver, for when the interpreter's is already running without guildcore.

multiprocessing keeps one forkserver per interpreter, and preloads modules
into it only when it first starts. A program that used a forkserver before
its first Guild (a ``ProcessPoolExecutor(mp_context=forkserver)``, say)
leaves one running that holds none of guildcore: every agent forked from it
then imports the agent module and its dependencies by itself, some 60-100 ms
of CPU each (several times that on a busy host), while the caller waits for
its first result. Agents then start from a server of guildcore's own, started
once per interpreter with guildcore preloaded: what the interpreter's
forkserver gives a program that made its Guild first.

This module covers that server and the context whose processes start from
it (the stdlib's forkserver ``Popen``, with the server swapped). It does not
choose when to use it (``pool``). Agents unpickle ``OwnServerProcess`` by
reference, so this module stays light: multiprocessing only.
"""

from __future__ import annotations

import io
import os
import threading
from multiprocessing import context, forkserver, popen_forkserver, reduction, spawn, util
from typing import Any

__all__ = ["OwnServerContext", "own_server", "server_pid", "shared_server_fits"]

_lock = threading.Lock()
_server: forkserver.ForkServer | None = None


def shared_server_fits(preload: tuple[str, ...]) -> bool:
    """True if the interpreter's forkserver has not started, or started with ``preload``."""
    server: Any = forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is None:
        return True
    loaded = getattr(server, "_preload_modules", None) or ()
    return set(preload) <= set(loaded)


def own_server(preload: list[str]) -> forkserver.ForkServer:
    """This interpreter's guildcore forkserver (made on first call; it starts on first use)."""
    global _server
    with _lock:
        if _server is None:
            _server = forkserver.ForkServer()
            _server.set_forkserver_preload(preload)
        return _server


def server_pid() -> int | None:
    """The pid of guildcore's own forkserver, if it runs (it lives as long as the interpreter)."""
    return None if _server is None else getattr(_server, "_forkserver_pid", None)


class _Popen(popen_forkserver.Popen):
    """``popen_forkserver.Popen`` launching through guildcore's own server."""

    def _launch(self, process_obj: Any) -> None:
        server = own_server([])
        prep_data = spawn.get_preparation_data(process_obj._name)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        fds: list[int] = self.__dict__["_fds"]  # popen_forkserver.Popen's, set in its __init__
        self.sentinel, w = server.connect_to_new_process(fds)
        # As the stdlib: a duplicate of the data pipe's write end is the
        # child's sentinel of its parent.
        parent_w = os.dup(w)
        close_fds: Any = util.close_fds  # type: ignore[attr-defined]  # not in typeshed
        self.finalizer = util.Finalize(self, close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class OwnServerProcess(context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _Popen(process_obj)


class OwnServerContext(context.ForkServerContext):
    """A forkserver context whose processes start from guildcore's own server."""

    Process = OwnServerProcess  # type: ignore[assignment]
