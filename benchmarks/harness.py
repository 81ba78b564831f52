"""The benchmark harness: side-by-side measurements, tables, JSON and markdown.

A suite (``benchmarks/suite_<name>.py``) exposes ``NAME`` and
``run(bench: Bench) -> None``. Inside ``run`` it declares measurements:

- ``bench.compare(group, systems, ...)`` times callables side by side,
  interleaved (A B C A B C ...) so that a noisy neighbour hurts every system
  alike, and keeps the median;
- ``bench.record(group, system, samples, unit=...)`` takes values a suite
  timed itself (process pools, cold starts);
- ``bench.skip(system, reason)`` says a peer is missing, ``bench.note(text)``
  adds a line under the table; ``bench.quick`` asks for a short run.

The runner (``python -m benchmarks``) then prints one table per suite and
writes ``results/<suite>.json``, ``results/<suite>.md`` and ``results/latest.md``
(an index with the machine the numbers come from).

Ratios: each row shows its median divided by its group's baseline median
(the ``baseline=`` system, else the first system whose name starts with
``guildcore``). The JSON also lists every guildcore-to-peer ratio.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Bench", "Group", "machine_info", "render_markdown", "write_index", "write_results"]

MIN_REPEAT = 3  # fewer samples make a median meaningless
DEFAULT_REPEAT = 7
QUICK_REPEAT = 3
SUBJECT_PREFIX = "guildcore"  # systems named so are ours; the rest are peers

# Time units: seconds per unit. Samples in any other unit are taken as they are.
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}
_UNIT_ALIASES = {"us": "µs", "usec": "µs", "msec": "ms", "sec": "s"}


def _unit(name: str) -> str:
    return _UNIT_ALIASES.get(name, name)


@dataclass
class Group:
    """One side-by-side measurement: systems and their samples, in ``unit``."""

    name: str
    unit: str
    baseline: str | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def median(self, system: str) -> float:
        return statistics.median(self.samples[system])

    def reference(self) -> str | None:
        """The system ratios are taken against."""
        if self.baseline in self.samples:
            return self.baseline
        return next((s for s in self.samples if s.startswith(SUBJECT_PREFIX)), None)

    def ratio(self, system: str) -> float | None:
        ref = self.reference()
        if ref is None or ref == system:
            return None
        base = self.median(ref)
        return self.median(system) / base if base else None

    def subject_ratios(self) -> dict[str, float]:
        """``"guildcore X / peer Y"`` -> ratio of medians, for every pair."""
        ours = [s for s in self.samples if s.startswith(SUBJECT_PREFIX)]
        peers = [s for s in self.samples if not s.startswith(SUBJECT_PREFIX)]
        out = {}
        for a in ours:
            for b in peers:
                if self.median(b):
                    out[f"{a} / {b}"] = self.median(a) / self.median(b)
        return out


class Bench:
    """What a suite talks to. ``repeat`` is how many samples each system gets."""

    def __init__(self, suite: str, *, quick: bool = False, repeat: int | None = None) -> None:
        self.suite = suite
        self.quick = quick
        self.repeat = max(MIN_REPEAT, repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT))
        self.groups: dict[str, Group] = {}
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}
        self.elapsed_s = 0.0

    @property
    def repeats(self) -> int:  # the name some suites read
        return self.repeat

    def _group(self, name: str, unit: str, baseline: str | None) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name, unit, baseline)
        elif group.unit != unit:
            raise ValueError(f"group {name!r} is in {group.unit}, cannot add samples in {unit}")
        if baseline is not None:
            group.baseline = baseline
        return group

    def compare(
        self,
        group: str,
        systems: Mapping[str, Callable[[], object]],
        *,
        repeat: int | None = None,
        number: int = 1,
        baseline: str | None = None,
        unit: str = "µs",
        warmup: int = 1,
    ) -> Group:
        """Time each callable ``number`` times per sample, interleaving systems.

        A sample is the mean time of one call over ``number`` calls; each
        system gets ``repeat`` samples (at least 3), taken in turns.
        """
        unit = _unit(unit)
        if unit not in _TIME_UNITS:
            raise ValueError(f"compare() measures time; unit must be one of {sorted(_TIME_UNITS)}")
        if number < 1:
            raise ValueError(f"number must be at least 1, got {number}")
        scale = _TIME_UNITS[unit]
        rounds = max(MIN_REPEAT, repeat or self.repeat)
        g = self._group(group, unit, baseline)
        for fn in systems.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for name, fn in systems.items():
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                dt = time.perf_counter() - t0
                g.samples.setdefault(name, []).append(dt / number / scale)
        return g

    def record(
        self,
        group: str | None = None,
        system: str | None = None,
        samples: Sequence[float] | None = None,
        *,
        unit: str = "s",
        baseline: str | None = None,
        note: str = "",
        # The spelling older suites use: case=, method=, times=, suite=.
        case: str | None = None,
        method: str | None = None,
        times: Sequence[float] | None = None,
        suite: str | None = None,
    ) -> Group:
        """Add samples a suite measured itself, already in ``unit``."""
        group = group if group is not None else case
        system = system if system is not None else method
        values = list(samples if samples is not None else (times or []))
        if group is None or system is None:
            raise TypeError("record() needs a group (case=) and a system (method=)")
        if not values:
            raise ValueError(f"record({group!r}, {system!r}) got no samples")
        g = self._group(group, _unit(unit), baseline)
        g.samples.setdefault(system, []).extend(float(v) for v in values)
        if note:
            g.notes[system] = note
        return g

    def note(self, text: str) -> None:
        self.notes.append(text)

    def skip(self, system: str, reason: str) -> None:
        """A peer that cannot run here (not installed, wrong platform)."""
        self.skipped[system] = reason

    def available(self, module: str, system: str | None = None) -> bool:
        """Whether ``module`` imports; if not, record a skip for ``system``."""
        try:
            __import__(module)
        except ImportError as exc:
            self.skip(system or module, f"{module} is not installed ({exc})")
            return False
        return True

    def sample_counts(self) -> list[int]:
        """The distinct numbers of samples the systems got, sorted (what was really taken)."""
        return sorted({len(v) for g in self.groups.values() for v in g.samples.values()})

    def samples_text(self) -> str:
        """``"5 samples per system"``, or a range when groups differ (see each row's count)."""
        counts = self.sample_counts()
        if not counts:
            return "no samples"
        if len(counts) == 1:
            return f"{counts[0]} samples per system"
        return f"{counts[0]} to {counts[-1]} samples per system (each row's count in the samples column)"

    def to_json(self) -> dict[str, Any]:
        counts = self.sample_counts()
        return {
            "suite": self.suite,
            "quick": self.quick,
            "repeat": self.repeat,
            "samples_min": counts[0] if counts else 0,
            "samples_max": counts[-1] if counts else 0,
            "elapsed_s": round(self.elapsed_s, 3),
            "machine": machine_info(),
            "groups": [
                {
                    **asdict(g),
                    "medians": {s: g.median(s) for s in g.samples},
                    "reference": g.reference(),
                    "ratios": {s: r for s in g.samples if (r := g.ratio(s)) is not None},
                    "guildcore_to_peer": g.subject_ratios(),
                }
                for g in self.groups.values()
            ],
            "notes": self.notes,
            "skipped": self.skipped,
        }


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_markdown(bench: Bench) -> str:
    """The suite's table with its notes and skips, as markdown."""
    lines = [
        f"## {bench.suite}",
        "",
        f"{bench.samples_text()}, interleaved{' (quick)' if bench.quick else ''}; "
        "median shown; ratio = median / reference median (lower is faster when the unit is time).",
        "",
        "| group | system | median | unit | ratio | samples | note |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for g in bench.groups.values():
        ref = g.reference()
        for system, values in g.samples.items():
            r = g.ratio(system)
            ratio = "reference" if system == ref else (f"{r:.2f}x {ref}" if r is not None else "")
            lines.append(
                f"| {g.name} | {system} | {_fmt(g.median(system))} | {g.unit} | {ratio} "
                f"| {len(values)} | {g.notes.get(system, '')} |"
            )
    if bench.skipped:
        lines.append("")
        lines += [f"- skipped {system}: {reason}" for system, reason in bench.skipped.items()]
    if bench.notes:
        lines.append("")
        lines += [f"- {text}" for text in bench.notes]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, Python and date: what a reader needs to weigh the numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram_bytes = None
    try:
        ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "load_1m": round(load, 2) if load is not None else None,  # others' work skews numbers
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "ram_gb": round(ram_bytes / 2**30, 1) if ram_bytes else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_results(bench: Bench, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<suite>.json`` and ``<suite>.md``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{bench.suite}.json"
    md_path = out_dir / f"{bench.suite}.md"
    json_path.write_text(
        json.dumps(bench.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    md_path.write_text(render_markdown(bench), encoding="utf-8")
    return json_path, md_path


def write_index(out_dir: Path, command: str | None = None) -> Path:
    """``latest.md``: the machine, the command that reproduces it, then every suite's table."""
    m = machine_info()
    lines = [
        "# Benchmark results",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gb']} GB RAM",
        f"- {m['implementation']} {m['python']} on {m['os']}; load average {m['load_1m']} when written",
        f"- written {m['date']}",
    ]
    if command:
        lines.append(f"- reproduce: `{command}`")
    lines.append("")
    for md in sorted(out_dir.glob("*.md")):
        if md.name == "latest.md":
            continue
        suite = md.stem
        data_path = out_dir / f"{suite}.json"
        when = ""
        if data_path.exists():
            try:
                when = json.loads(data_path.read_text(encoding="utf-8"))["machine"]["date"]
            except (ValueError, KeyError, TypeError):
                when = "unknown date"
        lines.append(f"<!-- {suite}: measured {when} -->")
        lines.append(md.read_text(encoding="utf-8"))
    path = out_dir / "latest.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
