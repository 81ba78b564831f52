"""List the namespaces and entries of a guildcore cache store (L3, LMDB).

Usage::

    python tools/inspect_cache.py [PATH]              namespaces: entries, bytes, hits
    python tools/inspect_cache.py PATH NAMESPACE [-n N] [--values]
                                                      the N newest entries of one namespace

PATH defaults to the configured cache folder (``.guild/cache``). Values are
shown only with ``--values`` and only through the store's own checks.
Opening a store takes the same shared lock as an agent: safe while a guild runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from guildcore.cache.l3 import L3Store
from guildcore.errors import format_bytes


def _when(t: float) -> str:
    return "never" if not t else dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", nargs="?", help="store folder (default: the configured cache path)")
    parser.add_argument("namespace", nargs="?", help="list this namespace's entries")
    parser.add_argument(
        "-n", type=int, default=20, help="entries to list, newest first (default 20)"
    )
    parser.add_argument(
        "--values", action="store_true", help="also show each value's repr (checked, decoded)"
    )
    args = parser.parse_args(argv)
    path = args.path
    if path is None:
        from guildcore.config import load_config

        path = load_config().cache_path()
    store = L3Store(path)
    try:
        stats = store.stats()
        if args.namespace is None:
            counters = store.counters()
            print(f"{stats['path']}: file {format_bytes(stats['file_bytes'])}, used {format_bytes(stats['used_bytes'])}, "
                  f"map {format_bytes(stats['map_size'])}")  # fmt: skip
            print(f"{'namespace':<20} {'entries':>9} {'bytes':>10} {'hits':>9} {'misses':>9}")
            for name, ns in stats["namespaces"].items():
                hits, misses = counters.get(name, (0, 0))
                print(
                    f"{name:<20} {ns['entries']:>9} {format_bytes(ns['bytes']):>10} {hits:>9} {misses:>9}"
                )
            return 0
        rows = sorted(store.entries(args.namespace), key=lambda r: r[1], reverse=True)[: args.n]
        print(f"{'key':<34} {'created':<19} {'expires':<19} {'bytes':>9}")
        for key, created, expires, nbytes in rows:
            print(f"{key.hex()[:32]:<34} {_when(created):<19} {_when(expires):<19} {nbytes:>9}")
            if args.values:
                print(f"    {store.get(args.namespace, key, '<miss>')!r:.200}")
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
