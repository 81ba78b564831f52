"""``guild run`` and ``guild preload``: processes from the command line.

    guild run NAME [--input KEY=VALUE]... [--json] [--all-outputs] [--agents N]
    guild preload [NAME]... [--json]

NAME is a process of the project (``.guild/processes/NAME.yaml``), a path to
a YAML file, or ``module:attr`` for a ``Process`` defined in Python. The
project folder (the one holding ``.guild``) is put first on ``sys.path``, so
``run: mymod:fn`` finds ``mymod.py`` beside ``.guild``, as ``python -m``
would from there. Values of ``--input`` are read as YAML scalars
(``n=200`` is the number 200, ``names=[a, b]`` a list).

``guild run`` checks the definition before any agent starts, starts agents
with the process's modules preloaded, reports each step as it starts and
ends (stderr), then prints the summary table, or the run as JSON (stdout).
Exit code 1 when a step failed.

``guild preload NAME`` checks the processes, records them as the project's
most recent runs (what ``optimization.preload: [process:*]`` preloads), and
shows a new agent starting with their modules already imported. Without a
NAME it shows the record.

Kept free of heavy imports at the top: ``guild --help`` builds these parsers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guildcore.config import Config
    from guildcore.process.record import ProcessRun, StepRecord

__all__ = ["configure_preload", "configure_run"]


def configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="process name (.guild/processes/NAME.yaml), a YAML path, or module:attr")
    parser.add_argument(
        "--input", action="append", default=[], metavar="KEY=VALUE",
        help="a process input; VALUE is read as YAML (200 is a number); repeat for more",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the run (outputs, step timeline) as JSON")
    parser.add_argument(
        "--all-outputs", action="store_true",
        help="with --json, every step's output (default: the steps nothing else needs)",
    )  # fmt: skip
    parser.add_argument("--agents", type=int, metavar="N", help="agents in the pool (default: pool.max_agents)")
    parser.set_defaults(func=_cmd_run)


def configure_preload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="processes likely to run next")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_cmd_preload)


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings into a dict (VALUE as YAML); a ConfigError says what is wrong."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            from guildcore.errors import ConfigError

            raise ConfigError(f"--input takes KEY=VALUE, not {pair!r}", key="--input", value=pair)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out[key.strip()] = value
    return out


def _project(config: Config) -> str:
    """Put the project folder first on sys.path (before anything imports step modules)."""
    root = config.root if config.root is not None else os.getcwd()
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


def _cmd_run(args: argparse.Namespace) -> int:
    from guildcore.config import load_config
    from guildcore.errors import ProcessFailed
    from guildcore.process import registry, runner

    inputs = parse_inputs(args.input)
    if args.agents is not None and args.agents < 1:
        print(f"guild: error: --agents must be at least 1, not {args.agents}", file=sys.stderr)
        return 2
    config = load_config()
    _project(config)
    defn, how = registry.definition(args.name, config, None)  # checked before any agent starts
    runner.bind_inputs(defn, inputs)
    overrides: dict[str, Any] = {
        "optimization": {"preload": [*config.optimization.preload_modules(), *defn.modules]}
    }
    if args.agents is not None:
        overrides["max_agents"] = args.agents
        overrides["min_agents"] = min(config.pool.min_agents, args.agents)
    from guildcore import Guild
    from guildcore.metrics import recorded_run
    from guildcore.metrics.run import store_path

    show = _Events(sys.stderr, quiet=args.json)
    failed: ProcessFailed | None = None
    # One run in the project's history (guild stats / report / doctor), its steps drawn.
    label = f"guild run {args.name}" + "".join(f" {pair}" for pair in args.input)
    with recorded_run(label, kind="process", store=store_path(config.cache_path())), Guild(**overrides) as g:
        try:
            run = runner.run(g, defn, inputs, on_event=show, how=how)
        except ProcessFailed as exc:
            failed = exc
            run = exc.run  # type: ignore[assignment]
    show.clear()
    if args.json:
        import json

        report = run.to_dict(outputs="all" if args.all_outputs else "sinks")
        if failed is not None:
            report["error"] = str(failed)
        print(json.dumps(report, indent=2, default=_jsonable))
    else:
        print(run.summary())
    if failed is not None:
        print(f"guild: error: {failed}", file=sys.stderr)
        return 1
    return 0


def _jsonable(value: object) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return repr(value)


class _Events:
    """Step starts and ends on stderr; on a terminal, a live line of running map steps."""

    def __init__(self, stream: Any, *, quiet: bool) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty is not None and isatty())
        self.quiet = quiet and not self.tty
        self.live = False

    def __call__(self, kind: str, record: StepRecord, run: ProcessRun) -> None:
        if self.quiet:
            return
        if kind == "progress":
            if self.tty:
                self._live(run)
            return
        self.clear()
        at = f"{record.start_s or 0.0:7.2f}s" if kind == "start" else f"{record.end_s or 0.0:7.2f}s"
        if kind == "start":
            line = f"{at}  {record.step}: started"
        elif record.status == "done":
            wall = record.wall_s or 0.0
            line = (f"{at}  {record.step}: done, {record.items} item{'s' if record.items != 1 else ''} "
                    f"in {wall:.2f} s, {record.cache_hits} from cache")  # fmt: skip
        elif record.cause:
            line = f"{at}  {record.step}: not run ({record.cause} failed)"
        else:
            line = f"{at}  {record.step}: {record.status}" + (f": {record.error}" if record.error else "")
        self.stream.write(line + "\n")
        self.stream.flush()

    def _live(self, run: ProcessRun) -> None:
        running = [r.step for r in run.steps if r.status == "running"]
        if running:
            self.stream.write("\r\033[K  running: " + ", ".join(running))
            self.stream.flush()
            self.live = True

    def clear(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.live = False


def _cmd_preload(args: argparse.Namespace) -> int:
    from guildcore.cache import TieredCache
    from guildcore.config import load_config
    from guildcore.process import registry
    from guildcore.process.preload import RECENT_PRELOADED, imported

    config = load_config()
    _project(config)
    report: dict[str, Any] = {"processes": []}
    if args.names:
        for name in args.names:
            t0 = time.perf_counter()
            defn, _how = registry.definition(name, config, None)  # checks and imports, as a run would
            report["processes"].append(
                {"name": defn.name, "modules": list(defn.modules), "check_s": time.perf_counter() - t0}
            )
        with TieredCache.from_config(config) as tiers:
            for entry in reversed(report["processes"]):  # the first named ends up most recent
                registry.record_run(tiers, entry["name"], entry["modules"])
        modules = list(dict.fromkeys(m for p in report["processes"] for m in p["modules"]))
        from guildcore import Guild

        with Guild(min_agents=1, optimization={"preload": [*config.optimization.preload_modules(), *modules]}) as g:
            report["agent_has"] = g.submit(imported, modules).result(timeout=60)
    with TieredCache.from_config(config) as tiers:
        report["recent"] = registry.recent(tiers)
    report["preloaded_by_process_star"] = list(
        dict.fromkeys(m for r in report["recent"][:RECENT_PRELOADED] for m in r.get("modules", []))
    )
    setting = config.optimization.preload
    report["setting"] = setting if isinstance(setting, bool) else list(setting)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
        return 0
    for p in report["processes"]:
        print(f"process {p['name']}: checked in {p['check_s'] * 1000:.0f} ms; modules: {', '.join(p['modules'])}")
    if "agent_has" in report:
        has = report["agent_has"]
        print(f"a new agent started with {sum(has.values())} of {len(has)} modules already imported")
    names = [r["name"] for r in report["recent"]]
    print(f"recent processes of this project: {', '.join(names) if names else 'none yet'}")
    star = report["preloaded_by_process_star"]
    print(f"process:* preloads: {', '.join(star) if star else 'nothing yet'}")
    if setting is not True and not any(s.startswith("process:") for s in report["setting"] or ()):
        print('to start every Guild this way, set optimization.preload: true (or add "process:*" to it)')
    return 0
