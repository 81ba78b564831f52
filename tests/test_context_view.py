"""Context segments in one process: round trips, lazy decoding, O(1) lookup,
zero-copy buffers, the copy-on-write overlay, the task slot and bad input."""

from __future__ import annotations

import decimal
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guildcore import codec
from guildcore.context import (
    ContextHandle,
    ContextRef,
    ContextView,
    TaskContext,
    attach,
    current,
    detach,
    detach_all,
    enter_task_context,
    exit_task_context,
    reset_current,
    set_current,
    task_scope,
    write_context,
)
from guildcore.context import view as view_module
from guildcore.errors import ContextError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def share() -> Iterator[Any]:
    """write_context + attach, with everything detached and unlinked afterwards."""
    handles: list[ContextHandle] = []

    def _share(mapping: dict[Any, Any], generation: int = 1) -> ContextView:
        handle = write_context(mapping, generation=generation)
        handles.append(handle)
        return attach(handle.ref)

    yield _share
    detach_all()
    for handle in handles:
        handle.unlink()


PLAIN_VALUES: dict[Any, Any] = {
    "none": None,
    "true": True,
    "int": -42,
    "bigint": 2**100,
    "float": 3.5,
    "str": "héllo",
    "list": [1, "two", [3.0]],
    "tuple": (1, (2, 3)),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a"}),
    "dict": {1: "int key", ("t", 1): "tuple key", "nested": {"x": [b"raw"]}},
    "decimal": decimal.Decimal("1.10"),
    "empty": {},
    7: "int key at top level",
    ("a", 1): "tuple key at top level",
    b"bk": "bytes key",
    None: "None key",
    2.5: "float key",
}


def test_plain_values_round_trip_with_their_types(share: Any) -> None:
    view = share(PLAIN_VALUES)
    assert len(view) == len(PLAIN_VALUES)
    assert list(view) == list(PLAIN_VALUES)
    for key, expected in PLAIN_VALUES.items():
        got = view[key]
        assert got == expected and type(got) is type(expected), key
    assert dict(view.items()) == PLAIN_VALUES


def test_bytes_like_values_come_back_as_readonly_memoryviews(share: Any) -> None:
    values = {
        "bytes": b"abc" * 1000,
        "bytearray": bytearray(b"xyz"),
        "empty": b"",
        "mv": memoryview(b"view"),
    }
    view = share(values)
    for key, expected in values.items():
        got = view[key]
        assert isinstance(got, memoryview) and got.readonly
        assert got.tobytes() == bytes(expected)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(1000, dtype=np.float64),
        np.arange(24, dtype=np.int8).reshape(2, 3, 4),
        np.array([1 + 2j, 3j], dtype=np.complex128),
        np.array([True, False]),
        np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        np.array(["ab", "cde"], dtype="<U3"),
        np.asfortranarray(np.arange(12, dtype=">i4").reshape(3, 4)),
        np.arange(20)[::3],
        np.array(5.0),
        np.empty((0, 3)),
    ],
    ids=[
        "f8",
        "i1-3d",
        "c16",
        "bool",
        "datetime",
        "unicode",
        "fortran-bigendian",
        "strided",
        "0d",
        "empty",
    ],
)
def test_numpy_arrays_round_trip_zero_copy(share: Any, array: Any) -> None:
    view = share({"a": array})
    got = view["a"]
    assert type(got) is np.ndarray and got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    assert not got.flags.writeable and got.flags.c_contiguous


def test_arrays_the_segment_cannot_hold_raw_go_through_the_codec(share: Any) -> None:
    objects = np.array([{"a": 1}, None, "x"], dtype=object)
    structured = np.array([(1, 2.0)], dtype=[("i", "i4"), ("f", "f8")])
    view = share({"objects": objects, "structured": structured})
    assert list(view["objects"]) == list(objects)
    assert view["structured"].dtype == structured.dtype
    np.testing.assert_array_equal(view["structured"], structured)


def test_values_decode_lazily_once_per_generation(share: Any) -> None:
    view = share({"a": [1, 2, 3], "b": {"x": 1}, "c": b"raw"})
    assert view.decode_count == 0
    assert len(view) == 3 and "a" in view and "zz" not in view and list(view) == ["a", "b", "c"]
    assert view.decode_count == 0
    first = view["a"]
    assert view.decode_count == 1
    assert view["a"] is first
    assert view.decode_count == 1
    assert view.get("missing") is None and view.decode_count == 1


def test_lookup_in_a_million_keys_decodes_one_value() -> None:
    mapping = {f"key-{i}": i for i in range(1_000_000)}
    handle = write_context(mapping, generation=1)
    try:
        view = attach(handle.ref)
        assert view["key-777777"] == 777777
        assert view.decode_count == 1
        probes = [f"key-{i * 331 % 1_000_000}" for i in range(5000)]
        start = time.perf_counter()
        for key in probes:
            view[key]
        per_lookup_s = (time.perf_counter() - start) / len(probes)
        assert per_lookup_s < 200e-6  # generous: about 4 us here
        assert "key-1000000" not in view
    finally:
        detach_all()
        handle.unlink()


def _segment_range(view: ContextView) -> tuple[int, int]:
    whole = np.frombuffer(view._mv, dtype=np.uint8)
    start = whole.__array_interface__["data"][0]
    return start, start + whole.nbytes


def test_buffers_are_zero_copy_views_of_the_segment(share: Any) -> None:
    view = share({"blob": b"\x01" * 4096, "arr": np.ones(1024)})
    start, end = _segment_range(view)
    blob = view["blob"]
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        blob[0] = 2
    blob_addr = np.frombuffer(blob, dtype=np.uint8).__array_interface__["data"][0]
    assert start <= blob_addr < end and blob_addr % 64 == 0
    arr = view["arr"]
    assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 5.0
    arr_addr = arr.__array_interface__["data"][0]
    assert start <= arr_addr and arr_addr + arr.nbytes <= end and arr_addr % 64 == 0
    del blob, arr


def test_overlay_writes_and_deletes_stay_in_one_task(share: Any) -> None:
    view = share({"a": 1, "b": 2})
    one, two = view.overlay(), view.overlay()
    assert isinstance(one, TaskContext)
    one["a"] = 100
    one["new"] = "only here"
    del one["b"]
    assert one["a"] == 100 and one["new"] == "only here"
    with pytest.raises(KeyError):
        one["b"]
    assert "b" not in one and sorted(one) == ["a", "new"] and len(one) == 2
    with pytest.raises(KeyError):
        del one["b"]
    assert dict(two) == {"a": 1, "b": 2}
    assert dict(view) == {"a": 1, "b": 2}
    one["b"] = 3  # re-set after delete
    assert one["b"] == 3 and len(one) == 3
    del one["a"]  # set in the overlay and present in the segment: gone for this task
    assert "a" not in one and view["a"] == 1


def test_overlay_cannot_write_into_zero_copy_buffers(share: Any) -> None:
    view = share({"blob": b"abc", "arr": np.zeros(4)})
    ctx = view.overlay()
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        ctx["blob"][0] = 1
    with pytest.raises(ValueError, match="read-only"):
        ctx["arr"][:] = 1
    ctx["arr"] = ctx["arr"].copy()  # the documented way: copy into the overlay
    ctx["arr"][:] = 1
    assert view["arr"].sum() == 0


def test_attach_is_cached_per_generation_and_detach_unmaps(share: Any) -> None:
    view = share({"a": 1})
    assert attach(view.ref) is view
    assert detach(view.name) is True
    assert view.closed
    with pytest.raises(ContextError, match="was detached in this agent"):
        view["a"]
    again = attach(view.ref)
    assert again is not view and again["a"] == 1


def test_detach_keeps_the_mapping_while_a_task_holds_a_buffer(share: Any) -> None:
    view = share({"blob": b"kept"})
    blob = view["blob"]
    assert detach(view.name) is False  # still referenced: unmapped when blob goes
    assert blob.tobytes() == b"kept"
    del blob


def test_only_a_few_generations_stay_attached(share: Any) -> None:
    views = [share({"g": g}, generation=g) for g in range(1, view_module.MAX_ATTACHED + 3)]
    assert view_module.attached_names() == [v.name for v in views[-view_module.MAX_ATTACHED :]]
    assert views[0].closed and not views[-1].closed


def test_context_ref_travels_through_codec_and_pickle() -> None:
    ref = ContextRef("guild_1_2_abcd", 2, 4096)
    assert codec.decode(codec.encode(("arg", ref))) == ("arg", ref)
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_context_ref_is_an_immutable_value() -> None:
    ref = ContextRef("guild_1_2_abcd", 2, 4096)
    same, other = ContextRef("guild_1_2_abcd", 2, 4096), ContextRef("guild_1_3_abcd", 3, 4096)
    assert ref == same and hash(ref) == hash(same) and ref != other
    assert len({ref, same, other}) == 2
    assert repr(ref) == "ContextRef(name='guild_1_2_abcd', generation=2, size=4096)"
    with pytest.raises(AttributeError, match="read-only"):
        ref.generation = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="read-only"):
        del ref.name
    assert not hasattr(ref, "__dict__")


def test_current_context_slot(share: Any) -> None:
    with pytest.raises(
        ContextError, match=r"^no context is shared: call g.share\(mapping\) first$"
    ):
        current()
    view = share({"a": 1})
    token = set_current(view)
    assert current() is view
    reset_current(token)
    with task_scope(view.ref) as ctx:
        assert isinstance(ctx, TaskContext) and current() is ctx and current()["a"] == 1
        ctx["a"] = 2
    with task_scope(view.ref) as ctx:
        assert current()["a"] == 1  # a fresh overlay per task
    with task_scope(None), pytest.raises(ContextError):
        current()


def test_agent_enters_and_exits_a_task_context(share: Any) -> None:
    view = share({"a": 1})
    token = enter_task_context(view.ref)
    try:
        ctx = current()
        assert isinstance(ctx, TaskContext) and ctx.base is view and ctx["a"] == 1
    finally:
        exit_task_context(token)
    with pytest.raises(ContextError):
        current()


def test_unencodable_value_names_the_key() -> None:
    with pytest.raises(
        ContextError, match=r"^context value for key 'bad' \(function\) cannot be encoded: "
    ):
        write_context({"ok": 1, "bad": lambda: 1}, generation=1)


def test_unencodable_key_is_named() -> None:
    lock = threading.Lock()
    with pytest.raises(
        ContextError,
        match=r"^context key <unlocked _thread.lock object at .*> \(lock\) cannot be encoded",
    ):
        write_context({lock: 1}, generation=1)


def test_too_big_for_dev_shm_says_both_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tiny:
        f_bavail = 10
        f_frsize = 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Tiny)
    with pytest.raises(ContextError) as info:
        write_context({"blob": b"x" * 100_000}, generation=1)
    assert str(info.value) == (
        "context needs 100.3 kB (100288 bytes) of shared memory but /dev/shm has only 41.0 kB "
        "(40960 bytes) free; share less data, or enlarge /dev/shm (docker: --shm-size)"
    )


def test_attaching_a_released_generation_says_what_happened() -> None:
    handle = write_context({"a": 1}, generation=3)
    handle.unlink()
    with pytest.raises(ContextError) as info:
        attach(handle.ref)
    assert str(info.value).startswith(
        f"context generation 3 (segment {handle.name}) is gone: it was replaced by a newer "
        "g.share() and released"
    )


def test_plain_contexts_never_import_numpy() -> None:
    code = (
        "import sys\n"
        "from guildcore.context import write_context, attach, detach_all\n"
        "h = write_context({'a': [1, 2], 'b': b'raw'}, generation=1)\n"
        "v = attach(h.ref); assert v['a'] == [1, 2] and bytes(v['b']) == b'raw'\n"
        "detach_all(); h.unlink()\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "False", out.stderr


def test_a_segment_that_is_not_a_context_is_refused() -> None:
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=f"guild_{os.getpid()}_9_feedf00d", create=True, size=4096)
    try:
        with pytest.raises(
            ContextError,
            match=r"^segment guild_\d+_9_feedf00d is not a guildcore context of format 1",
        ):
            attach(ContextRef(shm.name, 9, 4096))
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.parametrize("big", [False, True], ids=["digest-inline", "digest-beside-writes"])
def test_digest_is_the_xxh3_of_the_segment_after_its_header(big: bool) -> None:
    import xxhash

    from guildcore.context import layout, writer

    size = writer.PARALLEL_DIGEST_BYTES + 12_345 if big else 1000
    mapping = {
        "blob": os.urandom(size),
        "array": np.arange(1000, dtype=np.float64),
        "plain": {"k": [1, 2, 3]},
    }
    handle = write_context(mapping, generation=1)
    again = write_context(mapping, generation=2)
    try:
        with open(f"/dev/shm/{handle.name}", "rb") as f:
            segment = f.read(handle.size)
        assert handle.digest == xxhash.xxh3_128(segment[layout.HEADER_SIZE :]).digest()
        assert again.digest == handle.digest  # same content, same digest
    finally:
        handle.unlink()
        again.unlink()


def test_a_failing_digest_beside_the_writes_fails_the_share() -> None:
    from guildcore.context import writer

    class Broken:
        def update(self, data: object) -> None:
            raise MemoryError("digest failed")

        def digest(self) -> bytes:
            return b"partial"

    size = writer.PARALLEL_DIGEST_BYTES
    data = memoryview(bytes(size))
    target = memoryview(bytearray(size))
    with pytest.raises(MemoryError, match="digest failed"):
        writer._write_and_digest(-1, target, [(0, data)], Broken(), [data])
    assert bytes(target[:16]) == bytes(16)  # the writes themselves ran
