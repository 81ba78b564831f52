"""The ``guild`` command.

    guild --version
    guild init [--force] [PATH]     write .guild/instructions.md (every default) and processes/
    guild config show [--json]      the merged settings, each with its source
    guild cache stats [--json] | clear [NAMESPACE] | compact
    guild demo [--path FOLDER] [--rename OLD=NEW] [--write] [--json]   a timed codemod
    guild stats [-n N] [--json | --prometheus]    the last runs: time, memory, cache, errors
    guild top [GUILD] [--once] [--wait]           the Guilds running on this host, live
    guild report [RUN] [-o FILE]                  one run as a self-contained HTML file
    guild doctor [RUN] [--last N] [--json]        what made a run slow, memory-hungry or cache-poor
    guild run NAME [--input KEY=VALUE]... [--json]   run a process (.guild/processes/NAME.yaml)
    guild preload [NAME]...         agents that start with the modules of likely processes

Adding a command group: write one ``_add_xxx_parser(subparsers)`` function that
adds its parser(s) and sets ``func`` (a handler taking the parsed arguments and
returning an exit code) with ``set_defaults``, then list it in
``_COMMAND_GROUPS``. Import heavy modules inside the handler, not at the top,
so ``guild --version`` stays fast.

Exit codes: 0 success; 1 the command refused (e.g. init without --force)
or the file system failed it (``guild: error: [Errno ...] ...``); 2 bad usage
or a ``GuildError`` (printed as ``guild: error: <message>``); 3 an error
guildcore did not expect (a bug: one line, and ``guild --traceback ...``
shows where); 130 interrupted. No command ends in a raw traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from guildcore import __version__

if TYPE_CHECKING:
    from typing import TypeAlias

    _Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["build_parser", "main"]

INSTRUCTIONS_INTRO = """\
# Guild instructions

This file configures guildcore for this project. The `performance:` block below
is read by `guildcore.load_config()` and shown by `guild config show`; it lists
every setting at its default. Change a value here, or override it in
`.guild/config.yaml`, with an environment variable (`GUILD_POOL__MAX_AGENTS=4`,
`GUILD_LIMITS__PER_AGENT=200MB`) or with a keyword argument (`Guild(max_agents=4)`);
later sources win, in that order.

Sizes: `512MB` (decimal: 1 MB = 10**6 bytes), `64MiB` (binary: 1 MiB = 2**20
bytes), or a number of bytes. Durations: `250ms`, `30s`, `10m`, `1h`, or a
number of seconds.

Process definitions go in `processes/NAME.yaml`.

"""


def _cmd_init(args: argparse.Namespace) -> int:
    from guildcore.config import GUILD_DIR, performance_yaml

    guild_dir = os.path.join(args.path, GUILD_DIR)
    instructions = os.path.join(guild_dir, "instructions.md")
    if os.path.exists(instructions) and not args.force:
        print(
            f"guild: error: {instructions} already exists; pass --force to overwrite it",
            file=sys.stderr,
        )
        return 1
    os.makedirs(os.path.join(guild_dir, "processes"), exist_ok=True)
    with open(instructions, "w", encoding="utf-8") as f:
        f.write(f"{INSTRUCTIONS_INTRO}```yaml\n{performance_yaml()}```\n")
    print(f"wrote {instructions} and {os.path.join(guild_dir, 'processes')}{os.sep}")
    return 0


def _add_init_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "init", help="create .guild/ with instructions.md listing every setting",
        description="Create PATH/.guild/instructions.md (a performance: block with every default) "
        "and an empty PATH/.guild/processes/.",
    )  # fmt: skip
    parser.add_argument(
        "path", nargs="?", default=".", metavar="PATH", help="project folder (default: .)"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite an existing instructions.md"
    )
    parser.set_defaults(func=_cmd_init)


def _cmd_config_show(args: argparse.Namespace) -> int:
    from guildcore.config import explain_config, render_value

    config, sources = explain_config()
    values = config.flat()
    if args.json:
        import json

        table = {key: {"value": _jsonable(values[key]), "source": sources[key]} for key in values}
        print(json.dumps(table, indent=2))
        return 0
    where = (
        f"{config.guild_dir()}"
        if config.root is not None
        else "no .guild folder found; built-in defaults"
    )
    print(f"# settings from {where}")
    rendered = {key: render_value(key, value) for key, value in values.items()}
    key_width = max(map(len, values))
    value_width = max(map(len, rendered.values()))
    for key, text in rendered.items():
        print(f"{key:<{key_width}}  {text:<{value_width}}  # {sources[key]}")
    return 0


def _jsonable(value: object) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _add_config_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser("config", help="inspect settings")
    commands = parser.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = commands.add_parser("show", help="the merged settings and where each came from")
    show.add_argument(
        "--json", action="store_true", help='print {"key": {"value": ..., "source": ...}}'
    )
    show.set_defaults(func=_cmd_config_show)


def _cmd_cache(args: argparse.Namespace) -> int:
    from guildcore.cache import cache_clear, cache_compact, cache_stats
    from guildcore.config import load_config
    from guildcore.errors import format_bytes

    cfg = load_config()
    if args.cache_command == "stats":
        stats = cache_stats(cfg)
        if args.json:
            import json

            print(json.dumps(stats, indent=2))
        elif not stats["exists"]:
            print(f"no cache store at {stats['path']}")
        else:
            print(f"# {stats['path']}: {format_bytes(stats['tiers']['l3']['file_bytes'])} on disk")
            for name, ns in stats["namespaces"].items():
                saved = stats["stored"].get(name, {"hits": 0, "misses": 0, "hit_rate": 0.0})
                print(f"{name:<16} {ns['l3']['entries']:>9} entries {format_bytes(ns['l3']['bytes']):>10}"
                      f"  hits {saved['hits']}  misses {saved['misses']}  hit rate {saved['hit_rate']:.0%}")  # fmt: skip
    elif args.cache_command == "clear":
        cache_clear(cfg, args.namespace)
        print(f"cleared {args.namespace or 'every namespace'} in {cfg.cache_path()}")
    else:
        before, after = cache_compact(cfg)
        print(f"compacted {cfg.cache_path()}: {format_bytes(before)} -> {format_bytes(after)}")
    return 0


def _add_cache_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser("cache", help="inspect, clear or compact the result cache")
    commands = parser.add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    stats = commands.add_parser("stats", help="entries, bytes and hit rates per namespace")
    stats.add_argument("--json", action="store_true", help="print every statistic as JSON")
    clear = commands.add_parser("clear", help="remove the entries of one namespace, or all")
    clear.add_argument("namespace", nargs="?", metavar="NAMESPACE", help="default: all")
    commands.add_parser("compact", help="reclaim disk space (no guild may be running)")
    parser.set_defaults(func=_cmd_cache)


def _add_demo_parser(subparsers: _Subparsers) -> None:
    from guildcore.demo.command import configure_parser  # argparse only: light

    configure_parser(subparsers.add_parser(
        "demo", help="rename an identifier across a codebase: sequential, cold pool, warm cache",
        description="A CPU-bound refactor over a codebase (default: this Python's standard "
        "library, tests left out), timed three ways: sequentially (a sample, extrapolated), "
        "in a cold pool, and again from the on-disk cache. Nothing is written without --write.",
    ))  # fmt: skip


def _add_metrics_parsers(subparsers: _Subparsers) -> None:
    from guildcore.dashboard.commands import add_parsers  # argparse only: light

    add_parsers(subparsers)


def _add_process_parsers(subparsers: _Subparsers) -> None:
    from guildcore.process.command import configure_preload, configure_run  # argparse only: light

    configure_run(subparsers.add_parser(
        "run", help="run a process: its steps in parallel as their needs are met, each cached",
        description="Run the process NAME (.guild/processes/NAME.yaml, a YAML path, or module:attr "
        "for a Process defined in Python): each step starts as soon as the steps it needs have "
        "finished; every step's result is cached. Prints each step as it ends, then a summary table.",
    ))  # fmt: skip
    configure_preload(subparsers.add_parser(
        "preload", help="start agents warm with the modules of the processes likely to run",
        description="Check the processes NAME..., record them as this project's most recent "
        "processes (what optimization.preload: [process:*] preloads) and show a new agent "
        "starting with their modules imported. Without NAME, show the record.",
    ))  # fmt: skip


_COMMAND_GROUPS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_init_parser,
    _add_config_parser,
    _add_cache_parser,
    _add_demo_parser,
    _add_metrics_parsers,
    _add_process_parsers,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guild", description="guildcore: a supervised multiprocessing engine."
    )
    parser.add_argument("--version", action="version", version=f"guild {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="on an unexpected error, show the whole traceback"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_group in _COMMAND_GROUPS:
        add_group(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``guild`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `guild config show | head`: the reader left; not our error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return 1
    except Exception as exc:
        if args.traceback:
            raise
        return _report(exc)
    return code


def _report(exc: Exception) -> int:
    """One line on stderr for a failed command, and its exit code (see the module docstring)."""
    from guildcore.errors import GuildError

    if isinstance(exc, GuildError):
        print(f"guild: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, OSError):
        print(f"guild: error: {exc}; check the path and its permissions", file=sys.stderr)
        return 1
    print(
        f"guild: error: unexpected {type(exc).__name__}: {exc}; this is a bug in guildcore: "
        "rerun with guild --traceback ... and report what it prints",
        file=sys.stderr,
    )
    return 3
