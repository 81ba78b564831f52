"""L3: one LMDB environment on disk, shared by the supervisor and its agents.

Covers the durable tier: a named database per namespace, TTLs, entry caps,
tags, sweeping, eviction when the map is full, compaction and statistics.
Does not cover the in-process tiers (``l1``, ``l2``) or promotion between
tiers (``tiers``). The byte layout of a stored value is in ``record``.

Databases inside the environment::

    ns:<namespace>   key -> record (see ``record``)
    __index__        ordering and lookup keys, no payloads:
                       b"a" ns 0 created(8) key   -> b""        age, oldest first
                       b"e" expires(8) ns 0 key   -> b""        expiry, soonest first
                       b"t" tag 0 ns 0 key        -> created(8) entries by tag
                       b"g" ns 0 key              -> tags       tags of one entry
                     (times are big-endian float64: positive floats sort as numbers)
    __meta__         b"format" -> FORMAT; b"stats:<ns>" -> msgpack [hits, misses]

Invariant: an index entry is a hint, checked against the record's header
before it deletes anything (``created`` or ``expires`` must match). An
overwrite leaves the old hints behind; they are dropped when reached.

Hazards, in py-lmdb's order:
- Threads: every use of the environment holds ``self._lock``; write
  transactions are always ``with`` blocks on the thread that began them.
- Fork-safety: an environment is never used across fork. The one place that
  handles it is ``_at_fork_*`` below: before a fork every live store closes
  its environment (no transaction can be open: we hold its lock), and both
  sides reopen lazily on next use. The hot paths (``lookup``, ``get_many``,
  ``set_many``) rely on that alone (an empty ``_dbs`` or ``_env``; no
  ``getpid`` syscall per call); ``_env_checked`` also compares the pid, in
  case a store was created in a way the hooks missed.
- Durability: commits use ``sync=False, metasync=False``. A crash of any
  process (SIGKILL included) loses at most its uncommitted transaction, and
  the store opens clean; a power loss may lose the last commits. Fine for a
  cache, not for data of record.
- Growth: ``map_size`` is fixed at open (the file is sparse; the map is
  address space). A full map evicts the oldest entries and retries.
- Damage: LMDB reports a damaged file (flipped bytes in a page, a page
  that does not exist) only when an operation reaches it. Every public
  method treats those errors (``_DAMAGE``) as it treats a damaged header at
  open: the store is moved aside, a fresh one is opened, and the call runs
  once more on it (a read then misses). Another agent that hits the same
  damage finds the file already replaced (its inode changed) and reopens.
  Damage that makes LMDB read outside the map (SIGBUS, SIGSEGV) cannot be
  caught in Python; a truncated file is checked for at open.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import lmdb
import msgpack

from guildcore.cache import record, storefiles
from guildcore.cache.policy import CachePolicy, check_namespace
from guildcore.errors import CacheError, ConfigError, format_bytes

__all__ = ["L3Store"]

log = logging.getLogger("guildcore.cache")
T = TypeVar("T")
P = ParamSpec("P")

FORMAT = b"guildcore-cache/1"
MAX_DBS = 126  # namespaces plus our two internal databases
# Sweep this many expired entries inside every write transaction: cheap,
# and keeps a store that is only written to from filling with dead entries.
OPPORTUNISTIC_SWEEP = 4
MAP_FULL_RETRIES = 6  # each retry evicts twice as much as the one before
MAP_FULL_EVICT_FRACTION = 0.125  # first retry evicts the oldest 1/8 of entries
# Read transactions py-lmdb keeps reset for reuse (one per concurrent reader
# thread is enough); each get then costs a renew instead of a new txn.
SPARE_READ_TXNS = 4
# The per-write sweep probes the index at most this often per namespace when
# the last probe found nothing due (other agents may add earlier expiries).
SWEEP_PROBE_INTERVAL_S = 1.0

# LMDB's errors for a damaged store, as opposed to a full map or misuse.
# Bad page contents surface as any of these: MDB_CORRUPTED for a page of the
# wrong type, MDB_PAGE_NOTFOUND past the end, MDB_CURSOR_FULL for a branch
# that leads down forever, MDB_BAD_TXN once a read has failed inside the
# transaction (our transactions are never misused that way otherwise),
# MDB_INCOMPATIBLE from a compacting copy that meets a page of the wrong kind.
_DAMAGE = (
    lmdb.CorruptedError,
    lmdb.IncompatibleError,
    lmdb.PageNotFoundError,
    lmdb.CursorFullError,
    lmdb.BadTxnError,
    lmdb.InvalidError,
    lmdb.PanicError,
    lmdb.VersionMismatchError,
)

# What LMDB says when the file system refuses a write: its own ENOSPC and
# EACCES classes, and a plain Error quoting errno for a failed commit (on
# tmpfs a full disk surfaces as EIO from the write behind the commit).
_DISK_ERRORS = (lmdb.DiskError, lmdb.ReadonlyError)
_DISK_WORDS = ("No space left", "Input/output error", "Read-only file system", "Disk quota")


def _disk_refused(exc: BaseException) -> bool:
    return isinstance(exc, _DISK_ERRORS) or any(w in str(exc) for w in _DISK_WORDS)


_F64 = struct.Struct(">d")
_pack_f64 = _F64.pack
_NUL = b"\0"

# Fork-safety: live stores, closed before every fork (see module docstring).
_LIVE: weakref.WeakSet[L3Store] = weakref.WeakSet()


class _Broken(Exception):
    """The files exist but are not a store we can use."""


class _SharedEnvs:
    """The environments open in this process, one per data file, and who uses each.

    LMDB must not open the same files twice in one process (its fcntl locks
    belong to the process), and py-lmdb refuses to. Two stores on one
    folder in one process (a Guild's result cache and ``@cached``'s default
    cache) therefore share one environment, closed when the last lets go.
    Files are told apart by inode, as py-lmdb does: a store moved aside and
    started afresh at the same path is a new environment.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.envs: dict[tuple[int, int], list[Any]] = {}  # (dev, inode) -> [env, users]

    def acquire(self, data: str, open_env: Callable[[], Any]) -> tuple[Any, tuple[int, int]]:
        with self.lock:
            key = _file_id(data)
            if key is not None and key in self.envs:
                entry = self.envs[key]
                entry[1] += 1
                return entry[0], key
            env = open_env()
            opened = _file_id(data)
            assert opened is not None  # the environment was just opened on it
            self.envs[opened] = [env, 1]
            return env, opened

    def release(self, key: tuple[int, int]) -> None:
        with self.lock:
            entry = self.envs.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self.envs[key]
                entry[0].close()


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


_SHARED = _SharedEnvs()


def _recovering(method: Callable[Concatenate[L3Store, P], T]) -> Callable[Concatenate[L3Store, P], T]:
    """Run ``method``; on damage, start a fresh store and run it once more there.

    Only the outermost call of a thread recovers (methods call each other
    under the store's lock); a store damaged again at once is a CacheError.
    """

    @functools.wraps(method)
    def call(self: L3Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            if self._recovering:
                return method(self, *args, **kwargs)
            self._recovering = True
            try:
                try:
                    return method(self, *args, **kwargs)
                except _DAMAGE as exc:
                    self._start_afresh(exc)
                try:
                    return method(self, *args, **kwargs)
                except _DAMAGE as exc:
                    raise self._still_damaged(exc) from exc
            finally:
                self._recovering = False

    return call


class L3Store:
    """An LMDB-backed store of namespaced, expiring, signed records.

    ``policies`` gives each namespace its TTL and entry cap; namespaces not
    in it have none. ``clock`` is the time source of every TTL decision.
    """

    def __init__(
        self,
        path: str,
        *,
        map_size: int = 2**30,
        policies: dict[str, CachePolicy] | None = None,
        compress: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)
        self.map_size = int(map_size)
        self.policies = dict(policies or {})
        self.compress = compress and record.compression_available()
        self.clock = clock
        self._lock = threading.RLock()
        self._env: Any = None
        self._dbs: dict[str, Any] = {}
        # namespace -> clock time before which a write skips the sweep probe
        self._probe_at: dict[str, float] = {}
        self._pid = -1
        self._lock_fd = -1
        self._closed = False
        self._inode = -1  # of the data.mdb we opened: tells whether another agent replaced it
        self._env_key: tuple[int, int] | None = None  # our use of a _SHARED environment
        self._recovering = False  # inside a call that recovers from damage (under _lock)
        self._writes_off: str | None = None  # why the disk refused our writes, once it did
        storefiles.ensure_dir(self.path)
        self._secret = storefiles.load_secret(self.path)
        with self._lock:
            self._open()
        _LIVE.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self._pid}"
        return f"<L3Store {self.path} {state}>"

    # ------------------------------------------------------------ open/close

    def _open(self) -> None:
        """Open (or reopen) the environment; move a broken store aside once."""
        if self._lock_fd < 0 or self._pid != os.getpid():
            self._lock_fd = storefiles.open_lock(self.path)
        data = os.path.join(self.path, "data.mdb")
        for attempt in (1, 2):
            try:
                self._env, env_key = _SHARED.acquire(data, self._open_env)
                self._env_key = env_key
                self._meta = self._env.open_db(b"__meta__")
                self._index = self._env.open_db(b"__index__")
                break
            except (lmdb.Error, _Broken) as exc:
                if attempt == 2:
                    raise CacheError(
                        f"cache store {self.path} cannot be opened even after moving the old "
                        f"one aside: {exc}; check the folder's permissions and free space"
                    ) from exc
                storefiles.move_aside(self.path, f"{type(exc).__name__}: {exc}")
        self._pid = os.getpid()
        self._inode = env_key[1]
        self._dbs = {}
        wanted = {n for n, p in self.policies.items() if p.persistent}
        for name in sorted(wanted | set(self._names())):
            self._db(name)

    def _open_env(self) -> Any:
        data = os.path.join(self.path, "data.mdb")
        env = lmdb.open(
            self.path,
            map_size=self.map_size,
            max_dbs=MAX_DBS,
            mode=storefiles.FILE_MODE,
            sync=False,
            metasync=False,
            readahead=False,
            # py-lmdb keeps an aborted read transaction and renews it on the
            # next begin (mdb_txn_reset/renew): no reader-slot setup per get.
            # Spares are per environment, and the environment is closed
            # before every fork, so none crosses a fork.
            max_spare_txns=SPARE_READ_TXNS,
        )
        try:
            info, st = env.info(), env.stat()
            # A truncated file would be mapped past its end and SIGBUS on read.
            needed = (info["last_pgno"] + 1) * st["psize"]
            if os.path.getsize(data) < needed:
                raise _Broken(f"data.mdb is {os.path.getsize(data)} bytes, its pages need {needed}")
            with env.begin(write=True) as txn:
                meta = env.open_db(b"__meta__", txn=txn)
                fmt = txn.get(b"format", db=meta)
                if fmt is None:
                    foreign = [k for k, _ in txn.cursor() if not k.startswith((b"ns:", b"__"))]
                    if foreign:
                        raise _Broken(f"not a guildcore cache (found database {foreign[0]!r})")
                    txn.put(b"format", FORMAT, db=meta)
                elif fmt != FORMAT:
                    raise _Broken(f"format {bytes(fmt)!r}, expected {FORMAT!r}")
                env.open_db(b"__index__", txn=txn)
        except BaseException:
            env.close()
            raise
        for name in ("data.mdb", "lock.mdb"):
            storefiles.tighten(os.path.join(self.path, name), storefiles.FILE_MODE)
        return env

    def _start_afresh(self, exc: BaseException) -> None:
        """The store is damaged: move it aside (unless another agent did) and open a new one."""
        opened = list(self._dbs)
        self._close_env()
        try:
            current = os.stat(os.path.join(self.path, "data.mdb")).st_ino
        except FileNotFoundError:
            current = None
        if current == self._inode:
            storefiles.move_aside(self.path, f"{type(exc).__name__}: {exc}")
        self._open()
        for name in opened:
            self._db(name)

    def _still_damaged(self, exc: BaseException) -> CacheError:
        return CacheError(
            f"cache store {self.path} is damaged ({type(exc).__name__}: {exc}) and a fresh one "
            "failed the same way; check the disk, or turn caching off (caching.enabled: false)"
        )

    def _env_checked(self) -> Any:
        """The environment, reopened if this is a new process. Call under ``_lock``."""
        if self._pid != os.getpid() or self._env is None:
            if self._closed:
                raise CacheError(f"cache store {self.path} is closed; open a new one")
            self._open()
        return self._env

    def _db(self, namespace: str) -> Any:
        """The database of a namespace, created if needed.

        Invariant: called under ``_lock`` and outside any transaction of this
        thread (opening a database takes LMDB's write lock, and a handle
        opened inside a transaction that aborts would be dead).
        """
        db = self._dbs.get(namespace)
        if db is None:
            check_namespace(namespace)
            db = self._dbs[namespace] = self._env_checked().open_db(b"ns:" + namespace.encode())
        return db

    def _names(self) -> list[str]:
        with self._env.begin() as txn:
            return sorted(k[3:].decode() for k, _ in txn.cursor() if k.startswith(b"ns:"))

    def _refresh_dbs(self) -> None:
        """Open the databases other agents created since we opened the store."""
        self._env_checked()
        for name in self._names():
            self._db(name)

    def _close_env(self) -> None:
        if self._env is not None and self._pid == os.getpid() and self._env_key is not None:
            _SHARED.release(self._env_key)
        self._env = None
        self._env_key = None
        self._dbs = {}

    def close(self) -> None:
        """Close the environment and release the open lock. Idempotent."""
        with self._lock:
            self._close_env()
            self._closed = True
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
        _LIVE.discard(self)

    # ------------------------------------------------------------ reads

    def lookup(self, namespace: str, key: bytes) -> tuple[Any, float, int] | None:
        """``(value, expires, nbytes)`` of a live entry, else ``None``; bad entries are removed."""
        try:
            return self._lookup(namespace, key)
        except _DAMAGE as exc:
            self._after_damaged_read(exc)
            return None

    def _lookup(self, namespace: str, key: bytes) -> tuple[Any, float, int] | None:
        with self._lock:
            # Fork-safety: the fork hooks empty ``_dbs`` on both sides, so a
            # database handle found here belongs to this process's environment.
            db = self._dbs.get(namespace)
            if db is None:
                db = self._db(namespace)
            # Zero-copy: ``raw`` is a view of the map, valid only inside the
            # transaction, so the value is checked and decoded in here.
            txn = self._env.begin(db=db, buffers=True)
            try:
                raw = txn.get(key)
                if raw is None:
                    return None
                live = record.unpack_live(raw, namespace.encode(), key, self._secret, self.clock())
                return None if live is None else (live[0], live[1], len(raw))
            except record.BadRecord as exc:
                bad = exc
            finally:
                txn.abort()
            self._drop_bad(namespace, key, bad)
            return None

    def get(self, namespace: str, key: bytes, default: Any = None) -> Any:
        hit = self.lookup(namespace, key)
        return default if hit is None else hit[0]

    def get_many(
        self, namespace: str, keys: Iterable[bytes]
    ) -> dict[bytes, tuple[Any, float, int]]:
        """Live entries among ``keys``, read in one transaction."""
        try:
            return self._get_many(namespace, keys)
        except _DAMAGE as exc:
            self._after_damaged_read(exc)
            return {}

    def _after_damaged_read(self, exc: BaseException) -> None:
        """A read met damage: start afresh, where the read is a miss."""
        with self._lock:
            if self._recovering:
                raise exc  # the outer call recovers
            self._start_afresh(exc)

    def _get_many(
        self, namespace: str, keys: Iterable[bytes]
    ) -> dict[bytes, tuple[Any, float, int]]:
        out = {}
        bad = []
        ns, secret, unpack_live = namespace.encode(), self._secret, record.unpack_live
        with self._lock:
            db = self._db(namespace)
            now = self.clock()
            txn = self._env.begin(db=db, buffers=True)
            try:
                get = txn.get
                for k in keys:
                    raw = get(k)
                    if raw is not None:
                        try:
                            live = unpack_live(raw, ns, k, secret, now)
                        except record.BadRecord as exc:
                            bad.append((k, exc))
                            continue
                        if live is not None:
                            out[k] = (live[0], live[1], len(raw))
            finally:
                txn.abort()
            for k, problem in bad:
                self._drop_bad(namespace, k, problem)
        return out

    def _drop_bad(self, namespace: str, key: bytes, exc: record.BadRecord) -> None:
        """Log an unusable entry and remove it (unless it may be fine for another agent)."""
        action = "removed it" if exc.remove else "kept it"
        log.warning("cache entry %s/%s is unusable (%s); %s", namespace, key.hex(), exc, action)
        if exc.remove:
            db = self._db(namespace)
            self._write(lambda txn: self._remove(txn, namespace.encode(), key, db))

    # ------------------------------------------------------------ writes

    def _write(self, fn: Callable[[Any], T]) -> T | None:
        """Run ``fn(txn)`` in a write transaction; on a full map evict and retry.

        A disk that refuses the commit (full, read-only, failing) turns this
        store's writes off, with one warning: every later write would fail
        the same way, each costing a transaction and a log line, and results
        are still returned without the disk tier.
        """
        with self._lock:
            if self._writes_off is not None:
                return None
            env = self._env if self._env is not None else self._env_checked()
            for attempt in range(MAP_FULL_RETRIES):
                try:
                    with env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    if not self._evict_for_space(MAP_FULL_EVICT_FRACTION * 2**attempt):
                        break
                except lmdb.Error as exc:
                    if isinstance(exc, _DAMAGE) or not _disk_refused(exc):
                        raise
                    self._writes_off = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "cache store %s cannot be written (%s): the disk is probably full or read-only; "
                        "this process stores nothing more on disk (results are still returned); "
                        "free space there or point caching.path elsewhere",
                        self.path,
                        self._writes_off,
                    )
                    return None
            log.warning(
                "cache store %s is full (map_size %s) and eviction did not free enough; "
                "the write was dropped; raise caching.disk_cache",
                self.path,
                format_bytes(self.map_size),
            )
            return None

    def set(
        self,
        namespace: str,
        key: bytes,
        value: Any,
        *,
        ttl_s: float | None = None,
        tags: Iterable[str] = (),
    ) -> int:
        """Store one value; return its stored size. ``ttl_s=None`` means the namespace's TTL."""
        return self.set_many(namespace, [(key, value)], ttl_s=ttl_s, tags=tags)[0]

    def set_many(
        self,
        namespace: str,
        items: Iterable[tuple[bytes, Any]],
        *,
        ttl_s: float | None = None,
        tags: Iterable[str] = (),
    ) -> list[int]:
        """Store many values in one transaction; return their stored sizes, in order.

        Raises ``SerializationError`` (before writing anything) if a value
        cannot be encoded.
        """
        ns = namespace.encode()
        now = self.clock()
        ttl = self._ttl(namespace, ttl_s)
        expires = now + ttl if ttl else 0.0
        tag_list = [t.encode() for t in tags] if tags else []
        if any(_NUL in t or not t for t in tag_list):
            raise ConfigError(f"tags must be non-empty and contain no NUL: {tag_list!r}", key="tags")
        secret, compress, tagged, pack = self._secret, self.compress, bool(tag_list), record.pack
        rows = [
            (
                k,
                pack(
                    v,
                    namespace=ns,
                    key=k,
                    created=now,
                    expires=expires,
                    secret=secret,
                    compress=compress,
                    tagged=tagged,
                ),
            )
            for k, v in items
        ]
        if not rows:
            return []
        prefix_a = b"a" + ns + _NUL + _pack_f64(now)
        # Entries on the namespace's own TTL expire in age order: the age
        # hint finds them. Only a different TTL needs its own expiry hint.
        policy = self.policies.get(namespace)
        own_ttl = policy is not None and ttl == (policy.ttl_s or 0.0)
        prefix_e = b"e" + _pack_f64(expires) + ns + _NUL if expires and not own_ttl else b""
        tag_blob = msgpack.packb(tag_list) if tag_list else b""

        def write(txn: Any) -> None:
            # Handles are read here, not captured: a damaged store replaced
            # by a fresh one between two attempts has new ones.
            db, index = self._dbs[namespace], self._index
            put = txn.put
            for k, raw in rows:
                # New keys (the usual case: result keys name their inputs)
                # take one B-tree operation; an overwrite reads the old record
                # for its hints, then writes.
                if not put(k, raw, db=db, overwrite=False):
                    self._drop_hints(txn, ns, k, txn.get(k, db=db))
                    put(k, raw, db=db)
            if len(rows) == 1 and not prefix_e and not tag_list:
                put(prefix_a + rows[0][0], b"", db=index)
            else:
                hints = [(prefix_a + k, b"") for k, _ in rows]
                if prefix_e:
                    hints += [(prefix_e + k, b"") for k, _ in rows]
                if tag_list:
                    created = _pack_f64(now)
                    for k, _ in rows:
                        hints.append((b"g" + ns + _NUL + k, tag_blob))
                        hints += [(b"t" + t + _NUL + ns + _NUL + k, created) for t in tag_list]
                hints.sort()  # putmulti into sorted order touches each leaf page once
                txn.cursor(index).putmulti(hints)
            if policy is not None and policy.max_entries is not None:
                self._enforce_cap(txn, namespace, db)
            if now >= self._probe_at.get(namespace, 0.0):
                self._sweep_some(txn, now, namespace)

        with self._lock:
            try:
                if namespace not in self._dbs:
                    self._db(namespace)
                self._write(write)
            except _DAMAGE as exc:
                if self._recovering:
                    raise  # the outer call recovers
                self._start_afresh(exc)
                try:  # once more, on the fresh store
                    self._db(namespace)
                    self._write(write)
                except _DAMAGE as again:
                    raise self._still_damaged(again) from again
        return [len(raw) for _, raw in rows]

    def _ttl(self, namespace: str, ttl_s: float | None) -> float:
        if ttl_s is None:
            policy = self.policies.get(namespace)
            ttl_s = policy.ttl_s if policy is not None else None
        if ttl_s is None or ttl_s == float("inf"):
            return 0.0
        if ttl_s <= 0:
            raise ConfigError(
                f"ttl must be positive, None (the namespace's) or math.inf, not {ttl_s!r}", key="ttl"
            )
        return float(ttl_s)

    @_recovering
    def delete(self, namespace: str, key: bytes) -> bool:
        """Remove one entry; return whether it was there."""
        ns = namespace.encode()
        with self._lock:
            db = self._db(namespace)
            return bool(self._write(lambda txn: self._remove(txn, ns, key, db)))

    @_recovering
    def clear(self, namespace: str | None = None) -> None:
        """Remove every entry of one namespace, or of all of them."""
        with self._lock:
            self._refresh_dbs()
            names = [namespace] if namespace is not None else list(self._dbs)
            dbs = [self._db(name) for name in names]

            def write(txn: Any) -> None:
                for name, db in zip(names, dbs, strict=True):
                    txn.drop(db, delete=False)
                    self._drop_index_of(txn, name.encode())

            self._write(write)

    @_recovering
    def invalidate_tag(self, tag: str) -> list[tuple[str, bytes]]:
        """Remove every entry set with ``tag``; return their ``(namespace, key)``."""
        prefix = b"t" + tag.encode() + _NUL
        with self._lock:
            self._refresh_dbs()
            return self._write(lambda txn: self._invalidate_in(txn, prefix)) or []

    def _invalidate_in(self, txn: Any, prefix: bytes) -> list[tuple[str, bytes]]:
        removed = []
        cur = txn.cursor(self._index)
        hits = []
        if cur.set_range(prefix):
            for k, created in cur:
                if not k.startswith(prefix):
                    break
                hits.append((k, created))
        for k, created in hits:
            ns, _, key = k[len(prefix) :].partition(_NUL)
            db = self._dbs.get(ns.decode())
            if db is None:
                continue
            txn.delete(k, db=self._index)
            raw = txn.get(key, db=db)
            if raw is not None and _pack_f64(record.peek_times(raw)[0]) == created:
                self._remove(txn, ns, key, db)
                removed.append((ns.decode(), key))
        return removed

    # ------------------------------------------------------------ removal

    def _remove(self, txn: Any, ns: bytes, key: bytes, db: Any) -> bool:
        raw = txn.pop(key, db=db)
        if raw is None:
            return False
        self._drop_hints(txn, ns, key, raw)
        return True

    def _drop_hints(self, txn: Any, ns: bytes, key: bytes, raw: bytes) -> None:
        """Delete the index entries of a record that was just removed or replaced."""
        index = self._index
        try:
            created, expires = record.peek_times(raw)
        except record.BadRecord:
            return  # too short to name its hints; they are dropped when reached
        txn.delete(b"a" + ns + _NUL + _pack_f64(created) + key, db=index)
        if expires:
            txn.delete(b"e" + _pack_f64(expires) + ns + _NUL + key, db=index)
        if not record.is_tagged(raw):
            return
        tags = txn.pop(b"g" + ns + _NUL + key, db=index)
        for t in msgpack.unpackb(tags) if tags else ():
            txn.delete(b"t" + t + _NUL + ns + _NUL + key, db=index)

    def _drop_index_of(self, txn: Any, ns: bytes) -> None:
        cur = txn.cursor(self._index)
        for prefix in (b"a" + ns + _NUL, b"g" + ns + _NUL):
            if cur.set_range(prefix):
                while cur.key().startswith(prefix):
                    if not cur.delete():
                        break
        # Expiry and tag hints of the namespace are dropped when reached.

    def _oldest(self, txn: Any, ns: bytes, n: int) -> list[tuple[bytes, bytes]]:
        """Up to ``n`` age hints of a namespace, oldest first: ``(created8, key)``."""
        prefix = b"a" + ns + _NUL
        cur = txn.cursor(self._index)
        out: list[tuple[bytes, bytes]] = []
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if not k.startswith(prefix) or len(out) >= n:
                    break
                out.append((k[len(prefix) : len(prefix) + 8], k[len(prefix) + 8 :]))
        return out

    def _evict_oldest(self, txn: Any, namespace: str, db: Any, n: int) -> int:
        """Remove the ``n`` oldest entries of one namespace (stale hints are dropped)."""
        ns = namespace.encode()
        removed = 0
        while removed < n:
            batch = self._oldest(txn, ns, max(n - removed, 16))
            if not batch:
                break
            for created8, key in batch:
                raw = txn.get(key, db=db)
                if raw is not None and _pack_f64(record.peek_times(raw)[0]) == created8:
                    self._remove(txn, ns, key, db)
                    removed += 1
                    if removed >= n:
                        break
                else:
                    txn.delete(b"a" + ns + _NUL + created8 + key, db=self._index)
        return removed

    def _enforce_cap(self, txn: Any, namespace: str, db: Any) -> None:
        policy = self.policies.get(namespace)
        if policy is None or policy.max_entries is None:
            return
        extra = txn.stat(db)["entries"] - policy.max_entries
        if extra > 0:
            self._evict_oldest(txn, namespace, db, extra)

    def _evict_for_space(self, fraction: float) -> bool:
        """Evict the oldest ``fraction`` of every namespace; False if nothing was left."""
        self._refresh_dbs()
        with self._env.begin(write=True) as txn:
            total = 0
            for name, db in list(self._dbs.items()):
                count = txn.stat(db)["entries"]
                if count:
                    total += self._evict_oldest(
                        txn, name, db, max(1, int(count * min(fraction, 1.0)))
                    )
        log.info("cache store %s: map full, evicted %d oldest entries", self.path, total)
        return total > 0

    # ------------------------------------------------------------ sweeping

    @_recovering
    def sweep(self, limit: int | None = None) -> int:
        """Remove expired entries (up to ``limit``); return how many. Call on a timer."""
        now = self.clock()
        with self._lock:
            self._refresh_dbs()
            return self._write(lambda txn: self._sweep_in(txn, now, limit)) or 0

    def _sweep_some(self, txn: Any, now: float, namespace: str) -> None:
        """The per-write sweep: two cursor probes when nothing is due, which is usual.

        When nothing is due, the next probe of this namespace waits until the
        soonest due time seen, at most ``SWEEP_PROBE_INTERVAL_S`` (entries
        written by other agents may be due sooner; the timed sweep gets those).
        """
        cur = txn.cursor(self._index)
        bound = _pack_f64(now)
        next_at = now + SWEEP_PROBE_INTERVAL_S
        due = False
        if cur.set_range(b"e") and cur.key()[:1] == b"e":
            first = cur.key()[1:9]
            due = first <= bound
            next_at = min(next_at, _F64.unpack(first)[0])
        policy = self.policies.get(namespace)
        if not due and policy is not None and policy.ttl_s:
            prefix = b"a" + namespace.encode() + _NUL
            if cur.set_range(prefix) and cur.key().startswith(prefix):
                created8 = cur.key()[len(prefix) : len(prefix) + 8]
                due = created8 <= _pack_f64(now - policy.ttl_s)
                next_at = min(next_at, _F64.unpack(created8)[0] + policy.ttl_s)
        if due:
            self._sweep_in(txn, now, OPPORTUNISTIC_SWEEP, only=namespace)
            next_at = now  # more may be due: probe again on the next write
        self._probe_at[namespace] = next_at

    def _sweep_in(self, txn: Any, now: float, limit: int | None, only: str | None = None) -> int:
        """Remove expired entries: those with their own expiry hint, then, per
        namespace with a TTL, the oldest entries (``only``: just that one)."""
        removed = self._sweep_hinted(txn, now, limit)
        for name, policy in self.policies.items():
            if limit is not None and removed >= limit:
                break
            db = self._dbs.get(name)
            if policy.ttl_s and db is not None and only in (None, name):
                left = None if limit is None else limit - removed
                removed += self._sweep_aged(txn, name.encode(), db, now, now - policy.ttl_s, left)
        return removed

    def _sweep_hinted(self, txn: Any, now: float, limit: int | None) -> int:
        """Remove entries whose own expiry hint is due; return how many hints were handled.

        A hint of a namespace this store has not opened is passed over, not
        counted: counted, ten such hints at the head would fill every
        ``limit`` and the sweep would never reach the entries behind them.
        A namespace with no database at all is gone: its hints are dropped.
        """
        cur = txn.cursor(self._index)
        if not cur.set_range(b"e"):
            return 0
        due: list[tuple[bytes, Any]] = []
        dead: list[bytes] = []
        bound = _pack_f64(now)
        for k in cur.iternext(values=False):
            if k[:1] != b"e" or k[1:9] > bound or (limit is not None and len(due) >= limit):
                break
            ns = k[9:].partition(_NUL)[0]
            db = self._dbs.get(ns.decode(errors="replace"))
            if db is not None:
                due.append((k, db))
            elif txn.get(b"ns:" + ns) is None:
                dead.append(k)
            # else opened by another agent since: the timed sweep refreshes and gets it
        for k in dead:
            txn.delete(k, db=self._index)
        for k, db in due:
            ns, _, key = k[9:].partition(_NUL)
            txn.delete(k, db=self._index)
            raw = txn.get(key, db=db)
            if raw is not None and _pack_f64(record.peek_times(raw)[1]) == k[1:9]:
                self._remove(txn, ns, key, db)
        return len(due) + len(dead)

    def _sweep_aged(
        self, txn: Any, ns: bytes, db: Any, now: float, cutoff: float, limit: int | None
    ) -> int:
        """Remove entries created before ``cutoff`` whose expiry has passed."""
        done = 0
        bound = _pack_f64(cutoff)
        prefix = b"a" + ns + _NUL
        head = txn.cursor(self._index)
        # The common case, on every write: the oldest entry is not due yet.
        if not head.set_range(prefix) or head.key()[len(prefix) : len(prefix) + 8] > bound:
            return 0
        skipped = 0
        step = 64 if limit is None else min(limit, 64)
        while limit is None or done < limit:
            batch = self._oldest(txn, ns, step + skipped)[skipped:]
            if not batch or batch[0][0] > bound:
                break
            for created8, key in batch:
                if created8 > bound or (limit is not None and done >= limit):
                    return done
                raw = txn.get(key, db=db)
                if raw is None or _pack_f64(record.peek_times(raw)[0]) != created8:
                    txn.delete(b"a" + ns + _NUL + created8 + key, db=self._index)  # stale hint
                    done += 1
                elif 0 < record.peek_times(raw)[1] <= now:
                    self._remove(txn, ns, key, db)
                    done += 1
                else:
                    skipped += 1  # a longer TTL of its own: its expiry hint gets it later
        return done

    # ------------------------------------------------------------ space, stats

    @_recovering
    def namespaces(self) -> list[str]:
        """Namespaces that have a database in this store (written by any agent)."""
        with self._lock:
            self._env_checked()
            return self._names()

    @_recovering
    def entries(self, namespace: str) -> Iterator[tuple[bytes, float, float, int]]:
        """``(key, created, expires, nbytes)`` of every entry, for inspection tools."""
        with self._lock:
            db = self._db(namespace)
            with self._env.begin(db=db) as txn:
                rows = [(k, *record.peek_times(v), len(v)) for k, v in txn.cursor()]
        return iter(rows)

    def file_bytes(self) -> int:
        try:
            return os.path.getsize(os.path.join(self.path, "data.mdb"))
        except FileNotFoundError:
            return 0

    @_recovering
    def compact(self) -> tuple[int, int]:
        """Rewrite the store without free pages; return file sizes before and after.

        Ownership: only a store that no other agent has open is compacted;
        swapping the file under a live reader would hand it the wrong pages.
        """
        with self._lock:
            env = self._env_checked()
            before = self.file_bytes()
            if not storefiles.try_exclusive(self._lock_fd):
                raise CacheError(
                    f"cache store {self.path} is open in another process; "
                    "compact it when no guild is running"
                )
            tmp = os.path.join(self.path, "compact.tmp")
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                os.mkdir(tmp, storefiles.DIR_MODE)
                env.copy(tmp, compact=True)
                self._close_env()
                storefiles.tighten(os.path.join(tmp, "data.mdb"), storefiles.FILE_MODE)
                # Invariant: the swap is one rename; a crash leaves old or new, never half.
                os.replace(os.path.join(tmp, "data.mdb"), os.path.join(self.path, "data.mdb"))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, "lock.mdb"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                if self._env is None:
                    self._open()
                storefiles.back_to_shared(self._lock_fd)
            return before, self.file_bytes()

    @_recovering
    def stats(self) -> dict[str, Any]:
        """Entries and bytes per namespace, and the file's size and use."""
        with self._lock:
            self._refresh_dbs()
            env = self._env
            out: dict[str, Any] = {
                "path": self.path,
                "map_size": self.map_size,
                "file_bytes": self.file_bytes(),
                "namespaces": {},
            }
            with env.begin() as txn:
                for name, db in sorted(self._dbs.items()):
                    st = txn.stat(db)
                    pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                    out["namespaces"][name] = {
                        "entries": st["entries"],
                        "bytes": pages * st["psize"],
                    }
                info, st = env.info(), env.stat()
                out["used_bytes"] = (info["last_pgno"] + 1) * st["psize"]
            return out

    @_recovering
    def add_counters(self, deltas: dict[str, tuple[int, int]]) -> None:
        """Add per-namespace ``(hits, misses)`` to the totals kept in the store."""
        if not deltas:
            return

        def write(txn: Any) -> None:
            for name, (hits, misses) in deltas.items():
                k = b"stats:" + name.encode()
                old = txn.get(k, db=self._meta)
                h, m = msgpack.unpackb(old) if old else (0, 0)
                txn.put(k, msgpack.packb([h + hits, m + misses]), db=self._meta)

        self._write(write)

    @_recovering
    def counters(self) -> dict[str, tuple[int, int]]:
        """Per-namespace ``(hits, misses)`` kept in the store by every agent that closed."""
        with self._lock:
            env = self._env_checked()
            with env.begin(db=self._meta) as txn:
                return {
                    k[6:].decode(): tuple(msgpack.unpackb(v))
                    for k, v in txn.cursor()
                    if k.startswith(b"stats:")
                }

    # ------------------------------------------------------------ fork

    def _before_fork(self) -> None:
        self._lock.acquire()
        self._close_env()

    def _after_fork_parent(self) -> None:
        self._lock.release()

    def _after_fork_child(self) -> None:
        self._lock = threading.RLock()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the parent's hold; we take our own on reopen
            self._lock_fd = -1


_FORKING: list[L3Store] = []  # stores locked by _at_fork_before, for the after hooks


def _at_fork_before() -> None:
    for store in list(_LIVE):
        store._before_fork()
        _FORKING.append(store)


def _at_fork_parent() -> None:
    while _FORKING:
        _FORKING.pop()._after_fork_parent()


def _at_fork_child() -> None:
    # Fork-safety: environments open in the parent are the parent's (every
    # live store closed its own before the fork); the registry starts empty.
    _SHARED.__init__()  # type: ignore[misc]
    while _FORKING:
        _FORKING.pop()._after_fork_child()


os.register_at_fork(
    before=_at_fork_before, after_in_parent=_at_fork_parent, after_in_child=_at_fork_child
)
