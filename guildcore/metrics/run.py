"""A run: one Guild's lifetime, or several Guilds (and process steps) recorded as one.

This module covers ``Run`` (the recorders of its Guilds, their live status
files, and at the end the run's record, saved to the history) and
``recorded_run``, the scope that makes every Guild created inside it part
of one run (``guild demo`` is one run of three Guilds; a process run is
one run of its steps). It does not cover what is recorded (``recorder``,
``fold``) nor the record's layout (``summary``).

A Guild outside any scope is a run of its own, finished when it closes.

Process runs: ``run.add_steps(steps)`` adds a process's step timeline, a
list of mappings with ``name``, ``start`` and ``end`` (``time.monotonic()``
seconds, or seconds since the run started when ``relative=True``) and
optionally ``status``, ``cached``, ``items`` and ``error``; the report draws
them above the task stream.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from guildcore.metrics.recorder import RunRecorder

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.config import Config
    from guildcore.metrics.alerts import Alert
    from guildcore.metrics.recorder import RecorderSettings

log = logging.getLogger("guildcore.metrics")

__all__ = ["Run", "current_run", "guild_recorder", "recorded_run", "store_path"]

_CURRENT: contextvars.ContextVar[Run | None] = contextvars.ContextVar("guildcore_run", default=None)
_LABEL_CHARS = 120
STORE_DIR = "metrics"


def store_path(cache_path: str) -> str:
    """The history store that belongs with the cache at ``cache_path``: its sibling ``metrics``."""
    return os.path.join(os.path.dirname(os.path.abspath(cache_path)), STORE_DIR)


def current_run() -> Run | None:
    """The run of the enclosing ``recorded_run`` scope, if any."""
    return _CURRENT.get()


def _default_label() -> str:
    argv = list(sys.argv) if sys.argv else []
    if not argv or not argv[0]:
        return "python"
    argv[0] = os.path.basename(argv[0])
    label = " ".join(argv)
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"


def new_run_id(wall: float) -> str:
    """``YYYYMMDD-HHMMSS-mmmx``: the UTC start to the millisecond, then one random hex digit.

    Ids sort by time (the history's key order), and read and type by eye.
    """
    ms = int((wall % 1) * 1000)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(wall)) + f"-{ms:03d}" + os.urandom(1).hex()[0]


class Run:
    """One run of the history. Thread-safe: Guilds join and close from any thread."""

    def __init__(self, kind: str = "guild", label: str | None = None, *, store: str | None = None) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.id = new_run_id(self.wall0)
        self.kind = kind
        self.label = label or _default_label()
        self.store = store  # history folder; None: the first Guild's
        self.scoped = False
        self.pid = os.getpid()
        self.recorders: list[RunRecorder] = []
        self.caches: dict[int, Any] = {}  # guild number -> its result cache statistics
        self.steps: list[dict[str, Any]] = []
        self.record: dict[str, Any] | None = None
        self.saved = False  # the record is in the history
        self._lock = threading.Lock()
        self._pid_start: int | None = None
        self._live_dir: str | None = None

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.kind} guilds={len(self.recorders)}>"

    # ------------------------------------------------------------ guilds

    def recorder(
        self, settings: RecorderSettings, *, store: str | None, on_alert: Callable[[Alert], object] | None = None
    ) -> RunRecorder:
        """A recorder for one more Guild of this run."""
        with self._lock:
            rec = RunRecorder(
                settings,
                t0=self.t0,
                opened=time.monotonic(),
                guild_no=len(self.recorders) + 1,
                on_alert=on_alert,
                publish=self._publish,
            )
            self.recorders.append(rec)
            if self.store is None:
                self.store = store
        return rec

    def _publish(self, rec: RunRecorder, live: Mapping[str, Any]) -> None:
        from guildcore.metrics import live as live_files

        if self._live_dir is None:
            self._live_dir = live_files.run_dir()
            self._pid_start = live_files.process_start(self.pid)
        payload = {
            "pid": self.pid,
            "pid_start": self._pid_start,
            "run_id": self.id,
            "kind": self.kind,
            "label": self.label,
            "guild": rec.guild_no,
            "started": self.wall0 + (rec.opened - self.t0),
            "updated": time.time(),
            **live,
        }
        live_files.publish(self._live_path(rec), payload)

    def _live_path(self, rec: RunRecorder) -> str:
        from guildcore.metrics import live as live_files

        return live_files.snapshot_path(self._live_dir or live_files.run_dir(), self.pid, self.id, rec.guild_no)

    def guild_closed(self, rec: RunRecorder, cache_stats: Any = None) -> dict[str, Any] | None:
        """A Guild of this run has shut down: fold its last events; finish an unscoped run."""
        if rec.closed:
            return self.record
        rec.close(time.monotonic())
        self.caches[rec.guild_no] = cache_stats
        if self._live_dir is not None:
            from guildcore.metrics import live as live_files

            live_files.remove(self._live_path(rec))
        if self.scoped:
            return None
        return self.finish()

    def add_steps(self, steps: Iterable[Mapping[str, Any]], *, relative: bool = False) -> None:
        """Add a process's step timeline (see the module docstring)."""
        for step in steps:
            entry = dict(step)
            for key in ("start", "end"):
                value = entry.get(key)
                if isinstance(value, int | float) and not relative:
                    entry[key] = round(float(value) - self.t0, 6)
            entry.setdefault("status", "done")
            self.steps.append(entry)

    # ------------------------------------------------------------ record

    def build(self) -> dict[str, Any]:
        """The record as it stands (a running Guild's folds are read as they are)."""
        import socket

        from guildcore.metrics.summary import build_record

        now = time.monotonic()
        return build_record(
            run_id=self.id,
            kind=self.kind,
            label=self.label,
            started=self.wall0,
            wall_s=now - self.t0,
            host=socket.gethostname(),
            pid=self.pid,
            parts=[(rec.fold.part(now), rec.rules.raised, self.caches.get(rec.guild_no)) for rec in self.recorders],
            steps=self.steps,
            finished=self.record is not None,
        )

    def finish(self) -> dict[str, Any] | None:
        """Build the final record once and save it to the history; never raises."""
        with self._lock:
            if self.record is not None:
                return self.record
            try:
                record = self.build()
                record["finished"] = True
            except Exception:
                log.exception("could not build the record of run %s", self.id)
                return None
            self.record = record
        if self.store is not None and (self.recorders or self.steps):
            self.save()
        return self.record

    def save(self) -> None:
        from guildcore.metrics.history import History

        if self.record is None or self.store is None:
            return
        try:
            History(self.store).save(self.record)
            self.saved = True
        except Exception as exc:  # history is a record, not the work: the run has succeeded
            log.warning("run %s was not saved to the history at %s: %s", self.id, self.store, exc)


@contextlib.contextmanager
def recorded_run(label: str | None = None, *, kind: str = "run", store: str | None = None) -> Iterator[Run]:
    """Record every Guild created inside this block as one run (one history entry).

    ``store`` is the history folder (default: the first Guild's, next to its
    cache). The run is saved when the block ends.
    """
    run = Run(kind, label, store=store)
    run.scoped = True
    token = _CURRENT.set(run)
    try:
        yield run
    finally:
        _CURRENT.reset(token)
        for rec in run.recorders:
            if not rec.closed:
                rec.drain()  # a Guild still open: its part is recorded as it stands
        run.finish()


def guild_recorder(
    config: Config,
    *,
    max_agents: int,
    min_agents: int,
    memory_probe: Callable[[int], int | None] | None = None,
    on_alert: Callable[[Alert], object] | None = None,
) -> tuple[Run, RunRecorder]:
    """The run a new Guild belongs to (the enclosing ``recorded_run``, else its own) and its recorder."""
    from guildcore.config import usable_cpus
    from guildcore.metrics.recorder import RecorderSettings

    flat = config.flat()
    flat["host.cpus"] = usable_cpus()
    flat["caching.path"] = config.cache_path()
    settings = RecorderSettings(
        max_agents=max_agents,
        min_agents=min_agents,
        limit_bytes=config.limits.per_agent,
        warning_threshold=config.monitoring.warning_threshold,
        log_alerts=config.monitoring.alerts,
        memory_probe=memory_probe,
        config={k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()},
    )
    run = current_run() or Run("guild")
    return run, run.recorder(settings, store=store_path(config.cache_path()), on_alert=on_alert)
