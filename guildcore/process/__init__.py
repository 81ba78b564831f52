"""Processes: named, versioned workflows of steps, each step cached.

A process is a DAG of steps defined in ``.guild/processes/NAME.yaml`` or in
Python (``Process``): one model (``model``), two front ends (``yamlfile``,
``Process``). ``g.run_process(name_or_process, **inputs)`` and
``guild run NAME --input k=v`` run it (``runner``): every step starts as soon
as the steps it needs have finished (``plan``, a pure function), map steps
fan their items out through the pool with the usual routing, and each step
(each item of a map) is cached under the process, its version, the step, its
inputs and its function's code. The run returns the outputs with a timeline
of the steps (``record``).

Modules: ``model`` (definitions and their checks), ``yamlfile`` (the YAML
front end), ``builder`` (the Python front end), ``plan`` (what may start), ``runner`` (running on a Guild),
``call`` (what agents run around a step function), ``record`` (the run's
outputs and timeline), ``registry`` (finding processes, the session cache of
definitions, the recent-runs record), ``preload`` (agents warm with the
modules of likely processes), ``command`` (``guild run``, ``guild preload``).
"""

from __future__ import annotations

from guildcore.process.builder import Process
from guildcore.process.model import ProcessDef, StepDef
from guildcore.process.record import ProcessRun, StepRecord

__all__ = ["Process", "ProcessDef", "ProcessRun", "StepDef", "StepRecord"]
