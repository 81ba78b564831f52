"""Run benchmark suites: ``python -m benchmarks [SUITE...] [--quick] [--repeat N]``.

Suites are the modules ``benchmarks/suite_<name>.py``; with no names, all of
them run. Each prints its table; results go to ``benchmarks/results/``
(``--out`` to change). A suite that fails is reported and the others still
run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from benchmarks.harness import Bench, render_markdown, write_index, write_results

PACKAGE_DIR = Path(__file__).resolve().parent
SUITE_PREFIX = "suite_"


def discover(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Names of the suites present, sorted: ``suite_codec.py`` -> ``codec``."""
    return sorted(
        m.name[len(SUITE_PREFIX) :]
        for m in pkgutil.iter_modules([str(package_dir)])
        if m.name.startswith(SUITE_PREFIX)
    )


def load_suite(name: str, package: str = "benchmarks") -> ModuleType:
    module = importlib.import_module(f"{package}.{SUITE_PREFIX}{name}")
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"suite {name!r} has no run(bench) function")
    return module


def run_suite(module: ModuleType, *, quick: bool, repeat: int | None) -> Bench:
    name = getattr(module, "NAME", module.__name__.rpartition(SUITE_PREFIX)[2])
    bench = Bench(name, quick=quick, repeat=repeat)
    t0 = time.perf_counter()
    module.run(bench)
    bench.elapsed_s = time.perf_counter() - t0
    return bench


def main(argv: Sequence[str] | None = None, *, package: str = "benchmarks") -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and smaller cases")
    parser.add_argument(
        "--repeat", type=int, default=None, metavar="N", help="samples per system (min 3)"
    )
    parser.add_argument(
        "--out", type=Path, default=PACKAGE_DIR / "results", help="results directory"
    )
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    args = parser.parse_args(argv)

    package_dir = Path(importlib.import_module(package).__file__ or "").parent
    available = discover(package_dir)
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [s for s in args.suites if s not in available]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(available)}")

    failed = []
    for name in args.suites or available:
        print(f"# running suite {name} ...", flush=True)
        try:
            bench = run_suite(load_suite(name, package), quick=args.quick, repeat=args.repeat)
        except Exception:
            failed.append(name)
            print(f"suite {name} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            continue
        json_path, md_path = write_results(bench, args.out)
        print(render_markdown(bench))
        print(f"({bench.elapsed_s:.1f} s; wrote {json_path} and {md_path})\n", flush=True)
    given = list(sys.argv[1:] if argv is None else argv)
    index = write_index(args.out, command=shlex.join(["python", "-m", "benchmarks", *given]))
    print(f"index: {index}")
    if failed:
        print(f"failed suites: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
