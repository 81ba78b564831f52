"""msgpack codec: type-faithful values and the frames between supervisor and agents.

Data flow of one frame::

    supervisor                                              agent
    encode_frame(Kind.TASK, 17, fn_ref, args, kwargs)
      -> msgpack array [1, 17, "mod:fn", <ext 1: args>, {...}]
      -> bytes over the pipe  ---------------------------->  decode_frame(data)
                                                              -> (Kind.TASK, 17, [fn_ref, args, kwargs])
    decode_frame(data)  <-----------------------------------  encode_frame(Kind.RESULT, 17, value)

Values are type-faithful: whatever ``pickle`` round-trips comes back equal and
of the same type. Exact ``None``, ``bool``, ``int`` (64-bit), ``float``,
``str``, ``bytes``, ``list`` and ``dict`` (any hashable keys) are plain msgpack
and never touch pickle; everything else is an ext type whose payload is
itself codec bytes where it holds values:

    code  type                  payload
    ----  --------------------  -------------------------------------------
       1  tuple                 codec bytes of a list of the items
       2  set                   codec bytes of a list of the items
       3  frozenset             codec bytes of a list of the items
       4  int beyond 64 bits    two's complement, little endian
       5  bytearray             the raw bytes
       6  str, lone surrogates  UTF-8 with 'surrogatepass'
       7  pickle                pickle protocol 5 of the object (subclasses of
                                builtins, user classes, recursive structures)
    8-15  reserved for this module
   16-31  reserved for other modules through ``register_ext``:
      16  context reference     (guildcore.context)
      17  large buffer          (guildcore.context / stream)

A ``memoryview`` comes back as ``bytes``. Shared references and cycles inside
plain containers are not preserved (a cycle makes the whole value go through
pickle), and so are tuples and sets nested more than ``MAX_EXT_DEPTH`` (32)
deep. A ``msgpack.ExtType`` passed as a value is pickled, so it cannot be
mistaken for one of ours (as a dict key it is not supported).

This module covers encoding values and frames. It does not cover compression,
signing (the cache signs payloads for which ``encode_checked`` reports pickle),
or moving large buffers (see ext 17). It imports nothing of guildcore's but
``errors``.
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Callable

import msgpack

from guildcore._errors import ConfigError, SerializationError

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

__all__ = [
    "EXT_BIGINT",
    "EXT_BYTEARRAY",
    "EXT_CONTEXT_REF",
    "EXT_FROZENSET",
    "EXT_LARGE_BUFFER",
    "EXT_PICKLE",
    "EXT_SET",
    "EXT_SURROGATE_STR",
    "EXT_TUPLE",
    "EXT_USER_RANGE",
    "Kind",
    "decode",
    "decode_frame",
    "encode",
    "encode_checked",
    "encode_frame",
    "register_ext",
]

EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_BIGINT = 4
EXT_BYTEARRAY = 5
EXT_SURROGATE_STR = 6
EXT_PICKLE = 7
EXT_CONTEXT_REF = 16
EXT_LARGE_BUFFER = 17
EXT_USER_RANGE = range(16, 32)  # codes other modules may claim through register_ext

PICKLE_PROTOCOL = 5
# Lists longer than this are checked for bytearrays with one C-level pass
# (sum / str.join) before falling back to a per-type scan; shorter ones go
# straight to the scan, which is cheaper for a handful of items.
_FAST_SCAN_MIN_LEN = 16
# Containers nested in ext payloads (tuple in tuple in ...) deeper than this
# are pickled whole. Each level of decoding is one C unpackb call holding
# ~40 kB of msgpack's stack, so unbounded nesting would overflow the C stack
# (a crash, not an exception); the decoder refuses deeper input.
MAX_EXT_DEPTH = 32


class Kind(enum.IntEnum):
    """Frame kinds. Values are on the wire: never renumber; 12..63 are free for the engine."""

    TASK = 1  # supervisor -> agent: [fn_ref, args, kwargs, ...]
    RESULT = 2  # agent -> supervisor: [value]
    ERROR = 3  # agent -> supervisor: [exception or description, traceback text]
    CHUNK = 4  # agent -> supervisor: one streamed item
    END = 5  # agent -> supervisor: the stream of a task is over
    CANCEL = 6  # supervisor -> agent: stop this task
    STATS = 7  # agent -> supervisor: memory and timing samples
    SHUTDOWN = 8  # supervisor -> agent: finish and exit
    READY = 9  # agent -> supervisor: started, waiting for work
    CREDIT = 10  # supervisor -> agent: may send N more chunks
    STARTED = 11  # agent -> supervisor: began running a task
    WITHDRAW = 12  # supervisor -> agent: give this task back if you have not begun it
    WITHDRAWN = 13  # agent -> supervisor: given back; it will not run here
    TRIM = 14  # supervisor -> agent: [keep]: cut in-process caches to `keep`, collect, malloc_trim
    CACHING = 15  # supervisor -> agent: [writes, budget]: cache writes on/off, in-process budget fraction


_KIND_BY_VALUE: dict[int, Kind] = {k.value: k for k in Kind}

_LEAF_TYPES = frozenset({str, int, float, bool, type(None), bytes})
# Types the C packer would pack natively but lossily; a value holding one is
# rewritten by _prepare before packing.
_PREPARE_TYPES = frozenset({bytearray, msgpack.ExtType})


# Top-level bytes at least this big are framed by hand as msgpack bin 32.
_BIG_BYTES = 1 << 16  # 64 KiB
_BIN32 = struct.Struct(">BI")  # msgpack bin 32: 0xc6, then the length as a uint32

# A packer whose last output was bigger than this is dropped rather than
# kept: msgpack keeps a packer's buffer at its largest size, and one 1 GB
# value must not pin 1 GB per thread for the life of the process.
_KEEP_PACKER_BELOW = 1 << 20  # 1 MiB


class _ThreadState(threading.local):
    """Per-thread idle packers (a Packer is not thread-safe) and pickle counter."""

    def __init__(self) -> None:
        # Idle packers. A re-entrant encode (a tuple's items, a register_ext
        # hook that encodes) pops another one, so none is used twice at once.
        self.free: list[Any] = []
        self.pickles = 0  # how many values this thread has pickled; only grows
        self.depth = 0  # ext containers being encoded or decoded, nested


_state = _ThreadState()


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # ExtType's own __new__ re-checks its arguments in Python; ours are
    # always valid, and this is 3x faster on the hot path of every tuple.
    return tuple.__new__(msgpack.ExtType, (code, data))


# ---------------------------------------------------------------- encoding


def _pickle_ext(obj: object) -> msgpack.ExtType:
    import pickle  # here: a Guild's first result never needs it (~1.5 ms of import)

    try:
        data = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a __reduce__ that calls sys.exit() fails this value only
        cls = type(obj)
        raised = exc if isinstance(exc, Exception) else f"{type(exc).__name__}: {exc}"
        raise SerializationError.because(
            f"cannot encode a value of type {cls.__module__}.{cls.__qualname__}: {raised}; "
            "send something picklable instead (plain data, a module-level function, "
            "an object with __reduce__), or create it inside the task",
            exc,
        ) from exc
    _state.pickles += 1
    return _ext(EXT_PICKLE, data)


def _bigint_ext(value: int) -> msgpack.ExtType:
    nbytes = value.bit_length() // 8 + 1  # room for the sign bit
    return _ext(EXT_BIGINT, value.to_bytes(nbytes, "little", signed=True))


# Exact type -> function making the ext for it. Invariant: only exact types
# are keys, so a subclass (namedtuple, OrderedDict, IntEnum) is pickled and
# comes back as itself.
_ENCODERS: dict[type, Callable[[Any], msgpack.ExtType]] = {
    tuple: lambda o: _ext(EXT_TUPLE, _encode_items(o)),
    set: lambda o: _ext(EXT_SET, _encode_items(o)),
    frozenset: lambda o: _ext(EXT_FROZENSET, _encode_items(o)),
    int: _bigint_ext,  # reached only when the value does not fit in 64 bits
    bytearray: lambda o: _ext(EXT_BYTEARRAY, bytes(o)),
}


def _encode_items(container: Any) -> bytes:
    state = _state
    if state.depth >= MAX_EXT_DEPTH:
        # Caught by encode(), which pickles the whole value instead.
        raise RecursionError(f"containers nested deeper than {MAX_EXT_DEPTH} ext levels")
    state.depth += 1
    try:
        return _encode(list(container))
    finally:
        state.depth -= 1


def _default(obj: object) -> msgpack.ExtType:
    """The Packer's hook for every value it does not pack natively."""
    if type(obj) is tuple and len(obj) < _FAST_SCAN_MIN_LEN:
        # Fast path for the commonest case, short tuples of plain values
        # (task arguments): nothing nested, so no depth check and no scan.
        items = list(obj)
        if _LEAF_TYPES.issuperset(map(type, items)):
            free = _state.free
            packer = free.pop() if free else _new_packer()
            try:
                data = packer.pack(items)
            except UnicodeEncodeError:
                data = _encode_items(items)  # a lone surrogate: the general path
            else:
                free.append(packer)
            return tuple.__new__(msgpack.ExtType, (EXT_TUPLE, data))  # _ext, inlined
    encoder = _ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj)
    return _pickle_ext(obj)


def _new_packer() -> Any:
    return msgpack.Packer(default=_default, strict_types=True, use_bin_type=True)


def _only_numbers_or_str(items: Any) -> bool:
    """One C-level pass proving that every item is a number, or every item a str."""
    t = type(next(iter(items)))
    try:
        if t is int or t is float or t is bool:
            return type(sum(items)) in (int, float)
        if t is str:
            "".join(items)
            return True
    except Exception:
        pass
    return False


def _needs_prepare(obj: list[Any] | dict[Any, Any]) -> bool:
    """Whether a plain list or dict holds, in plain containers, a type the packer loses.

    Only dict values are looked at: keys are hashable, so never a bytearray,
    list or dict (a msgpack.ExtType used as a key is not supported).
    """
    items = obj.values() if type(obj) is dict else obj  # type: ignore[union-attr]
    if len(obj) < _FAST_SCAN_MIN_LEN:
        if _LEAF_TYPES.issuperset(map(type, items)):
            return False
        for item in items:
            it = type(item)
            if it is bytearray or it is msgpack.ExtType:
                return True
            if (it is list or it is dict) and _needs_prepare(item):
                return True
        return False
    if _only_numbers_or_str(items):
        return False
    types = set(map(type, items))
    if types <= _LEAF_TYPES:
        return False
    if not types.isdisjoint(_PREPARE_TYPES):
        return True
    if list in types or dict in types:
        for item in items:
            it = type(item)
            # Recursion is one frame per level so that anything msgpack can
            # nest (511 levels) is scanned within the recursion limit.
            if (it is list or it is dict) and _needs_prepare(item):
                return True
    return False


def _prepare(obj: Any) -> Any:
    """Rewrite plain lists and dicts so that the C packer cannot lose a type.

    bytearray and lone-surrogate str become our ext types, a user's ExtType
    is pickled, a memoryview becomes bytes. Tuples and sets need nothing:
    the default hook encodes their items through ``_encode`` again.
    """
    t = type(obj)
    if t is list:
        return [_prepare(x) for x in obj]
    if t is dict:
        return {_prepare(k): _prepare(v) for k, v in obj.items()}
    if t is bytearray:
        return _ext(EXT_BYTEARRAY, bytes(obj))
    if t is str:
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return _ext(EXT_SURROGATE_STR, obj.encode("utf-8", "surrogatepass"))
        return obj
    if t is memoryview:
        return obj.tobytes()
    if t is msgpack.ExtType:
        return _pickle_ext(obj)
    return obj


def _pack(obj: object) -> bytes:
    free = _state.free
    packer = free.pop() if free else _new_packer()
    data: bytes = packer.pack(obj)
    # Invariant: a packer that raised is dropped, never reused half-filled.
    if len(data) < _KEEP_PACKER_BELOW:
        free.append(packer)
    return data


def _encode(obj: object) -> bytes:
    """Encode without the whole-value pickle fallback (used for nested items)."""
    t = type(obj)
    if t is bytes and _BIG_BYTES <= len(obj) < 1 << 32:  # type: ignore[arg-type]
        # msgpack would copy into its buffer and out again; one copy is enough.
        return _BIN32.pack(0xC6, len(obj)) + obj  # type: ignore[arg-type, operator]
    if t is dict or t is list:
        if _needs_prepare(obj):  # type: ignore[arg-type]
            obj = _prepare(obj)
    elif t in _PREPARE_TYPES:
        obj = _prepare(obj)
    try:
        return _pack(obj)
    except (UnicodeEncodeError, BufferError):
        # A str with lone surrogates, or a non-contiguous memoryview: rare,
        # so it is cheaper to retry than to look for them up front.
        return _pack(_prepare(obj))


def encode(obj: object) -> bytes:
    """Encode a value to msgpack bytes that ``decode`` turns back into an equal value of the same type."""
    try:
        return _encode(obj)
    except SerializationError:
        raise
    except (RecursionError, ValueError, OverflowError):
        # Nested deeper than msgpack allows, a cycle, or a size msgpack cannot
        # express: pickle copes with all of these, so the whole value goes as one ext.
        return _pack(_pickle_ext(obj))
    except Exception as exc:
        cls = type(obj)
        raise SerializationError(
            f"cannot encode a value of type {cls.__module__}.{cls.__qualname__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def encode_checked(obj: object) -> tuple[bytes, bool]:
    """Encode like ``encode`` and say whether pickle was used anywhere in the value."""
    before = _state.pickles
    data = encode(obj)
    return data, _state.pickles != before


def encode_frame(kind: int, task_id: int, *fields: object) -> bytes:
    """Encode one frame: a msgpack array ``[kind, task_id, *fields]``, fields type-faithful."""
    frame = [int(kind), int(task_id), *fields]
    try:
        return _encode(frame)  # the common case without encode()'s extra call
    except Exception:
        return encode(frame)  # again, with encode()'s fallbacks and messages


# ---------------------------------------------------------------- decoding

_DECODERS: dict[int, Callable[[bytes], object]] = {}  # ext code -> decoder, filled by register_ext
_REGISTERED: dict[int, type] = {}  # ext code -> the class register_ext bound to it
# ext code -> the module whose import registers it. ``import guildcore`` no
# longer imports these, so an agent may decode a reference before anything in
# its process imported the module: the first such decode imports it.
_REGISTERED_BY = {EXT_CONTEXT_REF: "guildcore.context.ref"}


def _make_ext_hook(allow_pickle: bool) -> Callable[[int, bytes], object]:
    def unpack_items(data: bytes) -> list[Any]:
        state = _state
        if state.depth >= MAX_EXT_DEPTH:
            raise SerializationError(
                f"containers nested deeper than {MAX_EXT_DEPTH} ext levels; "
                "the encoder never produces this, so the data is corrupt or hostile"
            )
        state.depth += 1
        try:
            items = msgpack.unpackb(data, ext_hook=ext_hook, strict_map_key=False)
        finally:
            state.depth -= 1
        if type(items) is not list:
            raise SerializationError(
                f"ext payload should hold a list, found {type(items).__name__}"
            )
        return items

    def ext_hook(code: int, data: bytes) -> object:
        if code == EXT_TUPLE:
            return tuple(unpack_items(data))
        if code == EXT_SET:
            return set(unpack_items(data))
        if code == EXT_FROZENSET:
            return frozenset(unpack_items(data))
        if code == EXT_BIGINT:
            return int.from_bytes(data, "little", signed=True)
        if code == EXT_BYTEARRAY:
            return bytearray(data)
        if code == EXT_SURROGATE_STR:
            return data.decode("utf-8", "surrogatepass")
        if code == EXT_PICKLE:
            if not allow_pickle:
                raise SerializationError(
                    "refusing to unpickle a value from untrusted bytes (decode with allow_pickle=False)"
                )
            import pickle

            return pickle.loads(data)
        decoder = _DECODERS.get(code)
        if decoder is None and code in _REGISTERED_BY:
            __import__(_REGISTERED_BY[code])
            decoder = _DECODERS.get(code)
        if decoder is None:
            raise SerializationError(
                f"unknown msgpack ext type {code}; was it registered with register_ext?"
            )
        return decoder(data)

    return ext_hook


_EXT_HOOK = _make_ext_hook(allow_pickle=True)
_EXT_HOOK_NO_PICKLE = _make_ext_hook(allow_pickle=False)


def decode(data: bytes | bytearray | memoryview, *, allow_pickle: bool = True) -> Any:
    """Decode bytes made by ``encode``; any failure is a ``SerializationError``.

    With ``allow_pickle=False`` a pickled value raises instead of being
    unpickled: use it for bytes that did not come from a trusted peer.
    """
    try:
        # raw=False and use_list=True are msgpack's defaults (>= 1.0); passing
        # fewer keywords is measurably faster on small frames.
        return msgpack.unpackb(
            data, ext_hook=_EXT_HOOK if allow_pickle else _EXT_HOOK_NO_PICKLE, strict_map_key=False
        )
    except (SerializationError, MemoryError):
        raise  # out of memory is not corrupt data: the caller decides (an agent fails the task)
    except Exception as exc:
        raise SerializationError(
            f"cannot decode {len(data)} bytes: {type(exc).__name__}: {exc}; "
            "the data is truncated, corrupt or not from guildcore's codec"
        ) from exc


def frame_head(data: bytes | bytearray | memoryview) -> tuple[Kind, int]:
    """The kind and task id of a frame, without decoding its fields.

    An agent's reader thread routes frames by these two alone: a task's
    fields may name the caller's script, which must load in the main thread.
    """
    unpacker = msgpack.Unpacker()
    unpacker.feed(bytes(memoryview(data)[:32]))  # array header, kind and task id fit in 15 bytes
    try:
        if unpacker.read_array_header() < 2:
            raise ValueError("fewer than 2 items")
        kind, task_id = unpacker.unpack(), unpacker.unpack()
    except Exception as exc:
        raise SerializationError(f"bad frame: expected [kind, task_id, ...] ({exc})") from None
    if type(kind) is not int or kind not in _KIND_BY_VALUE or type(task_id) is not int:
        raise SerializationError(f"bad frame: kind {kind!r}, task id {task_id!r}")
    return _KIND_BY_VALUE[kind], task_id


def decode_frame(
    data: bytes | bytearray | memoryview, *, allow_pickle: bool = True
) -> tuple[Kind, int, list[Any]]:
    """Decode one frame into ``(kind, task_id, fields)``; a bad frame raises ``SerializationError``."""
    frame = decode(data, allow_pickle=allow_pickle)
    if type(frame) is not list:
        raise SerializationError(
            f"bad frame: expected a msgpack array, found {type(frame).__name__}"
        )
    if len(frame) < 2:
        raise SerializationError(
            f"bad frame: expected [kind, task_id, ...], found {len(frame)} item(s)"
        )
    kind, task_id = frame[0], frame[1]
    if type(kind) is not int or kind not in _KIND_BY_VALUE:
        raise SerializationError(f"bad frame: unknown frame kind {kind!r}")
    if type(task_id) is not int:
        raise SerializationError(
            f"bad frame: task id should be an int, found {type(task_id).__name__}"
        )
    return _KIND_BY_VALUE[kind], task_id, frame[2:]


# ---------------------------------------------------------------- extension


def register_ext(
    code: int, cls: type[T], to_bytes: Callable[[T], bytes], from_bytes: Callable[[bytes], T]
) -> None:
    """Let another module encode instances of exactly ``cls`` as ext ``code`` (16..31).

    ``to_bytes`` may call ``encode`` for nested values. Registering the same
    code for the same class again replaces the functions (module reloads);
    a code or class already taken by something else is a ``ValueError``.
    """
    if code not in EXT_USER_RANGE:
        raise ConfigError(
            f"ext code {code} is outside the range other modules may use ({EXT_USER_RANGE.start}..{EXT_USER_RANGE.stop - 1})"
        )
    owner = _REGISTERED.get(code)
    if owner is not None and owner is not cls:
        raise ConfigError(f"ext code {code} is already registered for {owner.__qualname__}")
    if cls in _ENCODERS and _REGISTERED.get(code) is not cls:
        raise ConfigError(f"{cls.__qualname__} already has an encoding; pick another class")
    _REGISTERED[code] = cls
    _ENCODERS[cls] = lambda o: _ext(code, to_bytes(o))
    _DECODERS[code] = from_bytes
