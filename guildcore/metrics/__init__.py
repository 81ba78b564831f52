"""Metrics of runs: recording, alerts, history, live status, diagnosis.

Modules, from the hot path outwards:

- ``recorder``: ``RunRecorder``, the one interface the engine reports to;
- ``fold`` and ``series``: aggregates built from the reports at each tick;
- ``alerts``: ``Alert`` and the rules that raise them once per episode;
- ``run``: a run of one or more Guilds (``recorded_run``), saved when done;
- ``summary``: the record of a run and its summary;
- ``history``: the LMDB store of records next to the cache;
- ``live``: the status files ``guild top`` reads;
- ``doctor`` and ``prometheus``: what ``guild doctor`` and
  ``guild stats --prometheus`` make of the history.

Everything here imports only the standard library, ``lmdb``, ``msgpack``
and ``guildcore.errors``; drawing (``guild top``, the HTML report) lives in
``guildcore.dashboard``. Names below load on first use, so the engine's
import of ``recorder`` pulls nothing else in.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from guildcore.metrics.alerts import Alert
    from guildcore.metrics.recorder import RunRecorder
    from guildcore.metrics.run import Run, current_run, recorded_run

_LAZY = {
    "Alert": "guildcore.metrics.alerts",
    "RunRecorder": "guildcore.metrics.recorder",
    "Run": "guildcore.metrics.run",
    "current_run": "guildcore.metrics.run",
    "recorded_run": "guildcore.metrics.run",
}

__all__ = ["Alert", "Run", "RunRecorder", "current_run", "recorded_run"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(module)  # not importlib.import_module: importlib costs ~0.3 ms of import
    return getattr(sys.modules[module], name)
