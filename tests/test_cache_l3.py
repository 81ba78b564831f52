"""L3 on disk: bad entries, full maps, compaction, files, crashes, other processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdbdamage
import pytest

from guildcore.cache import CachePolicy, TieredCache
from guildcore.cache.l3 import L3Store
from guildcore.cache.policy import DEFAULT_POLICIES
from guildcore.cache.record import HEADER_BYTES
from guildcore.errors import CacheError

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[L3Store]:
    s = L3Store(str(tmp_path / "store"), map_size=2**24, policies=dict(DEFAULT_POLICIES))
    yield s
    s.close()


def _raw(store: L3Store, ns: str, key: bytes) -> bytes | None:
    with store._lock:
        db = store._db(ns)
        with store._env.begin(db=db) as txn:
            raw = txn.get(key)
    return None if raw is None else bytes(raw)


def _rewrite(store: L3Store, ns: str, key: bytes, change: Callable[[bytes], bytes]) -> None:
    with store._lock:
        db = store._db(ns)
        with store._env.begin(write=True, db=db) as txn:
            txn.put(key, change(bytes(txn.get(key))))


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def change(raw: bytes) -> bytes:
        b = bytearray(raw)
        b[offset] ^= 0x40
        return bytes(b)

    return change


def _value(signed: bool) -> object:
    from fractions import Fraction  # goes through pickle

    return Fraction(22, 7) if signed else {"plain": [1, 2, 3]}


@pytest.mark.parametrize(
    ("signed", "change", "reason"),
    [
        (False, _flip(-1), "checksum mismatch"),
        (True, _flip(-1), "checksum mismatch"),
        (True, _flip(HEADER_BYTES + 3), "signature mismatch"),
        (False, _flip(0), "unknown header"),
        (False, _flip(12), "checksum mismatch"),  # creation time
        (True, lambda raw: raw[:-5], "truncated or torn"),
        (False, lambda raw: raw[:10], "value is 10 bytes, shorter than"),
    ],
    ids=["payload", "signed-payload", "signature", "version", "header-time", "truncated", "stub"],
)
def test_bad_entry_is_a_logged_miss_and_removed(
    store: L3Store,
    caplog: pytest.LogCaptureFixture,
    signed: bool,
    change: Callable[[bytes], bytes],
    reason: str,
) -> None:
    store.set("result", b"k", _value(signed))
    assert store.get("result", b"k") == _value(signed)
    _rewrite(store, "result", b"k", change)
    with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
        assert store.get("result", b"k", "default") == "default"
    assert f"cache entry result/{b'k'.hex()} is unusable (" in caplog.text and reason in caplog.text
    assert "removed it" in caplog.text
    assert _raw(store, "result", b"k") is None


class _Touch:
    """Pickles to a call that creates ``path`` when unpickled: a live payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


def test_forged_pickle_with_valid_checksum_is_never_unpickled(
    store: L3Store, tmp_path: Path
) -> None:
    """An attacker who can write the file recomputes the checksum: the signature still fails."""
    from guildcore.cache import record

    marker = tmp_path / "pwned"

    def forged(secret: bytes) -> bytes:
        return record.pack(
            _Touch(marker), namespace=b"result", key=b"k", created=1.0, expires=None,
            secret=secret, compress=False,
        )  # fmt: skip

    store.set("result", b"k", _value(True))
    # The payload is live: signed with the store's own key, reading it runs it.
    _rewrite(store, "result", b"k", lambda raw: forged(store._secret))
    store.get("result", b"k")
    assert marker.exists()
    marker.unlink()
    # Signed with any other key, it is never unpickled.
    _rewrite(store, "result", b"k", lambda raw: forged(b"wrong key" * 4))
    assert store.get("result", b"k") is None
    assert not marker.exists()


def test_map_full_evicts_oldest_instead_of_failing(tmp_path: Path) -> None:
    with TieredCache(str(tmp_path / "s"), map_size=1 * 2**20, compress=False) as c:
        for i in range(200):
            c.set("agent", i.to_bytes(4, "big"), os.urandom(20_000))
        c.evict_memory()
        assert c.get("agent", (199).to_bytes(4, "big")) is not None
        assert c.get("agent", (0).to_bytes(4, "big")) is None
        assert 0 < c.l3.stats()["namespaces"]["agent"]["entries"] < 200


def test_value_bigger_than_the_map_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TieredCache(str(tmp_path / "s"), map_size=2**20, compress=False) as c:
        with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
            c.set("agent", b"huge", os.urandom(4 * 2**20))
        assert "is full" in caplog.text and "raise caching.disk_cache" in caplog.text
        c.evict_memory()
        assert c.get("agent", b"huge") is None


def test_compact_shrinks_the_file(store: L3Store) -> None:
    store.set_many("agent", [(i.to_bytes(4, "big"), os.urandom(1000)) for i in range(3000)])
    store.set("agent", b"keep", "kept")
    store.clear("agent")
    store.set("agent", b"keep", "kept")
    data = os.path.join(store.path, "data.mdb")
    size = os.path.getsize(data)
    before, after = store.compact()
    assert before == size
    assert after == os.path.getsize(data)
    assert after < before / 4
    assert store.get("agent", b"keep") == "kept"
    store.set("agent", b"more", 1)
    assert store.get("agent", b"more") == 1


def test_compact_refuses_while_another_process_has_the_store_open(store: L3Store) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from guildcore.cache.l3 import L3Store
            s = L3Store({store.path!r}, map_size=2**24)
            print("open", flush=True)
            sys.stdin.read()
            s.close()
        """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(
            CacheError, match=r"is open in another process; compact it when no guild is running"
        ):
            store.compact()
    finally:
        holder.communicate("")
    assert store.compact()[1] > 0


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    s = L3Store(str(path), map_size=2**24)
    s.set("agent", b"k", 1)
    s.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb", "secret.key", "open.lock"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o600, name
    assert len((path / "secret.key").read_bytes()) == 32


def test_corrupted_store_is_moved_aside_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    s = L3Store(str(path), map_size=2**24)
    s.set("agent", b"k", 1)
    s.close()
    (path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
        s = L3Store(str(path), map_size=2**24)
    try:
        assert "could not be used" in caplog.text and "started an empty one" in caplog.text
        assert len(list(path.glob("data.mdb.broken-*"))) == 1
        assert s.get("agent", b"k") is None
        s.set("agent", b"k", 2)
        assert s.get("agent", b"k") == 2
    finally:
        s.close()


def test_truncated_store_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    s = L3Store(str(path), map_size=2**24)
    s.set_many("agent", [(i.to_bytes(4, "big"), os.urandom(500)) for i in range(500)])
    s.close()
    with open(path / "data.mdb", "r+b") as f:
        f.truncate(3 * 4096)
    with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
        s = L3Store(str(path), map_size=2**24)
    s.close()
    assert "could not be used" in caplog.text


def test_second_process_reads_what_the_first_wrote(store: L3Store) -> None:
    from fractions import Fraction

    store.set("result", b"plain", {"a": (1, 2)})
    store.set("result", b"signed", Fraction(1, 3))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            from guildcore.cache.l3 import L3Store
            s = L3Store({store.path!r}, map_size=2**24)
            print(repr(s.get("result", b"plain")), repr(s.get("result", b"signed")))
            s.set("result", b"child", "from child")
            s.close()
        """)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "{'a': (1, 2)} Fraction(1, 3)"
    assert store.get("result", b"child") == "from child"


def _forked_child(path: str) -> None:
    # Runs in a forked agent: the parent's store object came along and must reopen.
    store = _FORK_STORE[0]
    assert store.get("agent", b"parent") == "p"
    store.set("agent", b"child", "c")
    assert store.path == path


_FORK_STORE: list[L3Store] = []


def test_fork_reopens_instead_of_inheriting(store: L3Store) -> None:
    store.set("agent", b"parent", "p")
    _FORK_STORE.append(store)
    try:
        proc = multiprocessing.get_context("fork").Process(target=_forked_child, args=(store.path,))
        proc.start()
        proc.join(30)
    finally:
        _FORK_STORE.clear()
    assert proc.exitcode == 0
    assert store.get("agent", b"child") == "c"
    with store._lock, store._env.begin() as txn:  # the parent's reader slots are intact
        assert txn.stat(store._db("agent"))["entries"] == 2


WRITER = """
import sys
from guildcore.cache.l3 import L3Store
s = L3Store(sys.argv[1], map_size=2**26)
i = 0
while True:
    s.set_many("agent", [(i.to_bytes(8, "big"), {"i": i, "pad": "x" * 200})])
    i += 1
    if i == int(sys.argv[2]):
        print("written", flush=True)
"""


def test_store_opens_clean_after_a_writer_is_killed(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    n = 300
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, str(n)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(30)
        if writer.stdout is not None:
            writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    s = L3Store(path, map_size=2**26)
    try:
        for i in range(n):
            assert s.get("agent", i.to_bytes(8, "big")) == {"i": i, "pad": "x" * 200}
        s.set("agent", b"after", 1)
        assert s.get("agent", b"after") == 1
        assert s.stats()["namespaces"]["agent"]["entries"] >= n + 1
    finally:
        s.close()


def test_reading_compressed_without_lz4_is_a_logged_miss_kept(
    store: L3Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from guildcore.cache import record

    store.set("agent", b"big", "text " * 5000)
    monkeypatch.setattr(record, "_lz4", None)
    with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
        assert store.get("agent", b"big") is None
    assert "lz4 package is not installed" in caplog.text and "kept it" in caplog.text
    monkeypatch.undo()
    assert store.get("agent", b"big") == "text " * 5000


def test_cap_policy_is_enforced_in_l3(tmp_path: Path) -> None:
    s = L3Store(str(tmp_path / "s"), map_size=2**24, policies={"few": CachePolicy(max_entries=2)})
    try:
        s.set_many("few", [(bytes([i]), i) for i in range(5)])
        assert s.stats()["namespaces"]["few"]["entries"] == 2
    finally:
        s.close()


def _filled_and_damaged(path: Path, how: str, n: int = 3000) -> None:
    s = L3Store(str(path), map_size=2**24, policies=dict(DEFAULT_POLICIES))
    s.set_many("result", [(i.to_bytes(16, "big"), b"v" * 100) for i in range(n)])
    s.set("agent", b"other", "kept in another database")
    s.close()
    assert lmdbdamage.damage_database(str(path), b"ns:result", lmdbdamage.DAMAGE[how]) > 1


_OPERATIONS: dict[str, Callable[[L3Store], object]] = {
    "lookup": lambda s: s.lookup("result", (5).to_bytes(16, "big")),
    "get_many": lambda s: s.get_many("result", [i.to_bytes(16, "big") for i in range(10)]),
    "set": lambda s: s.set("result", b"new", 1),
    "delete": lambda s: s.delete("result", (5).to_bytes(16, "big")),
    "clear": lambda s: s.clear("result"),
    "compact": lambda s: s.compact(),
    "entries": lambda s: list(s.entries("result")),
    "invalidate_tag": lambda s: s.invalidate_tag("t"),
}


@pytest.mark.parametrize("how", list(lmdbdamage.DAMAGE))
@pytest.mark.parametrize("operation", list(_OPERATIONS))
def test_damaged_pages_are_detected_and_the_store_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, operation: str
) -> None:
    path = tmp_path / "store"
    _filled_and_damaged(path, how)
    s = L3Store(str(path), map_size=2**24, policies=dict(DEFAULT_POLICIES))
    try:
        # Opening does not reach the damaged pages; the operation does.
        with caplog.at_level(logging.WARNING, logger="guildcore.cache"):
            _OPERATIONS[operation](s)
        if operation != "invalidate_tag":  # reaches only the index, which is intact
            assert "could not be used" in caplog.text and "started an empty one" in caplog.text
            assert len(list(path.glob("data.mdb.broken-*"))) == 1
            assert s.stats()["namespaces"]["result"]["entries"] <= 1  # fresh: nothing of the old
        s.set("result", b"after", "works")
        assert s.get("result", b"after") == "works"
    finally:
        s.close()


def test_a_store_another_agent_already_replaced_is_reopened_not_moved_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    _filled_and_damaged(path, "wrong page type")
    first = L3Store(str(path), map_size=2**24, policies=dict(DEFAULT_POLICIES))
    second = L3Store(str(path), map_size=2**24, policies=dict(DEFAULT_POLICIES))
    try:
        assert first.lookup("result", (1).to_bytes(16, "big")) is None  # moves it aside
        first.set("result", b"fresh", "written after the damage")
        # The second store still maps the damaged file; it finds it replaced.
        assert second.get_many("result", [(2).to_bytes(16, "big")]) == {}
        assert second.get("result", b"fresh") == "written after the damage"
        assert len(list(path.glob("data.mdb.broken-*"))) == 1
    finally:
        first.close()
        second.close()


def test_damaged_store_through_the_tiers_still_returns_results(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _filled_and_damaged(path, "garbage flags")
    with TieredCache(str(path), map_size=2**24) as c:
        assert c.get_many("result", [i.to_bytes(16, "big") for i in range(100)]) == {}
        c.set_many("result", [(i.to_bytes(16, "big"), i) for i in range(100)])
        c.evict_memory()
        assert c.get_many("result", [i.to_bytes(16, "big") for i in range(100)]) == {
            i.to_bytes(16, "big"): i for i in range(100)
        }


def test_two_caches_on_one_folder_in_one_process_share_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Guild's result cache and @cached's default cache: one environment, nothing moved aside."""
    path = str(tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="guildcore.cache"), TieredCache(path, map_size=2**24) as first:
        first.set("result", b"a", 1)
        with TieredCache(path, map_size=2**24) as second:
            assert second.get("result", b"a") == 1
            second.set("result", b"b", 2)
        first.evict_memory()
        assert first.get("result", b"b") == 2  # still open after the other closed
    assert caplog.text == ""
    assert list((tmp_path / "store").glob("data.mdb.broken-*")) == []


def test_sweep_goes_past_expiry_hints_of_namespaces_it_has_not_opened(tmp_path: Path) -> None:
    """Hints of a namespace with no database (or one opened elsewhere) must not stall the sweep."""
    import struct

    now = [1_000_000.0]
    s = L3Store(str(tmp_path / "store"), map_size=2**24, policies=dict(DEFAULT_POLICIES), clock=lambda: now[0])
    try:
        # Ten expiry hints, due first, of a namespace this store never opened.
        with s._lock, s._env.begin(write=True) as txn:
            for i in range(10):
                hint = b"e" + struct.pack(">d", now[0] - 100) + b"ghost\0" + bytes([i])
                txn.put(hint, b"", db=s._index)
        s.set("result", b"short", "expires", ttl_s=5)  # an expiry hint of its own, due later
        now[0] += 10
        for _ in range(5):
            s.sweep(limit=4)
        assert s.lookup("result", b"short") is None
        assert list(s.entries("result")) == []  # removed, not just unreadable
        with s._lock, s._env.begin() as txn:
            left = [k for k, _ in txn.cursor(db=s._index) if k.startswith(b"e")]
        assert left == []  # the ghost hints are gone too: their namespace has no database
    finally:
        s.close()
