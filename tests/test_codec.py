"""The codec round-trips what pickle round-trips, keeps native payloads off pickle,
and turns every bad frame into a SerializationError."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import pickle
import threading
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guildcore import SerializationError, codec
from guildcore.codec import (
    Kind,
    decode,
    decode_frame,
    encode,
    encode_checked,
    encode_frame,
    register_ext,
)

# ---------------------------------------------------------------- helpers


Point = collections.namedtuple("Point", "x y")


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


class Name(str):
    pass


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    tags: tuple[str, ...] = ()


def assert_same(got: Any, want: Any, path: str = "value") -> None:
    """Equal and of the same type, all the way down; nan equals nan."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, float):
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert list(got.keys()) == list(want.keys()), path
        for (gk, gv), (wk, wv) in zip(got.items(), want.items(), strict=True):
            assert_same(gk, wk, f"{path} key {wk!r}")
            assert_same(gv, wv, f"{path}[{wk!r}]")
        if isinstance(want, collections.defaultdict):
            assert got.default_factory is want.default_factory
    elif isinstance(want, (set, frozenset)):
        assert got == want, path
        by_value = {g: g for g in got}
        for w in want:
            assert_same(by_value[w], w, f"{path} item {w!r}")
    else:
        assert got == want, path


def roundtrip(value: Any) -> Any:
    return decode(encode(value))


# ---------------------------------------------------------------- strategies

surrogate_text = st.text(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
    max_size=8,
)
ints = st.one_of(st.integers(-(2**70), 2**70), st.integers(-(2**200), 2**200))
hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False),
    surrogate_text,
    st.binary(max_size=16),
    st.sampled_from(list(Color)),
    surrogate_text.map(Name),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple),
        st.frozensets(inner, max_size=4),
        st.builds(Point, inner, inner),
    ),
    max_leaves=8,
)
leaves = st.one_of(
    hashable_leaves,
    st.floats(),  # nan and inf too
    st.binary(max_size=16).map(bytearray),
    st.builds(User, st.text(max_size=5), st.lists(st.text(max_size=3), max_size=2).map(tuple)),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(hashables, inner, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
        st.dictionaries(st.text(max_size=4), inner, max_size=4).map(collections.OrderedDict),
        st.builds(Point, inner, inner),
    ),
    max_leaves=25,
)


# ---------------------------------------------------------------- properties


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_roundtrip_is_type_faithful(value: Any) -> None:
    assert_same(roundtrip(value), value)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_roundtrip_agrees_with_pickle(value: Any) -> None:
    assert_same(roundtrip(value), pickle.loads(pickle.dumps(value, protocol=5)))


# ---------------------------------------------------------------- each type


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        2**64 - 1,
        -(2**63),
        2**64,
        -(2**63) - 1,
        2**1000,
        -(2**1000),
        1.5,
        -0.0,
        float("inf"),
        float("-inf"),
        float("nan"),
        "",
        "héllo",
        "lone \udc80 surrogate",
        "\ud800",
        b"",
        b"\x00\xff",
        bytearray(b"abc"),
        bytearray(),
        (),
        (1,),
        (1, (2, (3,))),
        [1, [2, [3]]],
        set(),
        {1, "a", (2, 3)},
        frozenset({1, frozenset({2})}),
        {},
        {1: "int key", (1, 2): "tuple key", b"k": "bytes key", None: 0, 1.5: 2, frozenset(): 3},
        {"s": bytearray(b"x"), "t": (bytearray(b"y"),), "u": ["\udcff"]},
        Point(1, (2, 3)),
        collections.OrderedDict([("b", 1), ("a", 2)]),
        collections.defaultdict(list, {"a": [1]}),
        Color.GREEN,
        Name("sub"),
        User("ann", ("x",)),
        [bytearray(b"a")] * 40,
        list(range(1000)),
        [float(i) for i in range(100)] + [bytearray(b"late")],
        [str(i) for i in range(100)] + [bytearray(b"late")],
        [str(i) for i in range(100)] + ["\udc80"],
        {str(i): i for i in range(100)},
        {i: bytearray(b"v") for i in range(100)},
        msgpack.ExtType(1, b"\x90"),
        [msgpack.ExtType(7, b"not pickle")],
        {"k": msgpack.ExtType(5, b"")},
    ],
    ids=repr,
)
def test_each_type_roundtrips(value: Any) -> None:
    assert_same(roundtrip(value), value)


def test_memoryview_comes_back_as_bytes() -> None:
    assert_same(roundtrip(memoryview(b"abc")), b"abc")
    assert_same(roundtrip([memoryview(b"x")]), [b"x"])
    strided = memoryview(b"abcdef")[::2]  # not contiguous: msgpack cannot take it as is
    assert_same(roundtrip(strided), b"ace")
    assert_same(roundtrip({"m": strided}), {"m": b"ace"})


def test_cycles_and_deep_nesting_go_through_pickle() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    back = roundtrip(loop)
    assert back[1] is back
    deep: Any = []
    for _ in range(450):  # within msgpack's nesting limit of 511
        deep = [{"k": deep}]
    assert roundtrip(deep) == deep
    deeper: Any = []
    for _ in range(2000):  # deeper than msgpack and pickle go: an error, as with pickle
        deeper = [deeper]
    with pytest.raises(SerializationError, match=r"cannot encode a value of type builtins.list"):
        encode(deeper)
    for depth in (codec.MAX_EXT_DEPTH, codec.MAX_EXT_DEPTH + 1, 300):
        deep_tuple: Any = 0
        for _ in range(depth):
            deep_tuple = ({1: deep_tuple},)
        data, pickled = encode_checked(deep_tuple)
        assert pickled is (depth > codec.MAX_EXT_DEPTH)
        assert decode(data) == deep_tuple


# ---------------------------------------------------------------- pickle stays off


NATIVE_PAYLOADS = [
    {"name": "ann", "n": 3, "ok": True, "x": 1.5, "blob": b"\x00", "none": None},
    list(range(1000)),
    [{"a": [1, 2]}, {"b": {"c": "d"}}],
    ("args", 1, 2.0, b"3"),
    {(1, 2): {3, 4}, "f": frozenset({"x"})},
    [2**100, -(2**100), bytearray(b"ba"), "\udc80"],
    {1: "non-str keys", None: "", 2.5: [()]},
]


@pytest.mark.parametrize("value", NATIVE_PAYLOADS, ids=repr)
def test_native_payloads_never_touch_pickle(value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("pickle.dumps called for a native payload")

    data, pickled = encode_checked(value)
    assert pickled is False
    monkeypatch.setattr(pickle, "dumps", refuse)  # codec imports it where it pickles
    assert encode(value) == data
    assert_same(decode(data, allow_pickle=False), value)


@pytest.mark.parametrize(
    "value", [Point(1, 2), [1, {"k": Color.RED}], (User("a"),), {"od": collections.OrderedDict()}]
)
def test_encode_checked_reports_pickle(value: Any) -> None:
    data, pickled = encode_checked(value)
    assert pickled is True
    assert_same(decode(data), value)


def test_allow_pickle_false_refuses_pickled_values() -> None:
    data = encode([1, (User("eve"),)])
    with pytest.raises(SerializationError, match=r"refusing to unpickle"):
        decode(data, allow_pickle=False)
    with pytest.raises(SerializationError, match=r"refusing to unpickle"):
        decode_frame(encode_frame(Kind.RESULT, 1, User("eve")), allow_pickle=False)


# ---------------------------------------------------------------- unencodable


def _gen() -> Any:
    yield 1


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (threading.Lock(), "lock"),
        (_gen(), "generator"),
        (lambda x: x, "function"),
        ([1, {"deep": (threading.Lock(),)}], "lock"),
    ],
    ids=["lock", "generator", "lambda", "nested-lock"],
)
def test_unencodable_values_name_the_type(value: Any, type_name: str) -> None:
    with pytest.raises(
        SerializationError,
        match=rf"cannot encode a value of type \S*{type_name}.*; send something picklable",
    ):
        encode(value)
    with pytest.raises(SerializationError):
        encode_frame(Kind.RESULT, 1, value)


# ---------------------------------------------------------------- frames


def test_frames_roundtrip_every_kind() -> None:
    for kind in Kind:
        data = encode_frame(kind, 42, "mod:fn", (1, 2), {"k": {3}})
        got_kind, task_id, fields = decode_frame(data)
        assert got_kind is kind
        assert task_id == 42
        assert_same(fields, ["mod:fn", (1, 2), {"k": {3}}])
    assert decode_frame(encode_frame(Kind.SHUTDOWN, 0)) == (Kind.SHUTDOWN, 0, [])


def test_kind_values_are_stable() -> None:
    assert {k.name: k.value for k in Kind} == {
        "TASK": 1,
        "RESULT": 2,
        "ERROR": 3,
        "CHUNK": 4,
        "END": 5,
        "CANCEL": 6,
        "STATS": 7,
        "SHUTDOWN": 8,
        "READY": 9,
        "CREDIT": 10,
        "STARTED": 11,
        "WITHDRAW": 12,
        "WITHDRAWN": 13,
        "TRIM": 14,
        "CACHING": 15,
    }


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"cannot decode 0 bytes"),
        (b"\xc1", r"cannot decode"),
        (msgpack.packb({"a": 1}), r"expected a msgpack array, found dict"),
        (msgpack.packb(5), r"expected a msgpack array, found int"),
        (msgpack.packb([]), r"found 0 item"),
        (msgpack.packb([1]), r"found 1 item"),
        (msgpack.packb([999, 1]), r"unknown frame kind 999"),
        (msgpack.packb([-1, 1]), r"unknown frame kind -1"),
        (msgpack.packb(["TASK", 1]), r"unknown frame kind 'TASK'"),
        (msgpack.packb([True, 1]), r"unknown frame kind True"),
        (msgpack.packb([1.0, 1]), r"unknown frame kind 1.0"),
        (msgpack.packb([1, "7"]), r"task id should be an int, found str"),
        (msgpack.packb([1, None]), r"task id should be an int, found NoneType"),
        (msgpack.packb([1, True]), r"task id should be an int, found bool"),
        (msgpack.packb([1, 2]) + b"\x00", r"cannot decode"),  # trailing bytes
        (msgpack.packb([1, 2, msgpack.ExtType(99, b"")]), r"unknown msgpack ext type 99"),
        (msgpack.packb([1, 2, msgpack.ExtType(1, b"\x05")]), r"ext payload should hold a list"),
        (msgpack.packb([1, 2, msgpack.ExtType(1, b"\x91")]), r"cannot decode"),
        (msgpack.packb([1, 2, msgpack.ExtType(2, msgpack.packb([[1]]))]), r"unhashable"),
        (msgpack.packb([1, 2, msgpack.ExtType(6, b"\xff")]), r"cannot decode"),
        (msgpack.packb([1, 2, msgpack.ExtType(7, b"\x80\x05trunc")]), r"cannot decode"),
        (msgpack.packb([1, 2, {(): 1}]), r"cannot decode"),  # unhashable map key
        (b"\xdd\xff\xff\xff\xff", r"cannot decode"),  # array claiming 4 billion items
    ],
)
def test_malformed_frames_raise_serialization_error(data: bytes, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        decode_frame(data)


def test_every_truncation_of_a_valid_frame_raises() -> None:
    data = encode_frame(
        Kind.TASK,
        7,
        "mod:fn",
        (1, "\udc80", bytearray(b"x"), 2**90),
        {"k": {1, 2}, (1,): [b"\x00" * 40, 1.5]},
        User("u"),
    )
    for end in range(len(data)):
        with pytest.raises(SerializationError):
            decode_frame(data[:end])


def test_nested_ext_recursion_is_a_serialization_error() -> None:
    items = msgpack.packb([])
    for _ in range(5000):  # tuple in tuple in tuple ... far past the recursion limit
        items = msgpack.packb([msgpack.ExtType(1, items)])
    with pytest.raises(SerializationError, match=r"nested deeper than 32 ext levels"):
        decode_frame(msgpack.packb([1, 2, msgpack.ExtType(1, items)]))


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        kind, task_id, fields = decode_frame(data, allow_pickle=False)
    except SerializationError:
        return
    assert isinstance(kind, Kind) and type(task_id) is int and type(fields) is list


@settings(max_examples=300)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=8), st.integers(0, 10**6))
def test_corrupted_frames_never_raise_anything_else(flips: list[int], seed: int) -> None:
    data = bytearray(encode_frame(Kind.RESULT, 3, ("x", 2**70, {1: [b"y"]}), {"a", "b"}))
    for i, byte in enumerate(flips):
        data[(seed + i * 7919) % len(data)] = byte
    try:
        decode_frame(bytes(data), allow_pickle=False)
    except SerializationError:
        pass


# ---------------------------------------------------------------- register_ext


class _Ref:
    def __init__(self, name: str, payload: Any) -> None:
        self.name = name
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ref) and (self.name, self.payload) == (other.name, other.payload)

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture
def ref_ext() -> Any:
    code = 30
    # to_bytes encodes a nested value: the codec must be re-entrant.
    register_ext(
        code,
        _Ref,
        lambda r: encode((r.name, r.payload)),
        lambda b: _Ref(*decode(b)),
    )
    yield code
    codec._ENCODERS.pop(_Ref)
    codec._DECODERS.pop(code)
    codec._REGISTERED.pop(code)


def test_register_ext_roundtrips_without_pickle(ref_ext: int) -> None:
    value = [_Ref("ctx", (1, bytearray(b"x"))), {"r": _Ref("other", {2})}]
    data, pickled = encode_checked(value)
    assert pickled is False
    assert_same(decode(data, allow_pickle=False), value)
    assert msgpack.unpackb(encode(_Ref("a", 1)), ext_hook=lambda c, d: c) == ref_ext


def test_register_ext_checks_codes_and_classes(ref_ext: int) -> None:
    with pytest.raises(ValueError, match=r"outside the range other modules may use \(16..31\)"):
        register_ext(7, _Ref, bytes, _Ref)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"already registered for _Ref"):
        register_ext(ref_ext, User, lambda u: b"", lambda b: User(""))
    with pytest.raises(ValueError, match=r"tuple already has an encoding"):
        register_ext(31, tuple, lambda t: b"", lambda b: ())


# ---------------------------------------------------------------- threads


def test_concurrent_encoding_from_threads() -> None:
    errors: list[BaseException] = []
    values = [{"t": i, "data": list(range(i * 10)), "tup": (i, bytearray(b"b"))} for i in range(8)]

    def work(value: Any) -> None:
        try:
            for _ in range(300):
                assert_same(roundtrip(value), value)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_failed_encode_leaves_the_packer_usable() -> None:
    with pytest.raises(SerializationError):
        encode([1, 2, threading.Lock()])
    assert_same(roundtrip([1, 2, (3,)]), [1, 2, (3,)])


def test_big_bytes_are_plain_msgpack_bin() -> None:
    blob = bytes(range(256)) * 1024  # 256 KiB: framed by hand
    data = encode(blob)
    assert msgpack.unpackb(data) == blob
    assert_same(decode(data), blob)
    assert_same(roundtrip([blob, (blob,)]), [blob, (blob,)])


def test_short_tuples_with_surrogates_take_the_general_path() -> None:
    value = ("ok", "\udc80", 1)
    data, pickled = encode_checked(value)
    assert pickled is False
    assert_same(decode(data), value)


def test_a_packer_that_made_a_huge_frame_is_not_kept() -> None:
    encode([1])  # at least one idle packer in this thread
    idle = len(codec._state.free)
    encode([b"x" * (2 << 20)])  # 2 MiB through one packer, whose buffer grew to match
    assert len(codec._state.free) == idle - 1
    assert roundtrip([1]) == [1]


def test_frame_head_reads_kind_and_task_id_without_the_fields() -> None:
    frame = codec.encode_frame(Kind.TASK, 2**40, 1, "m:f", [b"x" * 100])
    assert codec.frame_head(frame) == (Kind.TASK, 2**40)
    broken_fields = b"\x93\x01\x09\xc1"  # [TASK, 9, <0xc1: never valid msgpack>]
    assert codec.frame_head(broken_fields) == (Kind.TASK, 9)
    with pytest.raises(SerializationError):
        codec.decode_frame(broken_fields)
    assert codec.frame_head(codec.encode_frame(Kind.CANCEL, 7)) == (Kind.CANCEL, 7)
    for bad in (b"", b"\x90", b"\x91\x01", codec.encode(["x", 1]), codec.encode([1, "x"]), codec.encode(5)):
        with pytest.raises(SerializationError, match="bad frame"):
            codec.frame_head(bad)
