"""Run history: every run's record in an LMDB store next to the cache.

This module covers the ``metrics`` store (``<folder of caching.path>/metrics``,
so ``.guild/metrics`` by default): saving a finished run's record, listing
the latest runs' summaries, loading one record, and keeping the store under
``MAX_RUNS`` runs and ``MAX_BYTES`` bytes by dropping the oldest runs. It
does not cover what a record holds (``summary``).

Databases inside the environment::

    runs      run id -> msgpack summary (with "bytes": the size of both entries)
    records   run id -> 1 flag byte (bit 0: LZ4-block compressed) + msgpack record

Run ids are the UTC time of the run's start to the millisecond
(``20250101-120000-123a``), so key order is time order.

Hazards: the environment is opened, used and closed within each call, so
it is never held across a fork nor by an idle Guild; writes are one
transaction (``with``), from whichever thread finishes the run. Commits use
``sync=False``: a crash may lose the last run's record, never the store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import lmdb
import msgpack

from guildcore.errors import CacheError, ConfigError
from guildcore.metrics.run import store_path

try:  # Optional, as for the cache: without lz4 records are stored raw.
    import lz4.block as _lz4
except ImportError:  # pragma: no cover - lz4 is a dependency
    _lz4 = None

__all__ = ["MAX_BYTES", "MAX_RUNS", "History", "store_path"]

MAX_RUNS = 200  # runs kept; the oldest go first
MAX_BYTES = 64 * 2**20  # 64 MiB of stored records; the oldest go first
# Address space reserved for the file (sparse): twice the cap, so freed
# pages that LMDB cannot reuse yet (a reader holds them) never fill the map.
MAP_SIZE = 4 * MAX_BYTES
_COMPRESSED = 1


class History:
    """The run history at ``path`` (created on first save)."""

    def __init__(self, path: str, *, max_runs: int = MAX_RUNS, max_bytes: int = MAX_BYTES) -> None:
        self.path = os.path.abspath(path)
        self.max_runs = max_runs
        self.max_bytes = max_bytes

    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.path, "data.mdb"))

    @contextlib.contextmanager
    def _env(self, *, write: bool) -> Iterator[tuple[Any, Any, Any]]:
        if write:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        env = lmdb.open(
            self.path, map_size=MAP_SIZE, max_dbs=2, subdir=True, readonly=not write,
            create=write, sync=False, metasync=False, readahead=False,
        )  # fmt: skip
        try:
            runs = env.open_db(b"runs", create=write)
            records = env.open_db(b"records", create=write)
            yield env, runs, records
        finally:
            env.close()

    def save(self, record: dict[str, Any]) -> None:
        """Store a finished run's record; drop the oldest runs past the caps."""
        run_id = record["id"].encode()
        body = msgpack.packb(record, use_bin_type=True)
        flag = 0
        if _lz4 is not None and len(body) > 4096:
            body, flag = _lz4.compress(body), _COMPRESSED
        summary = {**record.get("summary", {}), "id": record["id"], "kind": record.get("kind"),
                   "label": record.get("label"), "started": record.get("started"), "bytes": len(body) + 1}  # fmt: skip
        _check_room(self.path, len(body))
        with self._env(write=True) as (env, runs, records), env.begin(write=True) as txn:
            txn.put(run_id, msgpack.packb(summary, use_bin_type=True), db=runs)
            txn.put(run_id, bytes([flag]) + body, db=records)
            self._trim(txn, runs, records)

    def _trim(self, txn: Any, runs: Any, records: Any) -> None:
        """Drop the oldest runs past the caps.

        Every Guild's shutdown saves a run, so this reads no more than it
        must: the count is LMDB's, the bytes are summed only when the
        records' pages (an upper bound) exceed ``max_bytes``, and only the
        runs dropped are read. A full scan of 200 summaries cost ~3 ms.
        """
        count = int(txn.stat(runs)["entries"])
        pages = txn.stat(records)
        total = 0
        if (pages["branch_pages"] + pages["leaf_pages"] + pages["overflow_pages"]) * pages["psize"] > self.max_bytes:
            with txn.cursor(db=runs) as cur:
                total = sum(_stored_bytes(value) for _key, value in cur)
        drop: list[bytes] = []
        with txn.cursor(db=runs) as cur:
            for key, value in cur:  # oldest first
                if count <= self.max_runs and total <= self.max_bytes:
                    break
                if count == 1:
                    break  # the run just saved stays, however big
                drop.append(bytes(key))
                count -= 1
                total -= _stored_bytes(value)
        for key in drop:
            txn.delete(key, db=runs)
            txn.delete(key, db=records)

    def runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries of the latest ``limit`` runs (all by default), newest first."""
        if not self.exists():
            return []
        out = []
        with self._env(write=False) as (env, runs, _records), env.begin() as txn, txn.cursor(db=runs) as cur:
            if cur.last():
                for _key, value in cur.iterprev():
                    out.append(msgpack.unpackb(value))
                    if limit is not None and len(out) >= limit:
                        break
        return out

    def resolve(self, which: str | None) -> str | None:
        """The id of run ``which``: an id, a unique prefix or suffix, ``last``, or ``-N`` (N-th latest)."""
        summaries = self.runs()
        if not summaries:
            return None
        if which in (None, "", "last"):
            return str(summaries[0]["id"])
        assert which is not None
        if which.startswith("-") and which[1:].isdigit():
            n = int(which[1:])
            return str(summaries[n - 1]["id"]) if 1 <= n <= len(summaries) else None
        exact = [s["id"] for s in summaries if s["id"] == which]
        if exact:
            return str(exact[0])
        close = [s["id"] for s in summaries if s["id"].startswith(which) or s["id"].endswith(which)]
        if len(close) > 1:
            raise ConfigError(f"run {which!r} is ambiguous: it matches {', '.join(close[:5])}; give more of the id", key="run", value=which)
        return str(close[0]) if close else None

    def load(self, run_id: str) -> dict[str, Any] | None:
        """The full record of run ``run_id`` (an exact id), or None."""
        if not self.exists():
            return None
        with self._env(write=False) as (env, _runs, records), env.begin() as txn:
            raw = txn.get(run_id.encode(), db=records)
            if raw is None:
                return None
            raw = bytes(raw)
        body = raw[1:]
        if raw[0] & _COMPRESSED:
            if _lz4 is None:
                raise CacheError(f"run {run_id} is stored compressed and lz4 is not installed: pip install lz4")
            body = _lz4.decompress(body)
        record: dict[str, Any] = msgpack.unpackb(body, strict_map_key=False)
        return record


# Free space a save needs beyond the record itself: LMDB's meta pages, the
# B-tree pages a put dirties, and a new file's first growth.
_ROOM_MARGIN_BYTES = 1 << 20  # 1 MiB


def _stored_bytes(summary: bytes) -> int:
    """The size of a run's stored record, as its summary in the ``runs`` table says."""
    return int(msgpack.unpackb(summary).get("bytes", 0))


def _check_room(path: str, record_bytes: int) -> None:
    """Refuse to write on a nearly full file system.

    LMDB maps its file: on a full disk (a small tmpfs above all) creating or
    growing the store can end the whole process with SIGBUS, which no
    ``except`` catches. The history is a record, not the work, so the run is
    not worth that risk: the caller logs this error and goes on.
    """
    probe = path
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    st = os.statvfs(probe)
    free = st.f_bavail * st.f_frsize
    needed = 2 * record_bytes + _ROOM_MARGIN_BYTES
    if free < needed:
        raise CacheError(
            f"only {free} bytes free on the file system of {path}, a save needs {needed}; "
            "free space there or point caching.path elsewhere"
        )
