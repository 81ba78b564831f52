"""What one process run did: its outputs, and each step's line of the timeline.

``ProcessRun`` is what ``g.run_process`` returns: a read-only mapping of step
name to output (the steps that finished), plus the record of every step
(``StepRecord``: status, start and end from the run's start, items, cache
hits, duplicates saved, agents). ``timeline()`` and ``to_dict()`` give the
same facts as plain data (lists, dicts, str, float, int) for JSON and for
run histories; ``summary()`` renders the table ``guild run`` prints.

Times: ``start_s``/``end_s`` are seconds from the start of the run on one
monotonic clock, so the steps of a run compare with each other (two steps
overlapped if each started before the other ended); ``started_at`` is the
run's wall-clock start (epoch seconds).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ProcessRun", "StepRecord"]

WAITING, RUNNING, DONE, FAILED, CANCELLED, NOT_RUN = (
    "waiting", "running", "done", "failed", "cancelled", "not run",
)  # fmt: skip


@dataclass
class StepRecord:
    step: str
    status: str = WAITING
    start_s: float | None = None
    end_s: float | None = None
    items: int = 0  # calls the step stands for: 1, or its map's items
    cache_hits: int = 0
    duplicates: int = 0  # items not run because an equal item of the same step was
    agents: int = 0  # distinct agents that ran its calls
    inline: int = 0  # calls the router ran in the caller instead
    error: str | None = None
    cause: str | None = None  # not run: the failed step upstream

    @property
    def wall_s(self) -> float | None:
        if self.start_s is None or self.end_s is None:
            return None
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["wall_s"] = self.wall_s
        return out


@dataclass
class ProcessRun(Mapping[str, Any]):
    """Step name -> output, for the steps that finished; the records of all of them."""

    process: str
    version: str
    source: str
    started_at: float
    steps: list[StepRecord]
    outputs: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    definition: str = "parsed"  # parsed, cached (this session) or python
    sinks: tuple[str, ...] = ()  # steps no other step needs: the process's results

    def __getitem__(self, step: str) -> Any:
        return self.outputs[step]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    @property
    def ok(self) -> bool:
        return all(r.status == DONE for r in self.steps)

    def record(self, step: str) -> StepRecord:
        for r in self.steps:
            if r.step == step:
                return r
        from guildcore.errors import ConfigError

        steps = ", ".join(r.step for r in self.steps)
        raise ConfigError(f"process {self.process!r} has no step {step!r}; its steps: {steps}", key=step)

    def timeline(self) -> list[dict[str, Any]]:
        """One plain dict per step, in definition order."""
        return [r.to_dict() for r in self.steps]

    def to_dict(self, *, outputs: str = "sinks") -> dict[str, Any]:
        """Plain data; ``outputs``: ``sinks`` (the results), ``all`` or ``none``."""
        shown = {
            "sinks": {k: v for k, v in self.outputs.items() if k in self.sinks},
            "all": dict(self.outputs),
            "none": {},
        }[outputs]
        return {
            "process": self.process,
            "version": self.version,
            "source": self.source,
            "status": "ok" if self.ok else "failed",
            "started_at": self.started_at,
            "wall_s": self.wall_s,
            "definition": self.definition,
            "outputs": shown,
            "steps": self.timeline(),
        }

    def summary(self) -> str:
        """The table: step, status, items, wall, cache hits, agents."""
        header = ("step", "status", "items", "wall", "cache hits", "agents")
        rows = [header]
        for r in self.steps:
            wall = "-" if r.wall_s is None else f"{r.wall_s:.2f} s"
            hits = f"{r.cache_hits}/{r.items}" if r.items else "-"
            agents = str(r.agents) + (f" (+{r.inline} inline)" if r.inline else "")
            status = r.status + (f" ({r.cause} failed)" if r.cause else "")
            if r.duplicates:
                hits += f", {r.duplicates} dup"
            rows.append((r.step, status, str(r.items), wall, hits, agents))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = []
        for n, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        state = "ok" if self.ok else "FAILED"
        lines.append(f"process {self.process} (version {self.version}): {state} in {self.wall_s:.2f} s")
        for r in self.steps:
            if r.error:
                lines.append(f"  {r.step}: {r.error}")
        return "\n".join(lines)
