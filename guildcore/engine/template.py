"""The template: a copy of the caller, forked while that is safe, that forks agents.

Data flow::

    first use of the pool, in the caller's thread, the only Python thread alive
       └── os.fork() ──> template, born with the first agent's pipes
                           ├── os.fork() ──> first agent, at once
                           └── then one thread, waiting on its control socket
    supervisor thread ── agent id + fds (agent pipe, status pipe) ──> template
                                                           └── os.fork() ──> agent
    supervisor <── status pipe: the agent's pid, later its exit code ── template

Why: an agent forked from the template starts in about a millisecond with
every module the caller had imported when the Guild was made (numpy
included), where a forkserver agent starts from a bare interpreter and pays
each import of its first task again (numpy: ~100 ms per agent).

Why not fork agents from the caller directly: agents are started by the
supervisor thread, whenever the pool grows or replaces one, and a fork copies
every lock in the state the other threads hold it. An agent forked while the
caller's main thread was importing a module inherits that module's import
lock held by a thread that does not exist in the agent, and hangs in
``importlib`` forever. The template is forked once, when the Guild first
needs agents (a ``submit``, a map worth agents), by the caller's thread,
only when no other Python thread exists; it never starts a thread, so every
fork it makes is safe. Not earlier: after a fork, every page the caller
writes that the template still shares is copied first (a first pass over
200,000 ints cost 70% more CPU), so a Guild whose maps all run inline
never forks.

What agents inherit, and its hazards (see also ``pool.py``):
- the caller's modules, globals and ``__main__`` as they were when the pool
  started. A name defined later in the script is not there: agents then run
  the script (as ``__mp_main__``, guarded code skipped) to find it, as
  forkserver agents do. A module still being imported at that moment (a
  Guild used at import time) stays as far as it got: names it defines below
  that line are not found in agents;
- the caller's memory, shared copy-on-write (``gc.freeze`` keeps the
  collector from copying it in agents): the template holds the caller's
  pages as they were, so a caller that rewrites a big heap afterwards pays
  for two copies, and for a page fault at its first write to each page;
- the caller's open files and sockets, as with ``fork``; threads of C
  libraries (an OpenMP pool) are not carried over, and a library that is not
  fork-safe is not made so here.

It does not cover when agents start (``scaling``) or what they run
(``agent``). Internal: the template, its control socket and status pipes are
guildcore's own; nothing here is public API.
"""

from __future__ import annotations

import _socket
import gc
import os
import selectors
import signal
import struct
import sys
import threading
import weakref
from collections.abc import Callable

# What every agent runs first (``_run_child``): imported by the caller, so
# that neither the template nor an agent imports it after a fork, where each
# page an import writes is first copied.
from guildcore.engine import channel, mpidentity

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, NoReturn

_SIGNED = struct.Struct("i")
_FD = _SIGNED  # a file descriptor in SCM_RIGHTS data: a C int
# How long the supervisor waits for the template to report a new agent's pid.
_START_TIMEOUT_S = 10.0
# Signals whose Python handlers the caller may have set; the template and its
# agents get the default action back (agents set their own after).
_RESET_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM") if hasattr(signal, name)
)

# Fork-safety: templates of this process, so that any fork (the template
# itself, its agents, a fork made by the user) closes the caller's end of
# their control sockets, and a template sees EOF when its caller is gone.
_live: weakref.WeakSet[Template] = weakref.WeakSet()


class TemplateError(Exception):
    """The template could not start an agent (internal; the caller falls back)."""


def can_fork_now() -> bool:
    """Whether this thread may fork: it is the only Python thread of the process.

    ``sys._current_frames`` sees every thread running Python code, including
    those started with ``_thread`` that ``threading`` does not list. Threads
    of C libraries that never run Python (a BLAS pool) hold no Python lock.
    """
    if not hasattr(os, "fork"):
        return False
    return threading.active_count() == 1 and len(sys._current_frames()) == 1


class TemplateChild:
    """The caller's handle on one agent forked by the template.

    Quacks like the part of ``multiprocessing.Process`` the supervisor uses:
    ``pid``, ``sentinel`` (readable once the agent has exited), ``exitcode``,
    ``join`` and ``close``. The agent is the template's child, not ours, so
    its exit code comes through the status pipe.
    """

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self.sentinel = status_fd
        self._exitcode: int | None = None
        # A handle on the agent that no other process can ever have: the
        # kill below must not reach a process that took over a reused pid.
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # before Linux 5.3; the agent is gone already
            self._pidfd = -1

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is None and self.sentinel >= 0:
            self.join(0)
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        if self._exitcode is not None or self.sentinel < 0:
            return
        if not _wait_readable(self.sentinel, timeout):
            return
        code = _read_signed(self.sentinel)
        if code is None:
            # EOF without a code: the template died (an OOM kill, a SIGKILL).
            # Its agent, orphaned, may live on; it is ended here, so that it
            # is what the supervisor now counts it as.
            self._kill()
        self._exitcode = code if code is not None else -signal.SIGKILL

    def _kill(self) -> None:
        try:
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass  # gone already

    def is_alive(self) -> bool:
        return self.exitcode is None

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __repr__(self) -> str:
        return f"<TemplateChild pid={self.pid} exitcode={self._exitcode}>"


class DirectChild:
    """The caller's handle on an agent it forked itself (``fork_agent``).

    Quacks as ``TemplateChild`` does. The agent is the caller's child: its
    sentinel is a pidfd (readable once it has exited, whatever its own
    children do), and its exit code comes from ``waitpid``.
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.sentinel = pidfd
        self._exitcode: int | None = None
        self._ended = False

    @property
    def exitcode(self) -> int | None:
        """How it ended; None while it runs, or if another waiter took its code (``os.wait()``)."""
        if not self._ended and self.sentinel >= 0:
            self.join(0)
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        if self._ended or self.sentinel < 0:
            return
        if not _wait_readable(self.sentinel, timeout):
            return
        self._ended = True
        try:
            _pid, status = os.waitpid(self.pid, 0)  # it has exited: this does not block
            self._exitcode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass  # reaped by a waiter of the caller's own: its code is unknown

    def is_alive(self) -> bool:
        self.exitcode  # noqa: B018 - looks
        return not self._ended

    def kill(self) -> None:
        """SIGKILL it, through its pidfd: never a process that took over its pid."""
        if self.sentinel >= 0:
            _pidfd_kill(self.sentinel)

    def close(self) -> None:
        if self.sentinel >= 0:
            if not self._ended:
                self.join(0)  # reaped if it has exited, not left a zombie of the caller
            os.close(self.sentinel)
            self.sentinel = -1

    def __repr__(self) -> str:
        return f"<DirectChild pid={self.pid} exitcode={self._exitcode}>"


def can_fork_agents_directly() -> bool:
    """Whether this kernel gives pidfds, which a directly forked agent's handle needs (Linux 5.3+)."""
    global _PIDFDS
    if _PIDFDS is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            _PIDFDS = True
        except (AttributeError, OSError):
            _PIDFDS = False
    return _PIDFDS


_PIDFDS: bool | None = None


def fork_agent(agent_id: int, run_agent: Callable[[int, Any], None]) -> tuple[DirectChild, _socket.socket]:
    """Fork agent ``agent_id`` from the caller itself; its handle and the supervisor's end of its pipe.

    Only when ``can_fork_now()`` and ``can_fork_agents_directly()``, and
    right before the template is forked (``Template.fork(adopt=...)``),
    which kills it with its own agents if the caller dies.
    """
    parent_conn, child_conn = _socket.socketpair()
    _flush_std_streams()
    try:
        pid = os.fork()
    except OSError:
        parent_conn.close()
        child_conn.close()
        raise
    if pid == 0:  # the agent

        def let_go() -> None:
            parent_conn.close()
            _reset_inherited()

        _be_agent(agent_id, child_conn.detach(), run_agent, let_go)
    child_conn.close()
    try:
        pidfd = os.pidfd_open(pid)  # unreaped, so its pid is still its own
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        parent_conn.close()
        raise
    return DirectChild(pid, pidfd), parent_conn


class Requested:
    """An agent asked of the template and not yet received: its pipe and status pipe."""

    def __init__(self, agent_id: int, conn: Any, status_fd: int) -> None:
        self.agent_id = agent_id
        self._conn: Any = conn
        self._status_fd = status_fd

    def take(self) -> tuple[Any, int]:
        """Its supervisor end of the pipe and its status fd, once: the taker owns them."""
        conn, fd = self._conn, self._status_fd
        if conn is None:
            raise TemplateError(f"agent {self.agent_id} was already received or let go")
        self._conn, self._status_fd = None, -1
        return conn, fd

    def close(self) -> None:
        """Let go of an agent never received: it sees its pipe end and exits. Idempotent."""
        if self._conn is not None:
            conn, fd = self.take()
            conn.close()
            os.close(fd)

    def __repr__(self) -> str:
        return f"<Requested agent {self.agent_id} {'pending' if self._conn is not None else 'taken'}>"


class Template:
    """A forked copy of the caller that forks agents on request.

    ``run_agent(agent_id, conn)`` is called in each new agent, inside the
    template's copy of the caller, and must not return normally (agents end
    with ``os._exit``).
    """

    def __init__(self, pid: int, sock: _socket.socket) -> None:
        self.pid = pid
        self._sock: _socket.socket | None = sock
        self._lock = threading.Lock()
        self.first: Requested | None = None  # the agent ``fork(first_agent=...)`` asked for

    @classmethod
    def fork(
        cls,
        run_agent: Callable[[int, Any], None],
        preload: tuple[str, ...] = (),
        first_agent: int | None = None,
        adopt: tuple[DirectChild, _socket.socket] | None = None,
    ) -> Template:
        """Fork the template now. Only call when ``can_fork_now()``.

        ``preload``: modules the template imports once, so that its agents
        start with them (``optimization.preload``). ``first_agent``: an agent
        id the template forks before anything else (``first``, then
        ``receive`` it): its pipes are made here, so the template has them at
        birth, and a script's first result waits for one fork after this one
        rather than for the template to start itself and read a request.
        ``adopt``: an agent the caller forked itself (``fork_agent``) and
        the caller's end of its pipe: the template keeps its pidfd, to kill
        it with its own agents if the caller dies, and closes the pipe.
        """
        mine, theirs = _socket.socketpair()
        first: tuple[int, _socket.socket, int] | None = None
        requested: Requested | None = None
        if first_agent is not None:
            parent_conn, child_conn = _socket.socketpair()
            status_r, status_w = os.pipe()
            first = (first_agent, child_conn, status_w)
            requested = Requested(first_agent, parent_conn, status_r)

        def drop_the_templates_ends() -> None:
            theirs.close()
            if first is not None:
                first[1].close()
                os.close(first[2])

        _flush_std_streams()
        try:
            pid = os.fork()
        except OSError:
            drop_the_templates_ends()
            mine.close()
            if requested is not None:
                requested.close()
            raise
        if pid == 0:  # the template
            try:
                mine.close()
                if requested is not None:
                    requested.close()  # the caller's ends, copied by the fork
                if adopt is not None:
                    adopt[1].close()
                _serve(theirs, run_agent, preload, first, None if adopt is None else adopt[0].sentinel)
            finally:
                os._exit(0)
        drop_the_templates_ends()
        template = cls(pid, mine)
        template.first = requested
        _live.add(template)
        return template

    def start(self, agent_id: int) -> tuple[TemplateChild, Any]:
        """Fork one agent; returns its handle and the supervisor's end of its pipe."""
        return self.receive(self.request(agent_id))

    def request(self, agent_id: int) -> Requested:
        """Ask for agent ``agent_id`` without waiting for it: ``receive`` collects it.

        The template forks it as soon as it reads the request; a request
        never received is let go with ``Requested.close`` (the agent sees
        its pipe end and exits).
        """
        # The pipe ``multiprocessing.Pipe(duplex=True)`` makes, without its
        # import (see ``channel``): the supervisor only needs its descriptor.
        # A bare ``_socket.socket``: it closes its descriptor when collected.
        parent_conn, child_conn = _socket.socketpair()
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                if self._sock is None:
                    raise TemplateError("the template is closed")
                _send_fds(self._sock, _SIGNED.pack(agent_id), [child_conn.fileno(), status_w])
        except OSError as exc:
            parent_conn.close()
            os.close(status_r)
            raise TemplateError(f"the template is gone ({type(exc).__name__}: {exc})") from exc
        finally:
            os.close(status_w)
            child_conn.close()
        return Requested(agent_id, parent_conn, status_r)

    def receive(self, requested: Requested) -> tuple[TemplateChild, Any]:
        """Wait for the agent ``request`` asked for (its pid); its handle and pipe."""
        parent_conn, status_r = requested.take()
        ready = _wait_readable(status_r, _START_TIMEOUT_S)
        pid = _read_signed(status_r) if ready else None
        if not pid or pid < 0:
            parent_conn.close()
            os.close(status_r)
            why = "did not answer" if not ready else "could not fork" if pid is not None else "is gone"
            raise TemplateError(f"the template {why}")
        return TemplateChild(pid, status_r), parent_conn

    def alive(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        """Stop the template (it exits on EOF) and reap it. Idempotent."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        _live.discard(self)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def _drop_inherited(self) -> None:
        """In a forked child of the caller: let go of the caller's end."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        return f"<Template pid={self.pid} {'open' if self._sock is not None else 'closed'}>"


def _after_fork_in_child() -> None:
    for template in list(_live):
        template._drop_inherited()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------ the template


def _serve(
    sock: _socket.socket,
    run_agent: Callable[[int, Any], None],
    preload: tuple[str, ...],
    first: tuple[int, _socket.socket, int] | None = None,
    adopted: int | None = None,
) -> None:
    """The template's loop: fork an agent per request, report exits, end at EOF.

    ``first`` (agent id, its pipe, its status pipe) is forked at once,
    before the template readies itself for later agents
    (``_start_template``): that agent does the part of it an agent needs
    (``_reset_inherited``), and a script's first result does not wait for
    the rest. With preloads it is forked after it, to share their one
    import with every agent. ``adopted``: the pidfd of an agent the caller
    forked itself, killed at EOF with the template's own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the caller decides
    # Exits are watched before the first fork: under the caller's SIGCHLD
    # setting (ignored: the kernel reaps; a handler of its own: it reaps)
    # an agent's exit code would be lost, and its supervisor would wait.
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.signal(signal.SIGCHLD, _ignore)
    signal.set_wakeup_fd(sig_w)
    status_of: dict[int, int] = {}  # agent pid -> our end of its status pipe

    def in_child() -> None:
        sock.close()
        for fd in (sig_r, sig_w) if adopted is None else (sig_r, sig_w, adopted):
            os.close(fd)

    if first is not None and not preload:
        _fork_first(first, run_agent, status_of, in_child, reset=True)
    _start_template(preload)
    if first is not None and preload:
        _fork_first(first, run_agent, status_of, in_child, reset=False)

    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        sel.register(sig_r, selectors.EVENT_READ)
        while True:
            ready = {key.fileobj for key, _ in sel.select()}
            if sig_r in ready:
                _reap(sig_r, status_of)
            if sock not in ready:
                continue
            try:
                msg, fds = _recv_fds(sock, _SIGNED.size, 2)
            except OSError:
                msg, fds = b"", []
            if not msg:  # the caller closed its end, or is gone
                _kill_all(status_of, adopted)
                return
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                continue
            conn_fd, status_w = fds
            (agent_id,) = _SIGNED.unpack(msg)
            _fork_agent(agent_id, conn_fd, status_w, run_agent, status_of, in_child)


def _fork_first(
    first: tuple[int, _socket.socket, int],
    run_agent: Callable[[int, Any], None],
    status_of: dict[int, int],
    in_child: Callable[[], None],
    *,
    reset: bool,
) -> None:
    """Fork the agent the caller asked for at the template's fork; ``reset``: the template has not started."""
    agent_id, conn, status_w = first

    def first_in_child() -> None:
        in_child()
        if reset:
            _reset_inherited()

    _fork_agent(agent_id, conn.detach(), status_w, run_agent, status_of, first_in_child)


def _fork_agent(
    agent_id: int,
    conn_fd: int,
    status_w: int,
    run_agent: Callable[[int, Any], None],
    status_of: dict[int, int],
    in_child: Callable[[], None],
) -> None:
    """Fork agent ``agent_id`` on pipe ``conn_fd``; its pid, later its exit code, go to ``status_w``.

    ``in_child`` lets go, in the agent, of what only the template uses.
    """
    try:
        pid = os.fork()
    except OSError:
        _write_signed(status_w, -1)
        os.close(status_w)
        os.close(conn_fd)
        return
    if pid == 0:  # the agent

        def let_go() -> None:
            for fd in (status_w, *status_of.values()):
                os.close(fd)
            in_child()

        _be_agent(agent_id, conn_fd, run_agent, let_go)
    os.close(conn_fd)
    _write_signed(status_w, pid)
    status_of[pid] = status_w


def _be_agent(agent_id: int, conn_fd: int, run_agent: Callable[[int, Any], None], let_go: Callable[[], None]) -> NoReturn:
    """In a just-forked agent: drop what only its parent uses (``let_go``), run, and exit."""
    code = 1
    try:
        let_go()
        _own_signals()
        code = _run_child(agent_id, conn_fd, run_agent)
    finally:
        _flush_std_streams()  # os._exit skips it: a traceback printed just now would be lost
        os._exit(code)


def _start_template(preload: tuple[str, ...]) -> None:
    """Make this fresh fork of the caller fit to be copied again and again."""
    _reset_inherited()
    # What every agent needs at start, found once here rather than in each.
    if "multiprocessing" in sys.modules:
        # The caller uses multiprocessing: its agents are its fork children
        # (_run_child). A caller that does not gets no ~10 ms of imports here.
        from multiprocessing import context, util  # noqa: F401

    import resource  # noqa: F401 - limits.apply_hard_cap, in every agent

    for module in preload:
        try:
            __import__(module)
        except Exception:
            pass  # preloading is an optimization; the task's own import reports errors


def _own_signals() -> None:
    """In a new agent: SIGCHLD and the signal wake-up fd are its own, not its parent's.

    A task's subprocess must give it its exit code (the caller may ignore
    SIGCHLD; the template handles it), and a signal the agent receives (a
    task timeout's SIGALRM) must not wake its parent's event loop.
    """
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _reset_inherited() -> None:
    """What a copy of the caller must undo or add before it runs agents: the template's, or its first agent's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the caller decides
    for sig in _RESET_SIGNALS:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    from guildcore.engine.agent import drop_forkserver_alive_fd

    drop_forkserver_alive_fd()
    _late_main_lookup()
    # Fork-safety: the collector would touch (and so copy) every inherited
    # object in every agent; frozen objects are never scanned.
    gc.freeze()


def _late_main_lookup() -> None:
    """Names of the script defined after the Guild was made: load them as forkserver agents do.

    The inherited ``__main__`` stops where the script was when the Guild was
    made. A module-level ``__getattr__`` runs only for names it lacks; it
    runs the script as ``__mp_main__`` (guarded code skipped) once, like
    ``lazymain.LazyMain``, and serves the name from there.
    """
    from guildcore.engine.lazymain import LazyMain, caller_main

    main = sys.modules.get("__main__")
    where = caller_main()
    if main is None or where is None or "__getattr__" in vars(main):
        return
    late = LazyMain(*where)

    def __getattr__(name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(late, name)

    setattr(main, "__getattr__", __getattr__)  # noqa: B010 - a module-level __getattr__ (PEP 562)


def _run_child(agent_id: int, conn_fd: int, run_agent: Callable[[int, Any], None]) -> int:
    """Become agent ``agent_id``: a fork child as multiprocessing makes one, then ``run_agent``.

    With the stdlib's bootstrap if the caller had imported multiprocessing,
    else with ``mpidentity``'s, which imports it only when a task does.
    """
    conn = channel.Channel(conn_fd)
    if "multiprocessing.context" not in sys.modules:
        return mpidentity.bootstrap(_agent_name(agent_id), lambda: run_agent(agent_id, conn))
    from multiprocessing.context import ForkProcess

    proc = ForkProcess(target=run_agent, args=(agent_id, conn), name=_agent_name(agent_id), daemon=True)
    bootstrap = getattr(proc, "_bootstrap", None)
    if bootstrap is None:  # pragma: no cover - another Python
        run_agent(agent_id, conn)
        return 0
    # What a fork-started multiprocessing child does: current_process() is
    # the agent, stdin is closed, after-fork hooks of multiprocessing run.
    return int(bootstrap())


def _agent_name(agent_id: int) -> str:
    from guildcore.engine.lazymain import AGENT_NAME_PREFIX

    return f"{AGENT_NAME_PREFIX}{agent_id}"


def _kill_all(status_of: dict[int, int], adopted: int | None = None) -> None:
    """SIGKILL every agent not yet reaped, and the ``adopted`` one: none may outlive its caller.

    The caller closes the template after its agents have stopped, so this
    finds work only when the caller died (a SIGKILL, a crash). An agent
    whose task holds the GIL in C never reads the EOF on its own pipe; the
    kernel's parent-death signal would catch it, but setting that takes
    ``prctl`` through ``_ctypes``, 2-3 ms on the path to the first result,
    while the template already knows every agent's pid. Unreaped, no pid
    can have been reused; the adopted agent is reached through its pidfd.
    """
    for pid in status_of:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if adopted is not None:
        _pidfd_kill(adopted)


def _pidfd_kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass  # gone already


def _reap(sig_r: int, status_of: dict[int, int]) -> None:
    try:
        while os.read(sig_r, 4096):
            pass
    except BlockingIOError:
        pass
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status_of.pop(pid, None)
        if fd is not None:
            _write_signed(fd, os.waitstatus_to_exitcode(status))
            os.close(fd)


def _ignore(*_args: object) -> None:
    """SIGCHLD must have a handler for the wake-up fd to fire."""


# ------------------------------------------------------------------ helpers
#
# The control socket and the agents' pipes are ``_socket`` objects, and file
# descriptors travel with the two functions below (what ``socket.send_fds``
# and ``recv_fds`` do, packing them with ``struct`` rather than ``array``):
# importing ``socket`` converts its constants to enums and loads ``array``,
# ~2.5 ms of a script's first result for nothing used here.


def _send_fds(sock: _socket.socket, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])


def _recv_fds(sock: _socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    msg, ancdata, _flags, _addr = sock.recvmsg(size, _socket.CMSG_LEN(max_fds * _FD.size))
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [fd for (fd,) in _FD.iter_unpack(data[: len(data) - len(data) % _FD.size])]
    return msg, fds


def _wait_readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` became readable within ``timeout`` seconds (None: wait for it)."""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def _write_signed(fd: int, value: int) -> None:
    try:
        os.write(fd, _SIGNED.pack(value))
    except OSError:
        pass  # the caller closed its end: nobody is waiting for this


def _read_signed(fd: int) -> int | None:
    """One signed int from a status pipe; None at EOF."""
    data = b""
    while len(data) < _SIGNED.size:
        try:
            chunk = os.read(fd, _SIGNED.size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    value: int = _SIGNED.unpack(data)[0]
    return value


def _flush_std_streams() -> None:
    """Buffered output not yet written would be written again by every copy."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
