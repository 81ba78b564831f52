"""Shared-memory segments of the engine: helpers, and big results.

This module covers creating, opening and unlinking the engine's segments
(never registered with a resource tracker), and the **big result**: a
return value whose encoding exceeds ``streaming.stream_threshold`` is
written by the agent into a segment of its own, and the RESULT frame carries
the segment's name and offsets. Stream rings are ``ring.py``'s.

It does not cover shared context (``guildcore.context``).

Names: every segment is ``guild_{supervisor pid}_...`` so that the sweep of a
dead supervisor's segments (``guildcore.context.registry.sweep_stale``) and
the test suite's leak guard both see them.

Ownership: the supervisor unlinks, exactly once, every segment of ours. A
big-result segment is created by the agent under a name the supervisor can
compute (``result_name``), because only the agent knows its size. The
supervisor unlinks it as soon as it has mapped it; if the agent dies before
the RESULT frame arrives, the supervisor unlinks that name after the agent's
death (``discard_result``), and a final sweep at teardown
(``sweep_results``) catches agents killed during shutdown.

Agents never register segments with the resource tracker (Python 3.11 would
unlink them when the agent exits): see ``guildcore.shm``.

Why shared memory and not the pipe (measured on the 2-core development VM,
Python 3.11): the pipe moves 0.9 GB/s with ``recv_bytes`` and 1.8 GB/s with
``recv_bytes_into``; a reused 1 MiB shm slot is written at ~14 GB/s and
copied out into a new ``bytes`` at ~11 GB/s. For one big result (256 MB) both paths are bound by page faults on fresh
memory (~1 GB/s per pass here), so what counts is how many passes over fresh
memory each path makes: chunks over the pipe need encode + reassemble +
decode (0.33 GB/s end to end); shm needs agent write + one copy out
(0.36 GB/s with a generic encode, more with the direct write of ``bytes``
below), and with ``stream_result=True`` no copy at all in the supervisor.
Shm also keeps the owner thread free: one small frame instead of hundreds.
"""

from __future__ import annotations

import io
import mmap

import msgpack

from guildcore import codec, shm
from guildcore._errors import SerializationError

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

SEGMENT_PREFIX = shm.PREFIX

# Kinds of raw payload in a result segment.
RAW_NONE = 0  # the payload is codec bytes of a value
RAW_BYTES = 1
RAW_BYTEARRAY = 2

_BIN32 = b"\xc6"  # msgpack bin 32, then a big-endian uint32 length
_EXT32 = b"\xc9"  # msgpack ext 32, then a big-endian uint32 length, then the type


def raw_kind(value: Any) -> int:
    """RAW_BYTES / RAW_BYTEARRAY for values a slot can carry as they are, else RAW_NONE."""
    t = type(value)
    if t is bytes or t is memoryview:  # the codec hands a memoryview back as bytes
        return RAW_BYTES
    if t is bytearray:
        return RAW_BYTEARRAY
    return RAW_NONE


# ----------------------------------------------------------------- big results


def result_name(owner_pid: int, task_id: int) -> str:
    """The one name a big result of ``task_id`` may have; the supervisor can always compute it."""
    return f"{SEGMENT_PREFIX}{owner_pid}_r{task_id}"


def write_result(
    owner_pid: int, task_id: int, result: Any, frame: bytes | None
) -> list[Any] | None:
    """Agent side: put a big result in a segment; the RESULT frame's fields, or None to use the pipe.

    ``bytes`` and ``bytearray`` are written as msgpack header + payload straight
    from the value (no encoded copy first); anything else as the already
    encoded RESULT ``frame``.
    """
    name = result_name(owner_pid, task_id)
    # [2, task_id, value]: fixarray(3), kind, then the task id as msgpack packs it.
    value_off = 2 + len(msgpack.packb(task_id))
    kind = RAW_NONE
    if frame is None:
        kind = (
            RAW_BYTES
            if type(result) is bytes
            else RAW_BYTEARRAY
            if type(result) is bytearray
            else RAW_NONE
        )
    if kind == RAW_NONE:
        if frame is None:
            return None
        size, raw_off, raw_len = len(frame), -1, 0
    else:
        raw_len = len(result)
        if raw_len >= 1 << 32:
            return None  # msgpack cannot frame it; the pipe path reports the error
        head = bytes([0x93, 2]) + msgpack.packb(task_id)
        if kind == RAW_BYTES:
            head += _BIN32 + raw_len.to_bytes(4, "big")
        else:
            head += _EXT32 + raw_len.to_bytes(4, "big") + bytes([codec.EXT_BYTEARRAY])
        raw_off = len(head)
        size = raw_off + raw_len
    try:
        mm = shm.create_mapped(name, size)
    except FileExistsError:
        # A leftover of an earlier attempt the supervisor has not unlinked yet.
        return None
    except OSError:
        return None  # /dev/shm is full or missing: the pipe still works
    try:
        if kind == RAW_NONE:
            assert frame is not None
            mm[:size] = frame
        else:
            mm[:raw_off] = head
            mm[raw_off:size] = result
    except BaseException:
        mm.close()
        shm.unlink(name)
        raise
    mm.close()
    return [None, name, size, value_off, raw_off, raw_len, kind]


def take_result(owner_pid: int, task_id: int, fields: list[Any], *, raw: bool) -> Any:
    """Supervisor side: map, unlink and read a big result; a ``ResultStream`` if ``raw``."""
    _none, name, size, value_off, raw_off, raw_len, kind = fields
    if name != result_name(owner_pid, task_id):
        # Ownership: never unlink a name the agent made up.
        raise SerializationError(f"task {task_id}'s result names an unexpected segment {name!r}")
    try:
        mm = shm.open_mapped(name, writable=False)
    finally:
        shm.unlink(name)  # Ownership: the one unlink of this segment
    if mm.size() < size:
        mm.close()
        raise SerializationError(
            f"task {task_id}'s result segment holds {mm.size()} bytes, not {size}"
        )
    if raw:
        start, end = (raw_off, raw_off + raw_len) if kind != RAW_NONE else (value_off, size)
        return ResultStream(mm, start, end)
    view = memoryview(mm)
    try:
        if kind == RAW_BYTES:
            return view[raw_off : raw_off + raw_len].tobytes()
        if kind == RAW_BYTEARRAY:
            return bytearray(view[raw_off : raw_off + raw_len])
        return codec.decode(view[value_off:size])
    finally:
        view.release()
        mm.close()


def discard_result(owner_pid: int, task_id: int) -> None:
    """The agent running ``task_id`` died: remove a result segment it may have left."""
    shm.unlink(result_name(owner_pid, task_id))


def sweep_results(owner_pid: int) -> None:
    """At teardown: remove result segments of agents killed during shutdown."""
    shm.sweep_owned(owner_pid, "r")


def stream_for(value: Any) -> ResultStream:
    """A small result as a ``ResultStream``: raw bytes for bytes-like values, else codec bytes."""
    data = bytes(value) if raw_kind(value) != RAW_NONE else codec.encode(value)
    return ResultStream(data, 0, len(data))


# --------------------------------------------------------------- result stream


class ResultStream(io.RawIOBase):
    """A read-only binary stream over one task result: ``submit(..., stream_result=True)``.

    ``read()`` gives the result's bytes: the bytes themselves for a
    ``bytes``/``bytearray``/``memoryview`` result, the codec encoding for
    anything else (``guildcore.codec.decode`` turns it back into the value).
    A big result is read straight out of shared memory, with no copy before
    the caller's own; ``close()`` (or ``with``) releases it. Seekable;
    ``len(stream)`` is the size in bytes.
    """

    def __init__(self, buffer: mmap.mmap | bytes, start: int, end: int) -> None:
        super().__init__()
        self._buffer: mmap.mmap | bytes | None = buffer
        self._view: memoryview | None = memoryview(buffer)[start:end]
        self._pos = 0

    def __len__(self) -> int:
        return 0 if self._view is None else self._view.nbytes

    def _data(self) -> memoryview:
        if self._view is None:
            raise ValueError("I/O operation on a closed result stream")
        return self._view

    def readable(self) -> bool:
        self._data()
        return True

    def seekable(self) -> bool:
        self._data()
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._data()
        out = memoryview(buffer).cast("B")
        n = max(0, min(out.nbytes, data.nbytes - self._pos))
        out[:n] = data[self._pos : self._pos + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        data = self._data()
        out = data[self._pos :].tobytes()
        self._pos = data.nbytes
        return out

    def read(self, size: int | None = -1) -> bytes:
        data = self._data()
        if size is None or size < 0:
            return self.readall()
        out = data[self._pos : self._pos + size].tobytes()
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        size = self._data().nbytes
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        self._data()
        return self._pos

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        if isinstance(self._buffer, mmap.mmap):
            self._buffer.close()
        self._buffer = None
        super().close()
