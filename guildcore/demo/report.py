"""The demo's report: a table for people, the same facts as JSON for tools.

``build_report`` gathers everything into one JSON-ready dict; ``render``
turns that dict into the text table, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from guildcore.demo.passes import PassResult
from guildcore.errors import format_bytes

__all__ = ["build_report", "render"]


def build_report(
    *,
    codebase: Mapping[str, Any],
    rename: Mapping[str, str],
    index: Mapping[str, int],
    passes: Sequence[PassResult],
    cache_dir: str,
    write: Mapping[str, Any] | None,
    total_s: float,
) -> dict[str, Any]:
    by_name = {p.name: p for p in passes}
    seq = by_name.get("sequential")
    rows = []
    for p in passes:
        row = asdict(p)
        row["speedup"] = (seq.wall_s / p.wall_s) if seq is not None and p.wall_s > 0 else None
        rows.append(row)
    cold, warm = by_name.get("cold"), by_name.get("warm")
    checks: dict[str, Any] = {}
    if cold is not None and warm is not None:
        checks["warm_matches_cold"] = cold.digest == warm.digest
        checks["warm_speedup_vs_cold"] = cold.wall_s / warm.wall_s if warm.wall_s > 0 else None
    outcome = cold or seq
    return {
        "codebase": dict(codebase),
        "rename": dict(rename),
        "index": dict(index),
        "passes": rows,
        "result": {
            "files": outcome.files if outcome else 0,
            "counts": dict(outcome.counts) if outcome else {},
            "changes": outcome.changes if outcome else 0,
        },
        "checks": checks,
        "cache_dir": cache_dir,
        "write": dict(write) if write is not None else None,
        "total_s": total_s,
    }


def _cell_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def render(report: Mapping[str, Any]) -> str:
    """The text table and the lines around it."""
    cb, rn, ix, res = report["codebase"], report["rename"], report["index"], report["result"]
    lines = [
        f"codebase: {cb['path']}",
        f"  {cb['files']} files, {format_bytes(cb['bytes'])} "
        f"(skipped folders: {', '.join([*cb['skipped_dirs'], *cb.get('excluded', [])]) or 'none'})",
        f"rename: {rn['old']} -> {rn['new']}",
        f"index: {ix['top_level_definitions']} top-level definitions in {ix['modules']} modules; "
        f"{rn['old']!r} defined in {ix['modules_defining_old']}, mentioned in "
        f"{ix['modules_mentioning_old']}; {rn['new']!r} already mentioned in {ix['modules_mentioning_new']}",
        "",
    ]
    header = ("pass", "wall", "speedup", "cache hits", "agents", "peak private/agent")
    table = [header]
    for p in report["passes"]:
        wall = f"{p['wall_s']:.2f} s"
        if p["extrapolated"]:
            wall += f" (extrapolated from {p['sample_files']} files)"
        table.append((
            p["name"],
            wall,
            "-" if p["speedup"] is None else f"{p['speedup']:.1f}x",
            _cell_rate(p["hit_rate"]),
            str(p["agents_used"]) if p["name"] != "sequential" else "0 (in-process)",
            format_bytes(p["peak_private_bytes"]) if p["peak_private_bytes"] else "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    counts = res["counts"]
    lines += [
        "",
        f"files: {counts.get('changed', 0)} changed ({res['changes']} occurrences renamed), "
        f"{counts.get('unchanged', 0)} parsed with nothing to rename, "
        f"{counts.get('skipped', 0)} skipped by the index without parsing, "
        f"{counts.get('error', 0)} not parsing",
    ]
    checks = report["checks"]
    if "warm_matches_cold" in checks:
        same = "identical" if checks["warm_matches_cold"] else "DIFFERENT"
        ratio = checks["warm_speedup_vs_cold"]
        lines.append(f"warm vs cold: results {same}, warm {ratio:.0f}x faster")
    write = report["write"]
    if write is None:
        lines.append("nothing written (pass --write to rewrite the changed files)")
    else:
        lines.append(f"wrote {write['files_written']} files in {write['wall_s']:.2f} s")
        lines += [f"  {path}: {what}" for path, what in sorted(write["problems"].items())]
    lines.append(f"cache: {report['cache_dir']}; total {report['total_s']:.1f} s")
    return "\n".join(lines)
