"""Starting agent processes, and the supervisor's handle on each one.

This module covers: choosing the start method (a template forked from the
caller when that is safe, else the forkserver with guildcore preloaded:
either way a new agent costs milliseconds), where the first agent comes
from (the template's first fork, or the caller's own in a process that has
run a pool: ``_fork_template``), starting one agent, and the
``AgentHandle`` record the owner loop keeps per agent. It does not
decide when to start or stop agents (``scaling``) nor which agent gets a task
(``dispatch``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable

from guildcore.engine.agent import AgentSettings, agent_main
from guildcore.engine.lazymain import AGENT_NAME_PREFIX, caller_main
from guildcore.engine.template import (
    DirectChild,
    Requested,
    Template,
    TemplateError,
    can_fork_agents_directly,
    can_fork_now,
    fork_agent,
)
from guildcore.errors import ConfigError

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

START_METHODS = ("auto", "forkserver", "fork", "spawn")
# What the forkserver imports once, before forking any agent: the agent
# module, and the hooks that make forkserver agents load the caller's script
# lazily (``lazymain``). The caller itself never imports the hooks.
FORKSERVER_PRELOAD = ("guildcore.engine.forkserver_hooks", "guildcore.engine.agent")
# The id of the first agent a pool starts (the machine counts from it:
# ``PoolState``); a template asks for it before the owner loop runs.
FIRST_AGENT_ID = 1

log = logging.getLogger("guildcore.supervisor")

# ``AgentStarter.ctx`` once agents come from the template (``prepare`` has run).
_TEMPLATE = "template"


def _children_are_ours() -> bool:
    """Whether this process leaves its children's exit codes to their waiters.

    A caller that ignores SIGCHLD (the kernel reaps) or handles it (a
    ``waitpid(-1)`` reaps) would take the exit code of an agent it forked.
    """
    return signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def _warm() -> bool:
    """Whether this process has run a pool before: the supervisor's rules are imported.

    A first pool imports them after the template's fork (``Supervisor.machine``),
    ~4 ms that the template's fork of the first agent overlaps; a later
    pool has nothing to import, and its first result waits for that agent.
    """
    return "guildcore.engine.machine" in sys.modules


class StartFailed(Exception):
    """An agent process could not be started (internal; the owner loop handles it)."""


class AgentHandle:
    """The supervisor's hold on one agent process: pid, pipe, sentinel. Owner thread only.

    What the agent is doing (its state, the tasks it holds, its memory) is
    the state machine's (``lifecycle.AgentRecord``); this is only the I/O.
    """

    def __init__(self, agent_id: int, process: Any, conn: Any) -> None:
        self.id = agent_id
        self.process = process
        self.conn = conn
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.process.close()
        except ValueError:
            pass  # still running: it is SIGKILLed by the caller before this

    def __repr__(self) -> str:
        return f"<AgentHandle {self.id} pid={self.pid}>"


class AgentStarter:
    """Starts agents with one start method and one set of agent settings.

    ``start_method`` as configured: ``auto`` forks agents from a template of
    the caller when the thread that first needs the pool (``prepare``) is
    the only Python thread, else uses the forkserver; ``fork`` does the same, but
    warns when it has to use the forkserver; ``forkserver`` and ``spawn``
    are the stdlib's. ``method`` is what agents really start with: ``fork``
    (through the template), ``forkserver`` or ``spawn``.
    """

    def __init__(
        self,
        *,
        start_method: str,
        limit_bytes: int | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        preload: tuple[str, ...] = (),
        cache_env: dict[str, str] | None = None,
        result_threshold: int | None = None,
        report_stats: bool = False,
    ) -> None:
        if start_method not in START_METHODS:
            raise ConfigError(
                f"unknown start method {start_method!r}; choose one of {', '.join(START_METHODS)}",
                key="pool.start_method",
                value=start_method,
            )
        self.limit_bytes = limit_bytes
        self.initializer = initializer
        self.initargs = initargs
        self.preload = preload
        self.cache_env = dict(cache_env or {})
        self.result_threshold = result_threshold
        self.report_stats = report_stats
        self.main = caller_main()
        self.supervisor_pid = os.getpid()  # read here: _settings also runs inside agents
        self._template: Template | None = None
        self._early: Requested | None = None  # the first agent, asked for by prepare
        self._direct: tuple[DirectChild, Any] | None = None  # or forked by prepare itself
        self.method = start_method
        self.ctx: Any = None

    def prepare(self, *, first_agent: bool = False) -> None:
        """Settle the start method, forking the template if it is used. Once, before the first ``start``.

        Called from the thread that first needs the pool (a caller's thread,
        never the owner loop's). ``first_agent``: the pool will start agents,
        so the template is born with the first one's pipes and forks it at
        once (``Template.fork``), while the owner loop's thread starts;
        ``start(FIRST_AGENT_ID)`` collects it.
        """
        if self.ctx is not None:
            return
        if self.method in ("auto", "fork"):
            self.method = self._fork_template(self.method, first_agent)
        if self._template is not None:
            self.ctx = _TEMPLATE  # no stdlib context: agents come from the template
            return
        if self.method == "forkserver":
            self.ctx = self._forkserver_context()
            return
        import multiprocessing  # ~6 ms with pickle: only for agents the stdlib starts

        self.ctx = multiprocessing.get_context("fork" if self.method == "fork" else self.method)

    def _let_go_of_direct(self) -> None:
        """End and reap the agent ``prepare`` forked, if no one took it."""
        direct, self._direct = self._direct, None
        if direct is None:
            return
        child, conn = direct
        child.kill()  # it holds no task: no need to wait for it to see its pipe end
        conn.close()
        child.join()
        child.close()

    def _forkserver_context(self) -> Any:
        """The interpreter's forkserver, unless it already runs without guildcore: then guildcore's own.

        Preloading only takes effect before a forkserver first starts; from
        one started by someone else (a ProcessPoolExecutor) every agent would
        import the agent module by itself (``ownserver``).
        """
        import multiprocessing  # ~6 ms with pickle: only for agents the stdlib starts

        from guildcore.engine import ownserver

        preload = [*FORKSERVER_PRELOAD, *self.preload]
        if ownserver.shared_server_fits(FORKSERVER_PRELOAD):
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(preload)
            return ctx
        ownserver.own_server(preload)
        return ownserver.OwnServerContext()

    def _fork_template(self, requested: str, first_agent: bool) -> str:
        """Fork the template now if that is safe; the method agents will use."""
        if can_fork_now():
            # Invariant: the template copies this object as it is now, so
            # ``method`` must already say what its agents are.
            self.method = "fork"
            if first_agent and not self.preload and _warm() and _children_are_ours() and can_fork_agents_directly():
                # Nothing left to import before the owner loop runs: the first
                # result waits for the agent, one fork sooner if forked here.
                # Its memory cap's module too, imported once here rather than
                # by each first agent, where it cost ~1 ms (every page it
                # writes there is copied first).
                import resource  # noqa: F401

                self._direct = fork_agent(FIRST_AGENT_ID, self._run_agent)
                first_agent = False
            try:
                self._template = Template.fork(
                    self._run_agent, self.preload, FIRST_AGENT_ID if first_agent else None, adopt=self._direct
                )
            except BaseException:
                self._let_go_of_direct()
                raise
            self._early = self._template.first
            return "fork"
        if requested == "fork":
            warnings.warn(
                "start_method 'fork' asked for, but this process runs other threads, and a fork copies the "
                "locks they hold (an agent forked while another thread imports a module hangs forever); "
                "agents start through the forkserver instead. Make the Guild before starting threads "
                "to get forked agents.",
                RuntimeWarning,
                stacklevel=2,
            )
        return "forkserver"

    def _settings(self, agent_id: int) -> AgentSettings:
        return AgentSettings(
            agent_id=agent_id,
            limit_bytes=self.limit_bytes,
            initializer=self.initializer,
            initargs=self.initargs,
            preload=self.preload,
            cache_env=self.cache_env,
            result_threshold=self.result_threshold,
            supervisor_pid=self.supervisor_pid,
            forked=self.method == "fork",
            main=None if self.method == "fork" else self.main,
            report_stats=self.report_stats,
        )

    def _run_agent(self, agent_id: int, conn: Any) -> None:
        """In an agent just forked by the template (the caller's copy)."""
        agent_main(conn, self._settings(agent_id))

    def start(self, agent_id: int) -> AgentHandle:
        if self._direct is not None:
            if agent_id == FIRST_AGENT_ID:
                direct, self._direct = self._direct, None
                return AgentHandle(agent_id, *direct)
            self._let_go_of_direct()  # invariant: never, while the machine counts agents from FIRST_AGENT_ID
        early, self._early = self._early, None
        if early is not None and (early.agent_id != agent_id or self._template is None):
            # Invariant: never, while the machine counts agents from FIRST_AGENT_ID.
            early.close()
            early = None
        if self._template is not None:
            try:
                if early is not None:
                    process, conn = self._template.receive(early)
                else:
                    process, conn = self._template.start(agent_id)
                return AgentHandle(agent_id, process, conn)
            except TemplateError as exc:
                # Only an OOM kill or a crash ends the template early: go on
                # through the forkserver rather than stop starting agents.
                log.warning("agent %d could not be forked from the template (%s); agents start through "
                            "the forkserver from now on", agent_id, exc)
                self._template.close()
                self._template = None
                self.method = "forkserver"
                self.ctx = self._forkserver_context()
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=agent_main,
            args=(child_conn, self._settings(agent_id)),
            name=f"{AGENT_NAME_PREFIX}{agent_id}",
            daemon=True,
        )
        try:
            process.start()
        except Exception as exc:
            parent_conn.close()
            child_conn.close()
            raise StartFailed(f"{type(exc).__name__}: {exc}") from exc
        child_conn.close()
        return AgentHandle(agent_id, process, parent_conn)

    def close(self) -> None:
        """Stop the template, if any (after its agents are gone). Idempotent."""
        if self._early is not None:  # the pool ended before its first agent was needed
            self._early.close()
            self._early = None
        self._let_go_of_direct()
        if self._template is not None:
            self._template.close()
