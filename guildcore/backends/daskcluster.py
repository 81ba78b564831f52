"""A Guild's hold on a Dask cluster: connecting to one, or starting one here.

This module covers ``ClusterLink``: the Dask client of one Guild and, for
``backend: dask-local``, the ``LocalCluster`` that Guild started and stops;
the Dask settings such a cluster runs with (and why); the agent initializer
and ``optimization.preload`` as a worker plugin; and the few questions the
pool asks the cluster (how many threads, which worker runs a task, did a
nanny restart a worker for memory, restart one). It does not cover running
tasks (``dask``, ``daskworker``).

Importing this module imports Dask: ``dask.open_pool`` checks for it first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import dask
import distributed
from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin
from tornado.ioloop import PeriodicCallback

from guildcore.config import Config
from guildcore.engine import limits
from guildcore.errors import ConfigError, PoolBroken, format_bytes

log = logging.getLogger("guildcore.dask")

# What a dask-local worker uses by itself (a Dask worker with guildcore
# loaded holds 40-60 MB of private memory), on top of ``limits.per_agent``,
# in the memory limit Dask is told (its own accounting and dashboard).
WORKER_HEADROOM_BYTES = 128 * 2**20

# The Dask settings of a cluster that a Guild starts (dask-local).
LOCAL_CLUSTER_CONFIG: Mapping[str, object] = {
    # A task whose worker dies fails at once (AgentDied), and guildcore's own
    # retries decide whether it runs again, as with local agents; Dask's
    # default (3) would rerun it silently, and retries=0 would mean nothing.
    "distributed.scheduler.allowed-failures": 0,
    # Dask pauses a worker at 80% of its memory limit and spills to disk from
    # 60-70%: guildcore's tasks leave nothing on workers (the caller gathers
    # each result at once), and a paused worker would hold its task forever.
    # Only the nanny's restart past 95% stays: the hard cap.
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
}

# How long a nanny gets to restart a worker whose task ignored its timeout.
_RESTART_TIMEOUT_S = 30.0
# How long connecting to a scheduler may take before Guild() fails.
_CONNECT_TIMEOUT_S = 30.0
# How long a lost worker's nanny gets to report its exit code (dask-local).
# It answers as soon as the nanny has seen the exit; the wait is long only
# on a host so loaded that the nanny's own poll comes late (2 s was not
# enough there, and the error then lost its signal).
_EXIT_WAIT_S = 10.0
# A nanny learns the address of a worker it restarted only once that worker
# reports to it, which lags the worker's own registration with the scheduler
# on a loaded host: a worker that dies at once is then recorded under the
# address of the worker before it. Its nanny's last exit stands for it when
# it came within _EXIT_RECENT_S of the loss and nothing came for the address
# within _ADDRESS_GRACE_S.
_ADDRESS_GRACE_S = 0.2
_EXIT_RECENT_S = 5.0
# How long a dask-local worker may stay over limits.per_agent before its
# nanny restarts it. The watchdog in the worker stops a task running Python
# code within one sample, and the worker lives on; only a task blocked in C
# (nothing to interrupt) outlasts this.
_MEMORY_GRACE_S = 0.5


class ExitLog:
    """How the workers of a dask-local cluster ended, as their nannies saw it.

    The nannies of a LocalCluster run in this process: ``GuildNanny`` writes
    here when its worker process exits, or when it restarts one for memory,
    so that the error of a task lost with its worker can name the signal or
    the memory, as agents' errors do. Written by Dask's event loop, read by
    the pool's owner thread.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._exits: dict[str, int] = {}
        self._memory: dict[str, int] = {}
        self._nanny_exits: dict[str, tuple[float, int]] = {}  # nanny address -> (when, exit code) of its last worker

    def exited(self, address: str | None, exitcode: int, nanny: str | None = None) -> None:
        with self._cond:
            if address is not None:
                self._exits[address] = exitcode
            if nanny is not None:
                self._nanny_exits[nanny] = (time.monotonic(), exitcode)
            self._cond.notify_all()

    def restarted_for_memory(self, address: str, grown: int) -> None:
        with self._cond:
            self._memory[address] = grown

    def wait_exit(self, address: str, timeout_s: float, nanny: str | None = None) -> tuple[int | None, int | None]:
        """``(exitcode, private memory grown, if restarted for memory)`` of the worker at ``address``.

        Dask tells the caller that a worker is lost when its connection
        closes; its nanny notices the exit by itself, at about the same time:
        wait for it, a little. ``nanny``: the worker's nanny, whose last exit
        stands for the worker's if the nanny did not know its address yet
        (see ``_ADDRESS_GRACE_S``).
        """
        asked = time.monotonic()
        deadline = asked + timeout_s
        with self._cond:
            while address not in self._exits:
                now = time.monotonic()
                last = self._nanny_exits.get(nanny) if nanny is not None else None
                if last is not None and last[0] >= asked - _EXIT_RECENT_S and now - asked >= _ADDRESS_GRACE_S:
                    self._nanny_exits.pop(str(nanny), None)
                    return last[1], self._memory.get(address)
                remaining = deadline - now
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, _ADDRESS_GRACE_S) if last is not None else remaining)
            if nanny is not None and address in self._exits:
                self._nanny_exits.pop(nanny, None)  # the same exit: it stands for no later one
            return self._exits.get(address), self._memory.get(address)


class GuildNanny(distributed.Nanny):  # type: ignore[misc]  # Dask's classes are untyped here
    """The nanny of a dask-local worker: limits its private memory, reports its end.

    Dask's nanny restarts a worker whose RSS passes 95% of its memory limit:
    RSS counts the pages of a shared context the worker has read, and the
    worker's own 40-60 MB. This nanny limits what agents are limited on
    instead: private memory (``RssAnon``, in which shared pages never count)
    grown past ``limits.per_agent`` since the worker started, sampled every
    ``limits.sample_interval``. It is the hard limit on Dask: the watchdog in
    the worker (``daskworker``) stops a task in Python code first, keeping
    the worker; a worker still over the limit ``_MEMORY_GRACE_S`` later (a
    task blocked in C, nothing to interrupt) is restarted.
    """

    def __init__(self, *args: Any, exit_log: ExitLog, limit_bytes: int, sample_interval_s: float, **kwargs: Any) -> None:
        self._guild_exits = exit_log
        self._guild_limit = limit_bytes
        self._guild_baseline: tuple[int, int] | None = None  # (pid, private bytes when first seen running)
        self._guild_over_since: float | None = None  # over the limit since (monotonic)
        super().__init__(*args, **kwargs)
        # In place of Dask's own RSS monitor.
        self.periodic_callbacks["memory_monitor"] = PeriodicCallback(self._guild_memory_monitor, sample_interval_s * 1000)

    async def instantiate(self) -> Any:
        """Start the worker process; its private memory now is what it uses by itself."""
        status = await super().instantiate()
        self._guild_sample()
        return status

    def _guild_sample(self) -> tuple[int, int] | None:
        """``(pid, private bytes)`` of the worker now; the first of a pid is its baseline."""
        process = self.process.process if self.process is not None else None
        if process is None or process.pid is None:
            return None
        private = limits.read_private_bytes(process.pid)
        if private is None:
            return None
        base = self._guild_baseline
        if base is None or base[0] != process.pid or private < base[1]:
            # A new worker, or one that gave memory back below what was taken
            # for its own (a task may have run before the first sample).
            self._guild_baseline = (process.pid, private)
        return process.pid, private

    def _guild_memory_monitor(self) -> None:
        process = self.process.process if self.process is not None else None
        if self.status != Status.running or process is None:
            return
        sample = self._guild_sample()
        if sample is None or self._guild_baseline is None:
            return
        grown = sample[1] - self._guild_baseline[1]
        now = time.monotonic()
        if grown <= self._guild_limit:
            self._guild_over_since = None
            return
        if self._guild_over_since is None:
            self._guild_over_since = now
        if now - self._guild_over_since < _MEMORY_GRACE_S:
            return  # the watchdog in the worker may still stop the task, keeping the worker
        if self.memory_manager._last_terminated_pid != process.pid:
            log.warning(
                "Dask worker %s (pid %d) grew by %s of private memory, over its %s limit; restarting it",
                self.worker_address, process.pid, format_bytes(grown), format_bytes(self._guild_limit),
            )  # fmt: skip
            self.memory_manager._last_terminated_pid = process.pid
            self._guild_exits.restarted_for_memory(str(self.worker_address), grown)
            process.terminate()
        else:  # SIGTERM did not end it since the last look
            process.kill()

    def _on_worker_exit_sync(self, exitcode: int) -> None:
        if exitcode is not None:
            # worker_address may still be the worker's before it (see _ADDRESS_GRACE_S).
            address = self.worker_address
            self._guild_exits.exited(None if address is None else str(address), int(exitcode), nanny=str(self.address))
        super()._on_worker_exit_sync(exitcode)



class GuildWorkerPlugin(WorkerPlugin):  # type: ignore[misc]  # Dask's classes are untyped here
    """Runs on every worker of the cluster, and on every worker started later.

    Imports ``optimization.preload`` and runs the agent initializer once per
    worker process, as agents do. A failing initializer is reported by the
    registration (``ClusterLink.register``), which breaks the pool.

    No ``RLIMIT_DATA`` cap, unlike agents: it would also fail Dask's own
    allocations (a big message being received), killing the worker with no
    account of why. The hard cap on Dask is the nanny's memory limit.
    """

    def __init__(
        self,
        name: str,
        preload: tuple[str, ...],
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.name = name
        self.preload = preload
        self.initializer = initializer
        self.initargs = initargs

    def setup(self, worker: Any) -> None:
        for module in self.preload:
            try:
                __import__(module)
            except Exception:
                pass  # preloading is an optimization; the task's own import reports errors
        if self.initializer is not None:
            self.initializer(*self.initargs)


class ClusterLink:
    """The client of one Guild, and the cluster it started (dask-local) or None."""

    def __init__(self, client: Any, cluster: Any, *, backend: str, where: str) -> None:
        self.client = client
        self.cluster = cluster
        self.backend = backend
        self.where = where  # the scheduler's address, for messages
        self.plugin_name: str | None = None
        self.exits = ExitLog()  # filled by the nannies of a dask-local cluster

    @property
    def local(self) -> bool:
        """Whether the workers share this host (and its /dev/shm) by construction."""
        return self.cluster is not None

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, config: Config, workers: int) -> ClusterLink:
        par = config.parallelization
        if par.backend == "dask-local":
            return cls._start_local(config, workers)
        where = par.address or par.scheduler_file
        path = None
        if par.scheduler_file is not None:
            path = os.path.abspath(os.path.expanduser(par.scheduler_file))
            if not os.path.isfile(path):
                raise ConfigError(
                    f"parallelization.scheduler_file {par.scheduler_file} does not exist; start the "
                    "scheduler with  dask scheduler --scheduler-file PATH  or fix the path",
                    key="parallelization.scheduler_file", value=par.scheduler_file,
                )  # fmt: skip
        try:
            address = par.address or ""
            if path is not None:
                with open(path) as f:
                    address = json.load(f)["address"]
            _probe(address)
            client = distributed.Client(address, set_as_default=False, timeout=_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, KeyError) as exc:
            raise PoolBroken(
                f"cannot reach the Dask scheduler at {where} ({type(exc).__name__}: {exc}); check "
                "parallelization.address (or scheduler_file) and that the scheduler is running"
            ) from exc
        return cls(client, None, backend=par.backend, where=str(client.scheduler.address))

    @classmethod
    def _start_local(cls, config: Config, workers: int) -> ClusterLink:
        _guard_main_path()
        limit = config.limits.per_agent
        exits = ExitLog()
        with dask.config.set(dict(LOCAL_CLUSTER_CONFIG)):
            cluster = distributed.LocalCluster(
                worker_class=GuildNanny,
                exit_log=exits,
                limit_bytes=limit,
                sample_interval_s=config.limits.sample_interval,
                n_workers=workers,
                threads_per_worker=1,  # one task per worker process, as one per agent
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # No dashboard; the scheduler's small HTTP server (health,
                # metrics) on any free port rather than 8787.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                memory_limit=limit + WORKER_HEADROOM_BYTES,  # for Dask's accounting; GuildNanny limits
                silence_logs=logging.ERROR,
            )
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        link = cls(client, cluster, backend="dask-local", where=str(cluster.scheduler_address))
        link.exits = exits
        return link

    def register(self, plugin: GuildWorkerPlugin) -> None:
        """Install ``plugin`` on every worker; a failing initializer raises ``PoolBroken``.

        The plugin is then taken off the cluster again: a worker started
        later (a nanny replacing one) would only fail, or die, the same way.
        """
        self.plugin_name = plugin.name
        try:
            replies = self.client.register_plugin(plugin, name=plugin.name)
            for reply in (replies or {}).values():
                if isinstance(reply, BaseException):  # the worker could not be reached: it died
                    raise _initializer_failed(reply)
                if isinstance(reply, Mapping) and reply.get("status") == "error":
                    raise _initializer_failed(reply.get("exception"), reply.get("text"))
        except Exception as exc:
            broken = exc if isinstance(exc, PoolBroken) else _initializer_failed(exc)
            try:
                self.client.unregister_worker_plugin(plugin.name)
            except Exception:
                pass
            self.plugin_name = None
            raise broken from None

    # --------------------------------------------------------------- questions

    def threads(self) -> int:
        """Worker threads in the cluster now: how many tasks may run at once."""
        return int(sum(self.client.nthreads().values()))

    def workers(self) -> dict[str, Any]:
        info: dict[str, Any] = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return info

    def processing(self) -> dict[str, tuple[str, ...]]:
        """Each worker's address and the keys of the tasks the scheduler has it run."""
        return {str(address): tuple(keys) for address, keys in self.client.processing().items()}

    def worker_of(self, key: str) -> str | None:
        """The worker a running task is on, if the scheduler knows it."""
        for address, keys in self.client.processing().items():
            if key in keys:
                return str(address)
        return None

    def lost(self, address: str, nanny: str | None = None) -> tuple[int | None, int | None]:
        """How the worker at ``address`` ended: ``(exitcode, memory if restarted for it)``.

        Where the nannies run here (dask-local) the exit code is known, and
        the memory is the private memory grown past ``limits.per_agent``; a
        cluster elsewhere tells only of its nannies' restarts for memory,
        with the worker's RSS.
        """
        if self.local:
            return self.exits.wait_exit(address, _EXIT_WAIT_S, nanny)
        return None, self._memory_restart(address)

    def _memory_restart(self, address: str) -> int | None:
        """The RSS at which a nanny restarted ``address`` for memory, if it did."""
        try:
            events = self.client.get_events("worker-restart-memory")
        except Exception:
            return None
        for _when, event in reversed(list(events)):
            if isinstance(event, Mapping) and event.get("worker") == address:
                rss = event.get("rss")
                return int(rss) if rss is not None else 0
        return None

    def restart(self, address: str) -> bool:
        """Restart one worker through its nanny; False if it has none or it failed."""
        try:
            status = self.client.restart_workers([address], timeout=_RESTART_TIMEOUT_S, raise_for_error=False)
        except Exception as exc:
            log.warning("could not restart Dask worker %s: %s", address, exc)
            return False
        return bool(status.get(address) == "OK")

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        """Let go of the cluster: unregister the plugin, close the client, stop a local cluster."""
        try:
            if self.plugin_name is not None and self.cluster is None and self.client.status == "running":
                self.client.unregister_worker_plugin(self.plugin_name)
        except Exception as exc:
            log.warning("could not unregister guildcore's worker plugin: %s", exc)
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
            _retire_offload_thread()


def _guard_main_path() -> None:
    """Keep dask-local's workers (spawned by their nannies) from importing a main script that is no file.

    multiprocessing makes every spawned child run the parent's ``__main__``
    again from ``__main__.__file__``; for a script read from stdin that is
    ``'<stdin>'``, and every worker would die at start with FileNotFoundError
    (plain Dask too). Such a script cannot be imported anyway (its functions
    travel by value), so the child does without it. Installed once,
    process-wide: it only drops a path that cannot exist.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_guild_main_guard", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        path = data.get("init_main_from_path")
        if path is not None and not os.path.isfile(path):
            del data["init_main_from_path"]
        return data

    get_preparation_data._guild_main_guard = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _probe(address: str) -> None:
    """Connect to ``address`` once and hang up; OSError if nothing answers within the connect timeout.

    A Dask client that cannot connect raises, but leaves its event-loop
    thread running for good (nothing holds the client to close it); a
    probe on a loop of its own leaves nothing. Inside a running event loop
    (a notebook) the client's own error has to do.
    """
    import asyncio

    from distributed.comm import connect

    async def knock() -> None:
        comm = await connect(address, timeout=_CONNECT_TIMEOUT_S)
        await comm.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(knock())


def _retire_offload_thread() -> None:
    """Let Dask's offload thread go once no Dask client or cluster is left in this process.

    Dask keeps one idle thread for good after its first use
    (``Dask-Offload``). Fork-safety: a process with another thread may not
    fork (a fork copies the locks that thread holds), so every local Guild
    made after a Dask one would start its agents through the forkserver
    instead of the warm template. With no client or cluster left, the thread
    has nothing to do: a fresh executor, threadless until used, takes its
    place, and the old one is shut down.
    """
    try:
        from distributed import utils
        from distributed.client import Client
        from distributed.deploy.spec import SpecCluster

        if any(c.status not in ("closed", "closing") for c in list(Client._instances)):
            return
        if any(c.status.name not in ("closed", "closing") for c in list(SpecCluster._instances)):
            return
        old = utils._offload_executor
        utils._offload_executor = type(old)(max_workers=1, thread_name_prefix="Dask-Offload")
    except (ImportError, AttributeError):  # another Dask: its thread stays, agents use the forkserver
        return
    old.shutdown(wait=True)


def _initializer_failed(exc: object, text: object = None) -> PoolBroken:
    from distributed.comm import CommClosedError

    from guildcore.engine import postmortem

    if isinstance(exc, CommClosedError | OSError):
        # The worker went away while it ran the plugin: os._exit, a signal or
        # a crash in the initializer, which no exception reports.
        return postmortem.agents_die_at_start(f"a Dask worker died while it ran the agent initializer ({exc})")
    if isinstance(exc, BaseException):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        fields = [exc, tb, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), 0]
    else:
        fields = [None, str(text or exc), "Exception", str(text or exc), 0]
    return postmortem.initializer_failed(fields)
