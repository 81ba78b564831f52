"""``guild report``: one run's record as a self-contained HTML file.

This module covers turning a run record (``metrics.summary``) into plotly
figures (task stream per agent, memory per agent, queue depth, throughput,
cache hits by tier and function, time by function) and tables (summary,
agents, functions, alerts, process steps), written as one HTML file with
plotly.js inlined: it opens from disk, offline, with no server. It does not
cover recording or storing runs.

Plotly.js comes from the ``plotly`` package (``pip install
'guildcore[report]'``); its files are read, the package is never imported.
"""

from __future__ import annotations

import bisect
import html
import importlib.util
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from guildcore import __version__
from guildcore.errors import GuildError, format_bytes
from guildcore.metrics.summary import rows

__all__ = ["CHART_IDS", "ReportError", "plotly_js", "render_html", "write_report"]

# Bars past this in the task stream are merged (same agent and function,
# back to back), so a run of 100,000 tasks still draws in a second.
GANTT_MAX_BARS = 4000
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8")
FAILED_COLOR = "#d62728"
CHART_IDS = ("tasks", "memory", "queue", "throughput", "cache", "functions")


class ReportError(GuildError):
    """The report cannot be written (plotly missing, or an unusable record)."""


def plotly_js() -> str:
    """plotly.js, minified, from the installed ``plotly`` package."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise ReportError("guild report needs plotly.js, shipped by the plotly package: pip install 'guildcore[report]'")
    path = os.path.join(os.path.dirname(spec.origin), "package_data", "plotly.min.js")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ReportError(f"plotly is installed but {path} cannot be read ({exc}); reinstall it: pip install --force-reinstall plotly") from None


# ---------------------------------------------------------------- figures


def _agent_label(key: Any) -> str:
    text = str(key)
    if text.endswith("inline"):
        guild = text.partition(".")[0] if "." in text else ""
        return f"inline (caller){' g' + guild if guild else ''}"
    if "." in text:
        guild, _, agent = text.partition(".")
        return f"guild {guild} agent {agent}"
    return f"agent {text}"


def _layout(title: str, xtitle: str, ytitle: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0.01},
        "xaxis": {"title": {"text": xtitle}, "zeroline": False},
        "yaxis": {"title": {"text": ytitle}},
        "margin": {"l": 70, "r": 20, "t": 50, "b": 50},
        "height": 360,
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        "hovermode": "closest",
        **extra,
    }


def _empty(layout: dict[str, Any], text: str) -> dict[str, Any]:
    layout["annotations"] = [{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}]
    return layout


def _alert_shapes(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    started = float(record.get("started") or 0.0)
    shapes = []
    for guild in record.get("guilds", []):
        for alert in guild.get("alerts", []):
            t = float(alert.get("t") or 0.0) - started
            shapes.append({"type": "line", "x0": t, "x1": t, "yref": "paper", "y0": 0, "y1": 1,
                           "line": {"color": FAILED_COLOR, "width": 1, "dash": "dot"}})  # fmt: skip
    return shapes


def _merge_bars(tasks: list[dict[str, Any]], span: float) -> list[dict[str, Any]]:
    """Merge back-to-back tasks of one agent and function into segments, past ``GANTT_MAX_BARS``."""
    if len(tasks) <= GANTT_MAX_BARS:
        for t in tasks:
            t["count"] = 1
        return tasks
    gap = span / 2000
    merged: list[dict[str, Any]] = []
    for t in sorted(tasks, key=lambda r: (str(r["agent"]), r["started"])):
        last = merged[-1] if merged else None
        if (
            last is not None and last["agent"] == t["agent"] and last["fn"] == t["fn"] and last["outcome"] == t["outcome"]
            and t["started"] - (last["started"] + last["run_s"]) <= gap
        ):  # fmt: skip
            last["run_s"] = t["started"] + t["run_s"] - last["started"]
            last["count"] += 1
            last["n_items"] += t["n_items"]
        else:
            merged.append({**t, "count": 1})
    return merged


def task_stream(record: Mapping[str, Any]) -> dict[str, Any]:
    """Bars of tasks per agent over time, coloured by function; failures red; steps on top."""
    tasks = [r for r in rows(record) if r["started"] is not None and r["run_s"] is not None and r["agent"] is not None]
    bars = _merge_bars(tasks, float(record.get("wall_s") or 1.0))
    by_fn: dict[str, list[dict[str, Any]]] = {}
    for t in bars:
        by_fn.setdefault("failed" if t["outcome"] == "failed" else t["fn"], []).append(t)
    data = []
    colors = iter(PALETTE * 10)
    for name, group in sorted(by_fn.items(), key=lambda kv: (kv[0] == "failed", kv[0])):
        data.append({
            "type": "bar", "orientation": "h", "name": name,
            "y": [_agent_label(t["agent"]) for t in group],
            "base": [t["started"] for t in group],
            "x": [max(t["run_s"], 1e-6) for t in group],
            "marker": {"color": FAILED_COLOR if name == "failed" else next(colors)},
            "customdata": [_task_hover(t) for t in group],
            "hovertemplate": "%{customdata}<extra></extra>",
        })  # fmt: skip
    starting = [a for g in record.get("guilds", []) for a in g.get("agents", [])
                if not a.get("inline") and a.get("started") is not None and a.get("ready") is not None]  # fmt: skip
    if starting:
        data.append({
            "type": "bar", "orientation": "h", "name": "agent starting",
            "y": [_agent_label(a["key"]) for a in starting],
            "base": [a["started"] for a in starting],
            "x": [max(a["ready"] - a["started"], 1e-6) for a in starting],
            "marker": {"color": "#d9d9d9"},
            "customdata": [f"{_agent_label(a['key'])} starting: {a['ready'] - a['started']:.3f} s" for a in starting],
            "hovertemplate": "%{customdata}<extra></extra>",
        })  # fmt: skip
    steps = record.get("steps") or []
    if steps:
        data.append({
            "type": "bar", "orientation": "h", "name": "process steps",
            "y": [f"step {s.get('name')}" for s in steps],
            "base": [s.get("start") or 0.0 for s in steps],
            "x": [max((s.get("end") or 0.0) - (s.get("start") or 0.0), 1e-6) for s in steps],
            "marker": {"color": ["#bbbbbb" if s.get("cached") else FAILED_COLOR if s.get("status") == "failed" else "#555555" for s in steps]},
            "customdata": [f"step {s.get('name')}<br>{s.get('status')}{' (cached)' if s.get('cached') else ''}" for s in steps],
            "hovertemplate": "%{customdata}<extra></extra>",
        })  # fmt: skip
    layout = _layout("Task stream: what each agent ran, when", "seconds since the run started", "")
    layout.update(barmode="overlay", bargap=0.25, shapes=_alert_shapes(record))
    layout["yaxis"]["automargin"] = True
    n_rows = len({str(t["agent"]) for t in tasks}) + len(steps)
    layout["height"] = max(260, 60 + 34 * n_rows)
    if not data:
        _empty(layout, "no task ran in an agent")
    return {"data": data, "layout": layout}


def _task_hover(t: Mapping[str, Any]) -> str:
    what = f"{t['count']} tasks" if t.get("count", 1) > 1 else f"task {t['id']}"
    cpu = f"<br>CPU {t['cpu_s']:.3f} s" if t.get("cpu_s") is not None and t.get("count", 1) == 1 else ""
    err = f"<br>{html.escape(str(t['error']))}" if t.get("error") else ""
    return (
        f"{what} · {html.escape(str(t['fn']))}<br>{_agent_label(t['agent'])} · {t['n_items']} item(s)"
        f"<br>ran {t['run_s']:.4f} s from {t['started']:.3f} s{cpu}<br>{t['outcome']}{err}"
    )


def memory(record: Mapping[str, Any]) -> dict[str, Any]:
    """Private memory of every agent, the supervisor and all together, over time; the limit."""
    data = []
    colors = iter(PALETTE * 10)
    limits = set()
    for guild in record.get("guilds", []):
        if guild.get("limit_bytes"):
            limits.add(guild["limit_bytes"])
        for agent in guild.get("agents", []):
            points = agent.get("memory") or []
            if agent.get("inline") or not points:
                continue
            data.append({"type": "scatter", "mode": "lines+markers", "name": _agent_label(agent["key"]),
                         "x": [p[0] for p in points], "y": [p[1] / 1e6 for p in points],
                         "line": {"color": next(colors), "shape": "hv"}, "marker": {"size": 3}})  # fmt: skip
        series = guild.get("series") or {}
        suffix = f" (guild {guild['guild']})" if len(record.get("guilds", [])) > 1 else ""
        for name, key, dash in (("supervisor", "supervisor_memory", "dot"), ("total", "total_memory", "dash")):
            points = series.get(key) or []
            if points:
                data.append({"type": "scatter", "mode": "lines", "name": name + suffix,
                             "x": [p[0] for p in points], "y": [p[1] / 1e6 for p in points],
                             "line": {"dash": dash, "color": "#444444" if name == "total" else "#999999"}})  # fmt: skip
    layout = _layout("Memory per agent (private, RssAnon)", "seconds since the run started", "MB")
    shapes = _alert_shapes(record)
    top = max((y for trace in data for y in trace["y"]), default=0.0)
    far = bool(limits) and max(limits) / 1e6 > 3 * max(top, 1.0)  # the limit would flatten every line
    for limit in limits if not far else ():
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": limit / 1e6, "y1": limit / 1e6,
                       "line": {"color": FAILED_COLOR, "width": 1}})  # fmt: skip
    shapes += _mode_shapes(record)
    layout["shapes"] = shapes
    if limits:
        text = f"limits.per_agent {format_bytes(max(limits))}" + (" (above this chart)" if far else "")
        layout["annotations"] = [{"text": text, "xref": "paper", "x": 1, "yref": "paper" if far else "y",
                                  "y": 1 if far else max(limits) / 1e6, "xanchor": "right", "yanchor": "bottom",
                                  "showarrow": False, "font": {"color": FAILED_COLOR, "size": 11}}]  # fmt: skip
    if far:
        layout["yaxis"]["range"] = [0, top * 1.25]
    if not data:
        _empty(layout, "no memory sample (agents are sampled while busy, every limits.sample_interval)")
    return {"data": data, "layout": layout}


def _mode_shapes(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    shapes = []
    for guild in record.get("guilds", []):
        modes = guild.get("modes") or []
        end = guild.get("closed") or record.get("wall_s") or 0
        for i, (t, mode, _why) in enumerate(modes):
            if mode == "normal":
                continue
            until = modes[i + 1][0] if i + 1 < len(modes) else end
            color = "rgba(214,39,40,0.12)" if mode in ("critical", "sequential") else "rgba(255,165,0,0.12)"
            shapes.append({"type": "rect", "yref": "paper", "x0": t, "x1": until, "y0": 0, "y1": 1,
                           "fillcolor": color, "line": {"width": 0}, "layer": "below"})  # fmt: skip
    return shapes


def queue_depth(record: Mapping[str, Any]) -> dict[str, Any]:
    data = []
    for guild in record.get("guilds", []):
        points = (guild.get("series") or {}).get("queue") or []
        if points:
            name = f"guild {guild['guild']}" if len(record.get("guilds", [])) > 1 else "queued tasks"
            data.append({"type": "scatter", "mode": "lines", "name": name, "fill": "tozeroy",
                         "x": [p[0] for p in points], "y": [p[1] for p in points], "line": {"shape": "hv"}})  # fmt: skip
    layout = _layout("Queue depth: tasks waiting in the supervisor", "seconds since the run started", "tasks")
    if not data:
        _empty(layout, "no task was queued")
    return {"data": data, "layout": layout}


def throughput(record: Mapping[str, Any]) -> dict[str, Any]:
    """Items finished per second, in up to 60 bins over the run."""
    wall = float(record.get("wall_s") or 0.0)
    width = _nice(max(wall / 60, 0.05))
    bins = max(1, math.ceil(wall / width))
    edges = [i * width for i in range(bins + 1)]
    totals = [0.0] * bins
    for guild in record.get("guilds", []):
        points = (guild.get("series") or {}).get("done") or []
        if not points:
            continue
        times = [p[0] for p in points]
        for i in range(bins):
            totals[i] += _at(points, times, edges[i + 1]) - _at(points, times, edges[i])
    data = [{"type": "bar", "name": "items/s", "x": [e + width / 2 for e in edges[:-1]],
             "y": [n / width for n in totals], "width": width * 0.95, "marker": {"color": PALETTE[2]}}]  # fmt: skip
    layout = _layout(f"Throughput: items finished per second ({width:g} s bins)", "seconds since the run started", "items/s")
    if not any(totals):
        _empty(layout, "no item finished")
    return {"data": data, "layout": layout}


def _at(points: Sequence[Sequence[float]], times: Sequence[float], t: float) -> float:
    """The cumulative count at time ``t`` (the last point at or before it)."""
    i = bisect.bisect_right(times, t)
    return float(points[i - 1][1]) if i else 0.0


def _nice(x: float) -> float:
    exp = 10 ** math.floor(math.log10(x))
    for step in (1, 2, 5, 10):
        if x <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def cache(record: Mapping[str, Any]) -> dict[str, Any]:
    """Hits by tier and misses; lookups and hits per function."""
    summary = record.get("summary") or {}
    totals = summary.get("cache") or {}
    tiers = totals.get("tier_hits") or {}
    uses: dict[str, list[int]] = {}
    for guild in record.get("guilds", []):
        for use in guild.get("cache_lookups", []):
            entry = uses.setdefault(use["fn"], [0, 0])
            entry[0] += use["lookups"]
            entry[1] += use["hits"]
    data = [
        {"type": "bar", "name": "by tier", "x": ["L1 hits", "L2 hits", "L3 hits", "misses"],
         "y": [tiers.get("l1", 0), tiers.get("l2", 0), tiers.get("l3", 0), totals.get("misses", 0)],
         "marker": {"color": [PALETTE[2], PALETTE[0], PALETTE[3], FAILED_COLOR]}, "xaxis": "x", "yaxis": "y"},
        {"type": "bar", "name": "hits", "x": list(uses), "y": [v[1] for v in uses.values()],
         "marker": {"color": PALETTE[2]}, "xaxis": "x2", "yaxis": "y2"},
        {"type": "bar", "name": "misses", "x": list(uses), "y": [v[0] - v[1] for v in uses.values()],
         "marker": {"color": FAILED_COLOR}, "xaxis": "x2", "yaxis": "y2"},
    ]  # fmt: skip
    rate = totals.get("hit_rate")
    title = "Result cache" + (f": {rate:.0%} of {totals.get('lookups', 0):,} lookups hit" if rate is not None else "")
    layout = _layout(title, "", "lookups")
    layout.update(
        barmode="stack",
        xaxis={"domain": [0, 0.38]},
        xaxis2={"domain": [0.48, 1], "anchor": "y2"},
        yaxis2={"anchor": "x2", "title": {"text": "lookups by function"}},
    )
    if not uses:
        _empty(layout, "no cached call in this run (map(..., cache=True) or submit(..., cache=True))")
    return {"data": data, "layout": layout}


def functions(record: Mapping[str, Any]) -> dict[str, Any]:
    """Where the time went: run time and CPU time per function (a profile by function)."""
    merged: dict[str, list[float]] = {}
    for guild in record.get("guilds", []):
        for name, fn in (guild.get("functions") or {}).items():
            entry = merged.setdefault(name, [0.0, 0.0])
            entry[0] += fn.get("run_s", 0.0)
            entry[1] += fn.get("cpu_s", 0.0)
    top = sorted(merged.items(), key=lambda kv: kv[1][0])[-15:]
    data = [
        {"type": "bar", "orientation": "h", "name": "run time", "y": [k for k, _ in top], "x": [v[0] for _, v in top],
         "marker": {"color": PALETTE[0]}},
        {"type": "bar", "orientation": "h", "name": "CPU time", "y": [k for k, _ in top], "x": [v[1] for _, v in top],
         "marker": {"color": PALETTE[1]}},
    ]  # fmt: skip
    layout = _layout("Time by function (summed over agents)", "seconds", "")
    layout["barmode"] = "group"
    layout["yaxis"]["automargin"] = True
    layout["height"] = max(260, 80 + 40 * len(top))
    if not top:
        _empty(layout, "no function ran")
    return {"data": data, "layout": layout}


def figures(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every chart of the report, by the id of its element; time axes span the whole run."""
    makers = (task_stream, memory, queue_depth, throughput, cache, functions)
    out = {chart_id: make(record) for chart_id, make in zip(CHART_IDS, makers, strict=True)}
    wall = float(record.get("wall_s") or 0.0)
    for chart_id in ("tasks", "memory", "queue", "throughput"):
        out[chart_id]["layout"]["xaxis"]["range"] = [0, wall]
    return out


# ---------------------------------------------------------------- html

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #1f2937; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #cbd5e1; }
main { padding: 18px 28px; max-width: 1400px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; margin-bottom: 18px; }
.card { background: #fff; border-radius: 6px; padding: 10px 12px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card b { display: block; font-size: 20px; }
.card span { color: #666; font-size: 12px; }
section { background: #fff; border-radius: 6px; padding: 8px 12px 12px; margin-bottom: 16px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
section h2 { font-size: 16px; margin: 6px 0; }
section p.note { color: #666; margin: 0 0 6px; font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { color: #555; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.alert { color: #b91c1c; }
footer { color: #888; font-size: 12px; padding: 0 28px 24px; }
"""

_NOTES = {
    "tasks": "Each bar is one task (or, in very long runs, back-to-back tasks of one function merged), from the "
    "start of its run in the agent; dotted red lines are alerts. Hover for the task, its items, time and CPU.",
    "memory": "Private resident memory (RssAnon) of each agent, sampled while it is busy; the supervisor; all "
    "together; the red line is limits.per_agent. Shaded spans are the monitor's warning or critical modes.",
    "queue": "Tasks submitted and not yet sent to an agent.",
    "throughput": "Items finished per second of the run (map items, and one per submitted call).",
    "cache": "Hits by tier (L1 dict, L2 LRU, L3 LMDB on disk) and misses, and per function.",
    "functions": "Run time and CPU time by function, summed over agents: a CPU time far below the run time "
    "means the function waits (I/O, locks) rather than computes.",
}


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:.0%}"


def _secs(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _cards(record: Mapping[str, Any]) -> str:
    s = record.get("summary") or {}
    tasks = s.get("tasks") or {}
    items = s.get("items") or {}
    cache_rate = (s.get("cache") or {}).get("hit_rate")
    cards = [
        (f"{s.get('wall_s', 0):.2f} s", "wall time"),
        (f"{tasks.get('done', 0) + tasks.get('inline_batches', 0):,}", f"tasks done ({tasks.get('failed', 0)} failed)"),
        (f"{items.get('done', 0):,}", "items done"),
        (f"{s.get('tasks_per_min', 0):,.0f}", "tasks per minute"),
        (f"{s.get('items_per_s', 0):,.1f}", "items per second"),
        (f"{s.get('agents_used', 0)} / {s.get('max_agents', 0)}", "agents used / max"),
        (_pct(s.get("parallel_efficiency")), "parallel efficiency"),
        (format_bytes(s.get("peak_private_bytes")), "peak private memory, one agent"),
        (format_bytes(s.get("peak_total_bytes")), "peak memory, all together"),
        (_pct(cache_rate), "cache hit rate"),
        (_pct(s.get("error_rate")), "error rate"),
        (f"{sum((s.get('alerts') or {}).values())}", "alerts"),
    ]
    return '<div class="cards">' + "".join(_card(v, k) for v, k in cards) + "</div>"


def _table(head: Sequence[str], body: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    cells = "".join(f'<th class="num">{html.escape(h)}</th>' if i in numeric else f"<th>{html.escape(h)}</th>" for i, h in enumerate(head))
    out = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
    for row in body:
        out.append("<tr>" + "".join(
            f'<td class="num">{html.escape(str(v))}</td>' if i in numeric else f"<td>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        ) + "</tr>")  # fmt: skip
    out.append("</tbody></table>")
    return "".join(out)


def _agents(record: Mapping[str, Any]) -> str:
    body = []
    for guild in record.get("guilds", []):
        for a in guild.get("agents", []):
            body.append([
                _agent_label(a["key"]), a.get("pid"), f"{a.get('tasks', 0):,}", f"{a.get('items', 0):,}",
                _pct(a.get("busy_fraction")), f"{a.get('busy_s', 0):.2f}", f"{a.get('cpu_s', 0):.2f}",
                format_bytes(a.get("peak_private_bytes")), a.get("reason") or ("-" if record.get("finished") else "running"),
            ])  # fmt: skip
    return _table(["agent", "pid", "tasks", "items", "busy", "busy s", "CPU s", "peak private", "ended"], body, (1, 2, 3, 4, 5, 6, 7))


def _functions(record: Mapping[str, Any]) -> str:
    body = []
    for guild in record.get("guilds", []):
        for name, fn in (guild.get("functions") or {}).items():
            per = fn.get("item_s") or {}
            body.append([name, f"{fn.get('tasks', 0):,}", f"{fn.get('items', 0):,}", _secs(per.get("p50")), _secs(per.get("p95")),
                         _secs(per.get("max")), f"{fn.get('run_s', 0):.2f}", f"{fn.get('cpu_s', 0):.2f}", fn.get("errors", 0)])  # fmt: skip
    return _table(["function", "tasks", "items", "p50 / item", "p95 / item", "max / item", "run s", "CPU s", "errors"], body, (1, 2, 3, 4, 5, 6, 7, 8))


def _alerts(record: Mapping[str, Any]) -> str:
    started = float(record.get("started") or 0)
    body = []
    for guild in record.get("guilds", []):
        for a in guild.get("alerts", []):
            body.append([f"{float(a.get('t') or 0) - started:.2f} s", a.get("kind"), a.get("count", 1), a.get("message")])
    if not body:
        return "<p>No alert was raised.</p>"
    return _table(["at", "kind", "times", "message"], body, (0, 2))


def _steps(record: Mapping[str, Any]) -> str:
    steps = record.get("steps") or []
    if not steps:
        return ""
    body = [[s.get("name"), s.get("status"), "yes" if s.get("cached") else "", _secs((s.get("end") or 0) - (s.get("start") or 0)), s.get("items", "")] for s in steps]
    return "<section><h2>Process steps</h2>" + _table(["step", "status", "cached", "time", "items"], body, (3, 4)) + "</section>"


def render_html(record: Mapping[str, Any], *, js: str | None = None) -> str:
    """The report of ``record`` as one HTML document (plotly.js inlined)."""
    plotly = plotly_js() if js is None else js
    figs = figures(record)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started") or 0)))
    title = f"guildcore run {record.get('id')}"
    titles = {c: figs[c]["layout"].pop("title")["text"] for c in CHART_IDS}  # shown as the section's heading
    for fig in figs.values():
        fig["layout"]["margin"]["t"] = 20
    payload = json.dumps(figs, separators=(",", ":"), default=str).replace("</", "<\\/")  # NaN is valid JS here
    sections = "".join(
        f'<section><h2>{html.escape(titles[c])}</h2><p class="note">{html.escape(_NOTES[c])}</p>'
        f'<div class="chart" id="chart-{c}"></div></section>'
        for c in CHART_IDS
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script>{plotly}</script>
</head><body>
<header><h1>{html.escape(str(record.get("label")))}</h1>
<p>run {html.escape(str(record.get("id")))} · {html.escape(str(record.get("kind")))} · started {started} on {html.escape(str(record.get("host")))} (pid {record.get("pid")}){"" if record.get("finished") else " · still running when written"}</p></header>
<main>
{_cards(record)}
{_steps(record)}
{sections}
<section><h2>Agents</h2>{_agents(record)}</section>
<section><h2>Functions</h2>{_functions(record)}</section>
<section><h2>Alerts</h2>{_alerts(record)}</section>
</main>
<footer>Written by guildcore {__version__}. Charts by plotly.js (MIT licence), inlined: this file needs no network.</footer>
<script>
const FIGURES = {payload};
for (const [id, fig] of Object.entries(FIGURES)) {{
  Plotly.newPlot("chart-" + id, fig.data, fig.layout, {{displaylogo: false, responsive: true}});
}}
</script>
</body></html>
"""


def write_report(record: Mapping[str, Any], path: str) -> int:
    """Write the report of ``record`` to ``path`` atomically; return its size in bytes."""
    text = render_html(record).encode("utf-8")
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(text)
    os.replace(tmp, path)
    return len(text)
