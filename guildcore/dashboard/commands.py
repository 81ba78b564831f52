"""The ``guild stats``, ``guild top``, ``guild report`` and ``guild doctor`` commands.

Kept free of heavy imports: ``guild --help`` builds these parsers. Every
command reads the history of the project in the working folder
(``.guild/metrics``, next to the cache) unless ``--store`` names another.
Exit codes follow ``guildcore.cli``: 0 done, 1 nothing to show (no run
recorded, no such run), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from guildcore.errors import ConfigError

__all__ = ["add_parsers"]

NO_RUNS = "no run is recorded in {path} yet: runs are saved when a Guild shuts down (monitoring.metrics: true)"


def _store(args: argparse.Namespace) -> str:
    if args.store:
        import os

        return os.path.abspath(str(args.store))
    from guildcore.config import load_config
    from guildcore.metrics.run import store_path

    return store_path(load_config().cache_path())


def _history(args: argparse.Namespace) -> Any:
    from guildcore.metrics.history import History

    return History(_store(args))


def _record(args: argparse.Namespace, which: str | None) -> tuple[Any, Mapping[str, Any] | None]:
    history = _history(args)
    try:
        run_id = history.resolve(which)
    except ConfigError as exc:
        print(f"guild: error: {exc.args[0]}", file=sys.stderr)
        return history, None
    if run_id is None:
        if history.runs(1):
            print(f"guild: error: no run {which!r} in {history.path}; `guild stats` lists them", file=sys.stderr)
        else:
            print(NO_RUNS.format(path=history.path), file=sys.stderr)
        return history, None
    return history, history.load(run_id)


# ---------------------------------------------------------------- stats


def _fmt_bytes(n: Any) -> str:
    from guildcore.errors import format_bytes

    return "-" if n is None else format_bytes(n)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:.0%}"


def _stats_table(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    head = ("run", "started", "program", "wall", "done", "failed", "tasks/min", "agents", "efficiency",
            "peak mem", "hit rate", "alerts")  # fmt: skip
    lines = []
    table = [head]
    for s in summaries:
        tasks = s.get("tasks") or {}
        table.append((
            str(s.get("id")),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(float(s.get("started") or 0))),
            str(s.get("label"))[:32],
            f"{s.get('wall_s', 0):.2f} s",
            f"{tasks.get('done', 0) + tasks.get('inline_batches', 0):,}",
            f"{tasks.get('failed', 0):,}",
            f"{s.get('tasks_per_min', 0):,.0f}",
            f"{s.get('agents_used', 0)}/{s.get('max_agents', 0)}",
            _pct(s.get("parallel_efficiency")),
            _fmt_bytes(s.get("peak_private_bytes")),
            _pct((s.get("cache") or {}).get("hit_rate")),
            str(sum((s.get("alerts") or {}).values())),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    return lines


def averages(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Average execution time, peak memory, cache effectiveness and error rate over runs."""
    n = len(summaries)
    peaks = [s["peak_private_bytes"] for s in summaries if s.get("peak_private_bytes") is not None]
    lookups = sum((s.get("cache") or {}).get("lookups", 0) for s in summaries)
    hits = sum((s.get("cache") or {}).get("hits", 0) for s in summaries)
    done = sum((s.get("tasks") or {}).get("done", 0) for s in summaries)
    failed = sum((s.get("tasks") or {}).get("failed", 0) for s in summaries)
    return {
        "runs": n,
        "wall_s": sum(s.get("wall_s", 0.0) for s in summaries) / n if n else None,
        "peak_private_bytes": {"mean": sum(peaks) / len(peaks) if peaks else None, "max": max(peaks, default=None)},
        "cache": {"lookups": lookups, "hits": hits, "hit_rate": hits / lookups if lookups else None},
        "error_rate": failed / (done + failed) if done + failed else 0.0,
        "alerts": sum(sum((s.get("alerts") or {}).values()) for s in summaries),
    }


def _cmd_stats(args: argparse.Namespace) -> int:
    history = _history(args)
    summaries = history.runs(args.last)
    if args.prometheus:
        from guildcore.metrics.prometheus import exposition

        sys.stdout.write(exposition(summaries).decode())
        return 0
    if args.json:
        print(json.dumps({"store": history.path, "averages": averages(summaries), "runs": summaries}, indent=2, default=str))
        return 0
    if not summaries:
        print(NO_RUNS.format(path=history.path))
        return 1
    total = len(history.runs())
    print(f"# {total} run{'s' * (total != 1)} in {history.path}; the last {len(summaries)}, newest first")
    print("\n".join(_stats_table(summaries)))
    a = averages(summaries)
    cache = a["cache"]
    hit = f"{cache['hit_rate']:.0%} of {cache['lookups']:,} lookups" if cache["hit_rate"] is not None else "no cached calls"
    print(
        f"\naverage over these {a['runs']} runs: execution {a['wall_s']:.2f} s; peak private memory "
        f"{_fmt_bytes(a['peak_private_bytes']['mean'])} (highest {_fmt_bytes(a['peak_private_bytes']['max'])}); "
        f"cache hit rate {hit}; error rate {a['error_rate']:.1%}; {a['alerts']} alerts"
    )
    return 0


# ---------------------------------------------------------------- top


def _cmd_top(args: argparse.Namespace) -> int:
    from guildcore.dashboard.top import run_top

    return run_top(args.guild, once=args.once, wait=args.wait)


# ---------------------------------------------------------------- report


def _cmd_report(args: argparse.Namespace) -> int:
    from guildcore.dashboard.report import write_report
    from guildcore.errors import format_bytes

    _, record = _record(args, args.run)
    if record is None:
        return 1
    size = write_report(record, args.output)
    print(f"wrote {args.output} ({format_bytes(size)}): run {record['id']}, {record.get('label')}")
    return 0


# ---------------------------------------------------------------- doctor


def _cmd_doctor(args: argparse.Namespace) -> int:
    from guildcore.metrics.doctor import diagnose

    history, record = _record(args, args.run)
    if record is None:
        return 1
    summaries = history.runs()
    ids = [s["id"] for s in summaries]
    start = ids.index(record["id"])
    targets = [record] + [history.load(i) for i in ids[start + 1 : start + args.last]]
    report = []
    for target in targets:
        if target is None:
            continue
        position = ids.index(target["id"])
        earlier = [r for r in (history.load(i) for i in ids[position + 1 : position + 1 + args.history]) if r is not None]
        report.append((target, diagnose(target, earlier)))
    if args.json:
        print(json.dumps([{"run": t["id"], "findings": [f.to_dict() for f in fs]} for t, fs in report], indent=2))
        return 0
    for target, findings in report:
        s = target.get("summary") or {}
        print(f"# run {target['id']} ({target.get('label')}): {s.get('wall_s', 0):.2f} s, "
              f"{(s.get('tasks') or {}).get('done', 0):,} tasks; {len(findings)} finding{'s' * (len(findings) != 1)}")  # fmt: skip
        if not findings:
            print("no problem found: agents were busy, memory stayed low and the cache paid off\n")
        for i, f in enumerate(findings, 1):
            print(f"{i}. [{f.symptom}] {f.title} ({f.check})")
            print(f"   evidence: {f.evidence}")
            print(f"   fix: {f.fix}")
        print()
    return 0


# ---------------------------------------------------------------- parsers


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="DIR",
        help="the run history folder (default: 'metrics' next to the cache, .guild/metrics)",
    )  # fmt: skip


def add_parsers(subparsers: Any) -> None:
    stats = subparsers.add_parser(
        "stats", help="the last runs: execution time, peak memory, cache effectiveness, errors",
        description="Summaries of the last runs recorded in this project's history, newest first, "
        "and their averages.",
    )  # fmt: skip
    stats.add_argument("-n", "--last", type=int, default=10, metavar="N", help="runs to show (default: 10)")
    form = stats.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the summaries and averages as JSON")
    form.add_argument("--prometheus", action="store_true", help="print the Prometheus text exposition format")
    _store_option(stats)
    stats.set_defaults(func=_cmd_stats)

    top = subparsers.add_parser(
        "top", help="the Guilds running on this host, one of them live",
        description="List the Guilds running on this host and show one live (Ctrl-C to quit): agents "
        "with state, task, memory and busy fraction; queue; mode; throughput; cache hits; alerts.",
    )  # fmt: skip
    top.add_argument("guild", nargs="?", metavar="GUILD", help="pid or run id of the one to show (default: newest)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--wait", action="store_true", help="when nothing runs, wait for a Guild to start")
    top.set_defaults(func=_cmd_top)

    report = subparsers.add_parser(
        "report", help="one run as a self-contained HTML report (opens offline)",
        description="Write the report of one recorded run: task stream per agent, memory per agent, "
        "queue depth, throughput, cache hits, time by function, alerts. Needs plotly "
        "(pip install 'guildcore[report]'); the file itself needs nothing.",
    )  # fmt: skip
    report.add_argument("run", nargs="?", metavar="RUN", help="run id, its unique start or end, or -N (default: the last run)")
    report.add_argument("-o", "--output", default="report.html", metavar="FILE", help="where to write (default: report.html)")
    _store_option(report)
    report.set_defaults(func=_cmd_report)

    doctor = subparsers.add_parser(
        "doctor", help="what made a run slow, memory-hungry or cache-poor, and what to change",
        description="Check a recorded run (default: the last) for the usual causes of slow execution, "
        "high memory and poor cache performance; each finding gives its evidence and the setting or "
        "code change to make.",
    )  # fmt: skip
    doctor.add_argument("run", nargs="?", metavar="RUN", help="run id, its unique start or end, or -N (default: the last run)")
    doctor.add_argument("--last", type=int, default=1, metavar="N", help="check N runs, from RUN backwards (default: 1)")
    doctor.add_argument("--history", type=int, default=20, metavar="N",
                        help="earlier runs compared for cache checks (default: 20)")  # fmt: skip
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    _store_option(doctor)
    doctor.set_defaults(func=_cmd_doctor)
