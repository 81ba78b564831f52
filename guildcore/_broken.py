"""The two errors whose stdlib parent is ``concurrent.futures.process.BrokenProcessPool``.

``AgentDied`` and ``PoolBroken`` are ``BrokenProcessPool`` errors, so code
written for ``ProcessPoolExecutor`` keeps catching them. That parent lives
in ``concurrent.futures.process``, which imports ``multiprocessing`` with
its connections, queues and ``tempfile`` (~15 ms): a script that makes a
``Guild`` and submits never needs them, since agents fork from a template
of the caller over plain sockets. So ``guildcore.errors`` loads this module
only when one of the two is first named; the engine names them where it
raises them.

Import them from ``guildcore.errors`` (their public home, as their
``__module__`` says); this module imports nothing else of guildcore's.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

from guildcore._errors import AgentError, GuildError

__all__ = ["AgentDied", "PoolBroken"]


class AgentDied(AgentError, BrokenProcessPool):
    """The agent holding a task died (signal, segfault, ``os._exit``).

    Only the task(s) that agent held fail; the pool replaces the agent and goes
    on, unlike the stdlib whose pool breaks for good.
    """


class PoolBroken(GuildError, BrokenProcessPool):
    """Agents cannot be started at all (for example, the initializer raises).

    A ``BrokenProcessPool`` (so a ``BrokenExecutor``), as the stdlib's pool
    reports a failed initializer.
    """


# The public path, for tracebacks and pickles.
AgentDied.__module__ = PoolBroken.__module__ = "guildcore.errors"
