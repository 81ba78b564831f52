"""Keys are canonical and type-aware; fingerprints follow code, not line numbers or hash seeds."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guildcore import SerializationError
from guildcore.keys import fingerprint, fn_ref, hex_key, key_of, resolve_ref

REPO = Path(__file__).resolve().parent.parent


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclasses.dataclass
class Job:
    name: str
    sizes: list[int]


# ---------------------------------------------------------------- key_of


def test_key_is_16_bytes_and_hex_is_32_digits() -> None:
    assert len(key_of("a", 1)) == 16
    assert hex_key("a", 1) == key_of("a", 1).hex()


@pytest.mark.parametrize(
    "values",
    [
        [
            1,
            1.0,
            True,
            "1",
            b"1",
            bytearray(b"1"),
            (1,),
            [1],
            {1},
            frozenset({1}),
            2**64,
            None,
            False,
            0,
        ],
        [(), [], {}, set(), frozenset(), "", b""],
        [0.0, -0.0, float("nan"), float("inf")],
        [("a", "b"), ("ab",), ["a", "b"], ("a", ("b",))],
        [{"a": 1}, {"a": 1.0}, {"a": True}, {1: "a"}, [("a", 1)]],
        [Mode.FAST, Mode.SLOW, "fast"],
        [Job("a", [1]), Job("a", [2]), {"name": "a", "sizes": [1]}],
    ],
)
def test_distinct_values_get_distinct_keys(values: list[Any]) -> None:
    keys = [key_of(v) for v in values]
    assert len(set(keys)) == len(keys)


def test_parts_are_not_concatenated() -> None:
    assert key_of("ab", "c") != key_of("a", "bc")
    assert key_of("a", "b") != key_of(("a", "b"))
    assert key_of() != key_of(None)


def test_order_of_dicts_and_sets_does_not_matter() -> None:
    a = {"x": 1, "y": [1, {"p": 1, "q": 2}], 3: frozenset({"m", "n"})}
    b = {3: frozenset({"n", "m"}), "y": [1, {"q": 2, "p": 1}], "x": 1}
    assert key_of(a) == key_of(b)
    assert key_of({"s", "t", "u"}) == key_of({"u", "t", "s"})
    assert key_of([1, 2]) != key_of([2, 1])  # sequences keep their order


def test_nan_has_one_key_and_memoryview_keys_like_bytes() -> None:
    assert key_of(float("nan")) == key_of(-float("nan"))
    assert key_of(memoryview(b"abc")) == key_of(b"abc")


def test_values_without_canonical_form_fall_back_to_pickle() -> None:
    point = collections.namedtuple("point", "x y")  # local class: pickle fails
    with pytest.raises(SerializationError, match=r"cannot make a key from a value of type"):
        key_of(point(1, 2))
    assert key_of(collections.OrderedDict(a=1)) == key_of(collections.OrderedDict(a=1))
    assert key_of(collections.OrderedDict(a=1)) != key_of({"a": 1})


def test_self_containing_values_raise_serialization_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match=r"nested too deeply or contains itself"):
        key_of(loop)


hashable = st.one_of(st.integers(), st.text(max_size=5), st.binary(max_size=5), st.booleans())


@settings(max_examples=200)
@given(st.dictionaries(hashable, st.lists(hashable, max_size=3), max_size=6), st.randoms())
def test_key_does_not_depend_on_insertion_order(d: dict[Any, Any], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert key_of(dict(items)) == key_of(d)
    assert key_of(set(d)) == key_of(set(reversed(list(d))))


# ---------------------------------------------------------------- fingerprint


def top_level(x: int, y: int = 2) -> list[int]:
    return [i * y for i in range(x)]


def _compile(source: str) -> Any:
    namespace: dict[str, Any] = {"__name__": "fake_module"}
    exec(compile(textwrap.dedent(source), "fake_module.py", "exec"), namespace)
    return namespace["f"]


def test_fingerprint_names_module_and_qualname() -> None:
    fp = fingerprint(top_level)
    module, _, rest = fp.partition(":")
    assert module == __name__
    assert rest.startswith("top_level@") and len(rest.split("@")[1]) == 32


def test_fingerprint_ignores_line_numbers_and_file_name() -> None:
    a = _compile("def f(x):\n    return x + 1\n")
    namespace: dict[str, Any] = {"__name__": "fake_module"}
    exec(compile("\n\n\n\ndef f(x):\n    return x + 1\n", "elsewhere.py", "exec"), namespace)
    assert fingerprint(a) == fingerprint(namespace["f"])


@pytest.mark.parametrize(
    "changed",
    [
        "def f(x):\n    return x + 2\n",  # a constant
        "def f(x):\n    return x - 1\n",  # an operator
        "def f(x):\n    return y + 1\n",  # a name
        "def f(x, z=1):\n    return x + 1\n",  # a parameter
        "def f(x=5):\n    return x + 1\n",  # a default
        "def f(*, x=5):\n    return x + 1\n",  # a keyword default
        "def f(x):\n    g = lambda: x + 1\n    return g()\n",  # a nested function
        "def f(x):\n    return [x + 1 for _ in 'ab']\n",  # a comprehension
    ],
)
def test_fingerprint_changes_with_the_code(changed: str) -> None:
    base = _compile("def f(x):\n    return x + 1\n")
    assert fingerprint(base) != fingerprint(_compile(changed))


def test_fingerprint_sees_nested_code_changes() -> None:
    a = _compile("def f(x):\n    def g():\n        return x * 2\n    return g\n")
    b = _compile("def f(x):\n    def g():\n        return x * 3\n    return g\n")
    assert fingerprint(a) != fingerprint(b)


def test_fingerprint_sees_closure_values() -> None:
    def make(n: int) -> Any:
        def scaled(x: int) -> int:
            return x * n

        return scaled

    assert fingerprint(make(2)) == fingerprint(make(2))
    assert fingerprint(make(2)) != fingerprint(make(3))


def test_fingerprint_is_cached_and_follows_reassigned_code() -> None:
    f = _compile("def f(x):\n    return x + 1\n")
    first = fingerprint(f)
    assert fingerprint(f) is first  # the cached string
    f.__code__ = _compile("def f(x):\n    return x + 9\n").__code__
    assert fingerprint(f) != first
    f.__defaults__ = (1,)
    assert fingerprint(f) != first


def test_fingerprint_of_callables_without_code() -> None:
    assert fingerprint(len) == "builtins:len"
    assert fingerprint("".join) == "builtins:str.join"
    assert fingerprint(dict) == "builtins:dict"
    p1 = fingerprint(functools.partial(top_level, 3))
    assert p1.startswith(fingerprint(top_level) + "+partial@")
    assert p1 == fingerprint(functools.partial(top_level, 3))
    assert p1 != fingerprint(functools.partial(top_level, 4))
    assert p1 != fingerprint(functools.partial(top_level, x=3))


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return x * self.factor

    def method(self, x: int) -> int:
        return x


def test_fingerprint_of_methods_and_callable_instances() -> None:
    assert fingerprint(Scaler(1).method) == fingerprint(Scaler.method)
    assert fingerprint(Scaler(2)) == fingerprint(Scaler(2))
    assert fingerprint(Scaler(2)) != fingerprint(Scaler(3))
    assert fingerprint(Scaler(2)).startswith(f"{__name__}:Scaler@")


FINGERPRINT_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import test_keys
from guildcore.keys import fingerprint, hex_key
print(json.dumps([
    fingerprint(test_keys.top_level),
    fingerprint(test_keys._compile("def f():\\n    return frozenset({{'a', 'b', 'c'}}), {{'k': 1}}\\n")),
    hex_key({{"a", "b", "c", "d"}}, {{"x": {{"y", "z"}}}}, frozenset({{("p", 1), ("q", 2)}})),
]))
"""


def test_fingerprints_and_keys_are_stable_across_hash_seeds() -> None:
    script = FINGERPRINT_SCRIPT.format(tests=str(REPO / "tests"))
    results = []
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        results.append(json.loads(proc.stdout))
    assert results[0] == results[1] == results[2]
    assert results[0][0] == fingerprint(top_level).replace(__name__ + ":", "test_keys:")


def test_fingerprint_is_thread_safe() -> None:
    funcs = [_compile(f"def f(x):\n    return x + {i}\n") for i in range(20)]
    expected = [fingerprint(f) for f in funcs]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                assert [fingerprint(f) for f in funcs] == expected
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- fn_ref / resolve_ref


def test_fn_ref_roundtrips_through_resolve_ref() -> None:
    assert fn_ref(top_level) == f"{__name__}:top_level"
    assert resolve_ref("os.path:join") is os.path.join
    assert resolve_ref("collections:OrderedDict.fromkeys") == collections.OrderedDict.fromkeys
    assert fn_ref(Scaler.method) == f"{__name__}:Scaler.method"
    assert fn_ref(Scaler(1).method) == f"{__name__}:Scaler.method"
    assert resolve_ref(fn_ref(json.dumps)) is json.dumps


def test_fn_ref_refuses_objects_without_a_name() -> None:
    with pytest.raises(SerializationError, match=r"has no __module__ and __qualname__"):
        fn_ref(functools.partial(top_level, 1))


def test_resolve_ref_explains_lambdas_and_local_functions() -> None:
    def local() -> None:
        pass

    for fn in (lambda: None, local):
        with pytest.raises(
            SerializationError,
            match=r"lambdas and functions defined inside other functions.*cloudpickle",
        ):
            resolve_ref(fn_ref(fn))


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("no_colon", r"bad function reference 'no_colon'; expected 'module:qualname'"),
        (":f", r"bad function reference"),
        ("os:", r"bad function reference"),
        ("no_such_module_xyz:f", r"importing 'no_such_module_xyz' failed \(ModuleNotFoundError"),
        ("os.path:nope", r"os.path has no attribute path 'nope' \(missing 'nope'\)"),
        ("os:path.nope.deeper", r"missing 'nope'"),
        ("os:sep", r"it names a str, not a callable"),
    ],
)
def test_resolve_ref_errors(ref: str, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        resolve_ref(ref)
