"""Canonical keys for values and functions, and functions sent by reference.

This module covers:
- ``key_of(*parts)``: a 16-byte xxh3-128 digest of a canonical encoding of
  the parts, the same in every process and run. Dict and set order do not
  matter; types do: ``1``, ``1.0`` and ``True`` differ, as do ``(1,)`` and
  ``[1]``, ``b"a"`` and ``"a"``.
- ``fingerprint(fn)``: names a function's code, so a cached result is never
  served for code that changed.
- ``fn_ref(fn)`` / ``resolve_ref(ref)``: ``"module:qualname"`` and back.

It does not cover cache namespaces or context generations; callers pass them
as parts. It imports nothing of guildcore's but ``errors``.

Canonical encoding: each value is a one-byte type tag, then a length or
fixed-size field, then the payload, so no two values share an encoding::

    N None     T/F bool     i int (8 bytes)     I int (length + bytes)
    f float    s str        b bytes/memoryview  B bytearray
    ( tuple    [ list       { dict (pairs sorted)   < set  > frozenset (sorted)
    E enum member (type ref + name)   D dataclass (type ref + fields)
    c code     F function (fingerprint)          P anything else (type + pickle)

Caveat of ``P``: values with no canonical form above (instances of user
classes, subclasses of builtins other than enums and dataclasses) fall back
to pickle, as the codec does for them. Two equal
such values can then get different keys if their pickles differ (a dict
attribute filled in a different order, a set of str whose order depends on
PYTHONHASHSEED). That costs a cache miss, never a wrong hit.
"""

from __future__ import annotations

import enum
import functools
import math
import struct
import types
import weakref
from collections.abc import Callable

import xxhash

from guildcore import _refs
from guildcore.errors import SerializationError

# A Guild's first map names its function through ``fingerprint``: typing,
# dataclasses (with inspect and ast) and pickle cost that map ~10 ms of
# import, so they load here only for values that need them.
TYPE_CHECKING = False  # mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

__all__ = ["fingerprint", "fn_ref", "hex_key", "key_of", "resolve_ref"]

_PACK_D = struct.Struct("<d").pack
_CANONICAL_NAN = _PACK_D(math.nan)


def _length(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _canon(obj: Any, out: list[bytes]) -> None:
    """Append the canonical encoding of obj to out."""
    t = type(obj)
    if t is str:
        data = obj.encode("utf-8", "surrogatepass")
        out += (b"s", _length(len(data)), data)
    elif t is int:
        if -(2**63) <= obj < 2**63:
            out += (b"i", obj.to_bytes(8, "little", signed=True))
        else:
            data = obj.to_bytes(obj.bit_length() // 8 + 1, "little", signed=True)
            out += (b"I", _length(len(data)), data)
    elif obj is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if obj else b"F")
    elif t is float:
        out += (b"f", _CANONICAL_NAN if obj != obj else _PACK_D(obj))
    elif t is bytes or t is memoryview or t is bytearray:
        data = bytes(obj)
        out += (b"B" if t is bytearray else b"b", _length(len(data)), data)
    elif t is tuple or t is list:
        out += (b"(" if t is tuple else b"[", _length(len(obj)))
        for item in obj:
            _canon(item, out)
    elif t is dict:
        pairs = sorted((_encoded(k), _encoded(v)) for k, v in obj.items())
        out += (b"{", _length(len(pairs)))
        for k, v in pairs:
            out += (k, v)
    elif t is set or t is frozenset:
        items = sorted(_encoded(x) for x in obj)
        out += (b"<" if t is set else b">", _length(len(items)))
        out += items
    else:
        _canon_other(obj, out)


def _encoded(obj: Any) -> bytes:
    out: list[bytes] = []
    _canon(obj, out)
    return b"".join(out)


def _canon_other(obj: Any, out: list[bytes]) -> None:
    if isinstance(obj, enum.Enum):
        _tagged(b"E", out, _type_ref(type(obj)), obj.name)
    elif hasattr(type(obj), "__dataclass_fields__"):  # dataclasses.is_dataclass, for an instance
        import dataclasses  # loaded already: obj's class is a dataclass

        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        _tagged(b"D", out, _type_ref(type(obj)), fields)
    elif isinstance(obj, types.CodeType):
        _canon_code(obj, out)
    elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, functools.partial)):
        _tagged(b"F", out, fingerprint(obj))
    else:
        import pickle

        try:
            data = pickle.dumps(obj, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"cannot make a key from a value of type {_type_ref(type(obj))}: it has no "
                f"canonical form and cannot be pickled ({exc}); pass plain data instead"
            ) from exc
        _tagged(b"P", out, _type_ref(type(obj)), data)


def _tagged(tag: bytes, out: list[bytes], *fields: Any) -> None:
    out.append(tag)
    for field in fields:
        _canon(field, out)


def key_of(*parts: object) -> bytes:
    """The 16-byte xxh3-128 digest of the canonical encoding of ``parts``."""
    out: list[bytes] = []
    try:
        _canon(parts, out)
    except RecursionError:
        raise SerializationError(
            "cannot make a key: the value is nested too deeply or contains itself"
        ) from None
    return xxhash.xxh3_128_digest(b"".join(out))


def hex_key(*parts: object) -> str:
    """``key_of(*parts)`` as 32 hex digits."""
    return key_of(*parts).hex()


# ---------------------------------------------------------------- functions

# Code object fields that define behaviour. Left out on purpose: co_filename,
# co_firstlineno, co_linetable/co_lnotab (moving a function within its file or
# renaming the file must not invalidate its cached results) and co_name /
# co_qualname (the fingerprint carries module:qualname itself).
_CODE_FIELDS = (
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_flags",
    "co_code",
    "co_consts",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
)


def _canon_code(code: types.CodeType, out: list[bytes]) -> None:
    # Nested functions, lambdas and comprehensions are code objects among
    # co_consts, so _canon recurses into them.
    _tagged(b"c", out, *(getattr(code, name) for name in _CODE_FIELDS))
    table = getattr(code, "co_exceptiontable", None)  # 3.11+: try/except layout
    if table is not None:
        _canon(table, out)


def _type_ref(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _closure_values(fn: types.FunctionType) -> list[Any]:
    values: list[Any] = []
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a name not yet bound)
            values.append(None)
            continue
        if isinstance(value, types.FunctionType):
            # By name only: a recursive closure would otherwise recurse forever.
            values.append(fn_ref(value))
        else:
            try:
                values.append(_encoded(value))
            except Exception:
                values.append(_type_ref(type(value)))  # not encodable: its type only
    return values


def _function_fingerprint(fn: types.FunctionType) -> str:
    out: list[bytes] = []
    _canon_code(fn.__code__, out)
    _tagged(b"d", out, fn.__defaults__, fn.__kwdefaults__, _closure_values(fn))
    return f"{fn_ref(fn)}@{xxhash.xxh3_128_hexdigest(b''.join(out))}"


# fn -> (what it carried, fingerprint). Keyed weakly so that a function's
# entry goes with it; the identity checks (_refs.carried_state) catch a
# function whose code or defaults were reassigned and a closure whose
# captured name was rebound. A closure over a mutable value is never cached.
_FINGERPRINTS: weakref.WeakKeyDictionary[Callable[..., Any], tuple[tuple[object, ...], str]]
_FINGERPRINTS = weakref.WeakKeyDictionary()


def fingerprint(fn: Callable[..., Any]) -> str:
    """Name ``fn``'s code: ``"module:qualname@<32 hex digits>"``.

    The hash covers the code object (bytecode, constants, names, nested code
    objects such as inner functions and lambdas), defaults, keyword defaults
    and closure values; not line numbers or the file name, so moving a
    function inside its file keeps its cached results. It does not cover
    functions it calls: changing a helper does not change the caller's
    fingerprint. Stable across processes, runs and PYTHONHASHSEED.

    Builtins and other callables without Python code are named by
    ``module:qualname`` alone; a ``functools.partial`` by its function's
    fingerprint and its arguments; a bound method by its function's.
    """
    if type(fn) is types.FunctionType:
        entry = _FINGERPRINTS.get(fn)
        carried = _refs.carried_state(fn)
        if entry is not None and _refs.same_state(entry[0], carried):
            return entry[1]
        fp = _function_fingerprint(fn)
        if carried is not None:
            _FINGERPRINTS[fn] = (carried, fp)
        return fp
    if isinstance(fn, functools.partial):
        inner = fingerprint(fn.func)
        return f"{inner}+partial@{hex_key(inner, fn.args, fn.keywords)}"
    if isinstance(fn, types.MethodType):
        return fingerprint(fn.__func__)
    if not hasattr(fn, "__qualname__") and not hasattr(fn, "__name__"):
        # A callable instance: its class, the code of its __call__, its state.
        call = next(
            (c.__dict__["__call__"] for c in type(fn).__mro__ if "__call__" in c.__dict__), None
        )
        call_fp = fingerprint(call) if isinstance(call, types.FunctionType) else ""
        try:
            state: Any = _encoded(vars(fn))
        except Exception:  # no __dict__, or state without a canonical form
            state = None
        return f"{_type_ref(type(fn))}@{hex_key(call_fp, state)}"
    return fn_ref(fn)


def fn_ref(fn: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a function, class or method, for sending it by reference."""
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if module is None and isinstance(fn, types.BuiltinMethodType):
        # A bound builtin method such as "".join: named after its owner's type.
        module = type(getattr(fn, "__self__", None)).__module__
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise SerializationError(
            f"cannot refer to {fn!r} by name: it has no __module__ and __qualname__; "
            "pass a module-level function instead"
        )
    return f"{module}:{qualname}"


def resolve_ref(ref: str) -> Callable[..., Any]:
    """Import the module of ``"module:qualname"`` and return the object it names.

    The one resolver of references (``_refs.resolve``); agents use it too.
    """
    return _refs.resolve(ref)
