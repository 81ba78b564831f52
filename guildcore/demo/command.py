"""The ``guild demo`` command line: options, checks, output.

Kept free of heavy imports: ``guild --help`` builds this parser.
"""

from __future__ import annotations

import argparse
import keyword
import os
import sys

__all__ = ["DEFAULT_RENAME", "configure_parser", "default_cache_dir"]

DEFAULT_RENAME = "result=outcome"  # common in the stdlib: ~190 of ~730 modules mention it


def default_cache_dir() -> str:
    """The demo's own store, never the project's: ``$XDG_CACHE_HOME/guildcore/demo``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "guildcore", "demo")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path", metavar="FOLDER",
        help="codebase to refactor, test folders included (default: this Python's stdlib, tests left out)",
    )  # fmt: skip
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB",
        help="skip folders whose name or path below FOLDER matches GLOB (tests, 'pkg/vendored'); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--rename", default=DEFAULT_RENAME, metavar="OLD=NEW",
        help=f"identifier to rename (default: {DEFAULT_RENAME})",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", metavar="FOLDER",
        help=f"the demo's cache store, cleared first (default: {default_cache_dir()})",
    )  # fmt: skip
    parser.add_argument(
        "--agents", type=int, metavar="N", help="agents in the pool (default: usable CPUs)"
    )
    parser.add_argument(
        "--backend", choices=("local", "dask-local", "dask"),
        help="where the pool passes run (default: parallelization.backend, local agents)",
    )  # fmt: skip
    parser.add_argument(
        "--address", metavar="URL", help="--backend dask: the scheduler, e.g. tcp://host:8786"
    )
    parser.add_argument(
        "--sample", type=int, default=100, metavar="N",
        help="files timed sequentially, then extrapolated (0: every file; default: 100)",
    )  # fmt: skip
    parser.add_argument(
        "--write", action="store_true", help="rewrite changed files (atomically) in place"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON, nothing else"
    )
    parser.set_defaults(func=run_command)


def parse_rename(text: str) -> tuple[str, str]:
    """``OLD=NEW`` into two identifiers, or ValueError saying what is wrong."""
    old, sep, new = text.partition("=")
    if not sep:
        raise ValueError(f"--rename takes OLD=NEW, not {text!r}")
    for name in (old, new):
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"--rename: {name!r} is not an identifier one can rename")
    if old == new:
        raise ValueError(f"--rename: OLD and NEW are both {old!r}")
    return old, new


def run_command(args: argparse.Namespace) -> int:
    from guildcore.demo import DemoOptions, run_demo
    from guildcore.demo.sources import SKIP_DIRS, STDLIB_SKIP_DIRS, default_root

    try:
        old, new = parse_rename(args.rename)
    except ValueError as exc:
        print(f"guild: error: {exc}", file=sys.stderr)
        return 2
    root = os.path.abspath(args.path) if args.path else default_root()
    if not os.path.isdir(root):
        print(f"guild: error: --path {args.path!r} is not a folder", file=sys.stderr)
        return 2
    if args.agents is not None and args.agents < 1:
        print(f"guild: error: --agents must be at least 1, not {args.agents}", file=sys.stderr)
        return 2
    if (args.backend == "dask") != (args.address is not None):
        print("guild: error: --backend dask and --address go together", file=sys.stderr)
        return 2
    opts = DemoOptions(
        root=root,
        old=old,
        new=new,
        cache_dir=os.path.abspath(args.cache_dir) if args.cache_dir else default_cache_dir(),
        agents=args.agents,
        backend=args.backend,
        address=args.address,
        sample=args.sample,  # progress bars go to stderr, and only to a terminal
        # A project's tests are part of it (a rename must reach them); the
        # stdlib sample leaves its test suites out.
        skip_dirs=SKIP_DIRS if args.path else STDLIB_SKIP_DIRS,
        exclude=tuple(args.exclude),
    )
    if not args.json:
        print(f"# guild demo: renaming {old} -> {new} under {root}", flush=True)
    report = run_demo(opts, write=args.write)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        from guildcore.demo.report import render

        print(render(report))
        if report.get("metrics_run"):
            print(f"\nrecorded as run {report['metrics_run']['id']}: `guild report -o report.html` draws it, "
                  "`guild doctor` diagnoses it")  # fmt: skip
    return 0
