"""A stream's ring: chunks move from the agent to the consumer without the supervisor.

Data flow of one streaming task with a ring::

    agent main thread                                          consumer thread
    ─────────────────                                          ───────────────
    credits left? else wait  <──── credit FIFO: one byte per released chunk ──  release chunk k
    write chunk k into slot k % window (shared memory)
    record (k, kind, sizes) ───── chunk FIFO ──────────────────────────────────>  read record,
                                                                                 copy the slot out
    a value too big for a slot: CHUNK frame ──> supervisor ──> queue ──────────>  (record says so)
    END / ERROR frame ──> supervisor: StreamState.finish ──> wake-up pipe ─────>  end of stream

Why: through the supervisor every chunk cost four thread hand-offs, two of
them inside the caller, where the owner thread and the consumer took turns
at the GIL instead of overlapping. Here the consumer and the agent talk
directly, as a bare shared-memory ring does; the owner thread sees only the
start and the end of the stream.

Segment layout (``window * slot_bytes`` bytes after one 4 KiB page)::

    offset 0   float64  paused_since  (CLOCK_MONOTONIC; 0 while the agent runs)
    offset 8   float64  paused_total  (seconds the agent waited for credits)
    offset 4096 + i * slot_bytes      slot i

The two floats are written by the agent and read by the owner thread, so
that waiting for a slow consumer does not count against the task's timeout.

Records (chunk FIFO, each written in one ``write`` of at most ``PIPE_BUF``
bytes, hence whole): ``RECORD`` then ``meta_len`` bytes of meta, then, for
``INLINE``, ``nbytes`` of codec encoding. Kinds: ``BYTES``/``BYTEARRAY``
(raw in the slot), ``NDARRAY`` (raw in the slot, meta = msgpack
``[dtype.str, shape]``), ``CODEC`` (codec encoding in the slot), ``INLINE``
(codec encoding in the record), ``QUEUE`` (the value came as a CHUNK frame).

Invariant: the agent writes chunk ``k`` into slot ``k % window`` only with
a credit in hand; credits start at ``window`` and the consumer returns one
only once nothing reads chunk ``k``'s slot any more, so the slot's previous
tenant, chunk ``k - window``, is gone by then.

FIFOs: both live in ``/dev/shm`` next to the segment (so the sweep of a dead
supervisor removes them). The consumer opens both ``O_RDWR``: that never
blocks, and keeps either FIFO from reading as ended before the agent opens
its end. The agent opens the credit FIFO read-only (the consumer closing its
end reads as the end of credits: cancel) and the chunk FIFO write-only (the
consumer gone: ``EPIPE``).

Ownership: the supervisor creates the segment and the FIFOs (``Ring.create``)
and unlinks all three once, when the task ends (``Ring.unlink``); the
consumer's mappings and descriptors outlive the names until it has read the
last chunk (``Ring.close``).
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import time

import msgpack

from guildcore import codec, shm
from guildcore._errors import SerializationError

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

HEADER_BYTES = 4096
_PAUSE = struct.Struct("=dd")  # paused_since, paused_total
RECORD = struct.Struct("<qBII")  # index, kind, nbytes, meta_len
PIPE_BUF = 4096  # a FIFO write this small is atomic

BYTES, BYTEARRAY, NDARRAY, CODEC, INLINE, QUEUE = 1, 2, 3, 4, 5, 6
SLOT_KINDS = (BYTES, BYTEARRAY, NDARRAY, CODEC)
# Chunks encoding to at most this many bytes travel inside their record:
# touching a slot's pages costs more than writing them into the FIFO.
INLINE_MAX = 1024


class StreamEnded(Exception):
    """The agent's side of the channel is gone (internal: the stream then ends as the supervisor says)."""


# ------------------------------------------------------------------ the consumer


class Ring:
    """The supervisor's and the consumer's side of one stream's ring."""

    def __init__(
        self, name: str, window: int, slot_bytes: int, mm: mmap.mmap, chunk_fd: int, credit_fd: int, segment_fd: int
    ) -> None:
        self.name = name
        self._segment_fd = segment_fd  # to map one slot on its own, for views
        self.window = window
        self.slot_bytes = slot_bytes
        self._mm: mmap.mmap | None = mm
        self._view: memoryview | None = memoryview(mm)
        self.chunk_fd = chunk_fd
        self._credit_fd = credit_fd
        self._pending = bytearray()  # record bytes read but not parsed yet
        self.unlinked = False

    @classmethod
    def create(cls, owner_pid: int, task_id: int, window: int, slot_bytes: int) -> Ring | None:
        """Supervisor side; None if /dev/shm refuses (chunks then go through the supervisor)."""
        slot_bytes = -(-max(1, slot_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE
        name = f"{shm.PREFIX}{owner_pid}_s{task_id}_{os.urandom(4).hex()}"
        made: list[str] = []
        try:
            # Sparse: tmpfs pages exist only once the agent touches them.
            mm = shm.create_mapped(name, HEADER_BYTES + window * slot_bytes)
            made.append(name)
            fds = [shm.open_fd(name, writable=False)]
            for end in ("k", "c"):
                os.mkfifo(_fifo_path(name, end), 0o600)
                made.append(name + end)
                fds.append(os.open(_fifo_path(name, end), os.O_RDWR))
        except OSError:
            for made_name in made:
                shm.unlink(made_name)
            return None
        return cls(name, window, slot_bytes, mm, fds[1], fds[2], fds[0])

    def describe(self) -> list[Any]:
        """What the agent needs, sent in the TASK payload."""
        return [self.name, self.window, self.slot_bytes]

    # owner thread
    def paused(self) -> tuple[float, float]:
        """(paused_since, paused_total) as the agent wrote them; (0, 0) once closed."""
        mm = self._mm
        try:
            return _PAUSE.unpack_from(mm, 0) if mm is not None else (0.0, 0.0)
        except (ValueError, TypeError):  # Race: the consumer closed it meanwhile
            return (0.0, 0.0)

    def unlink(self) -> None:
        """Remove the names (owner thread, once); the consumer's mapping and FIFOs stay valid."""
        if not self.unlinked:
            self.unlinked = True
            for name in (self.name, self.name + "k", self.name + "c"):
                shm.unlink(name)

    # consumer thread
    def next_record(self, wake_fd: int, *, block: bool) -> tuple[int, int, int, bytes, bytes] | None:
        """``(index, kind, nbytes, meta, inline)`` of the next chunk, or None if ``wake_fd`` fired first.

        With ``block`` false, None also when no record is there yet.
        """
        while True:
            record = self._parse()
            if record is not None:
                return record
            fds = [self.chunk_fd, wake_fd]
            ready, _, _ = select.select(fds, [], [], None if block else 0)
            if self.chunk_fd in ready:
                self._pending += os.read(self.chunk_fd, 65536)
                continue
            return None

    def _parse(self) -> tuple[int, int, int, bytes, bytes] | None:
        buf = self._pending
        if len(buf) < RECORD.size:
            return None
        index, kind, nbytes, meta_len = RECORD.unpack_from(buf, 0)
        end = RECORD.size + meta_len + (nbytes if kind == INLINE else 0)
        if len(buf) < end:
            return None  # Invariant: records are written whole, so the rest is on its way
        meta = bytes(buf[RECORD.size : RECORD.size + meta_len])
        inline = bytes(buf[RECORD.size + meta_len : end]) if kind == INLINE else b""
        del buf[:end]
        return index, kind, nbytes, meta, inline

    def slot(self, index: int, nbytes: int) -> memoryview:
        """A read-only view of chunk ``index``'s bytes in its slot."""
        view = self._view
        if view is None or not 0 <= nbytes <= self.slot_bytes:
            raise SerializationError(f"bad ring reference (chunk {index}, {nbytes} bytes) in a stream record")
        start = HEADER_BYTES + (index % self.window) * self.slot_bytes
        return view[start : start + nbytes].toreadonly()

    def take(self, index: int, kind: int, nbytes: int, meta: bytes) -> Any:
        """Chunk ``index`` copied out of its slot: a value the consumer may keep."""
        piece = self.slot(index, nbytes)
        try:
            if kind == BYTES:
                return piece.tobytes()
            if kind == BYTEARRAY:
                return bytearray(piece)
            if kind == NDARRAY:
                return _array(meta, piece, copy=True)
            return codec.decode(piece)
        finally:
            piece.release()

    def view(self, index: int, kind: int, nbytes: int, meta: bytes) -> tuple[Any, mmap.mmap | None]:
        """Chunk ``index`` in place: (value, the mapping that pins its slot, None if nothing does).

        The slot is mapped on its own, read-only: ``mmap.close`` refuses while
        any view or array made from it is alive, which is how the consumer
        knows when the slot may go back (a memoryview's ``release`` would
        not see a numpy array made from it).
        """
        if kind not in (BYTES, BYTEARRAY, NDARRAY):
            return self.take(index, kind, nbytes, meta), None  # decoded values own their memory
        if not 0 <= nbytes <= self.slot_bytes:
            raise SerializationError(f"bad ring reference (chunk {index}, {nbytes} bytes) in a stream record")
        start = HEADER_BYTES + (index % self.window) * self.slot_bytes
        pin = mmap.mmap(self._segment_fd, self.slot_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=start)
        piece = memoryview(pin)[:nbytes]
        if kind == NDARRAY:
            value = _array(meta, piece, copy=False)
            piece.release()
            return value, pin
        return piece, pin

    def release(self, n: int = 1) -> None:
        """Give ``n`` slots back to the agent."""
        try:
            os.write(self._credit_fd, b"\0" * n)
        except OSError:
            pass  # the agent is gone; the supervisor ends the stream

    def close(self) -> None:
        """Drop the consumer's mapping and FIFO ends (after the last chunk, or on cancel)."""
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:
                pass  # a view handed out is still alive: the mapping goes with it
            self._view = None
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
        for fd in (self.chunk_fd, self._credit_fd, self._segment_fd):
            if fd >= 0:
                os.close(fd)
        self.chunk_fd = self._credit_fd = self._segment_fd = -1


def _array(meta: bytes, piece: memoryview, *, copy: bool) -> Any:
    import numpy as np

    dtype, shape = msgpack.unpackb(meta)
    flat = np.frombuffer(piece, dtype=np.dtype(dtype))
    if copy:
        out = np.empty(len(flat), dtype=flat.dtype)
        out[...] = flat
        return out.reshape(shape)
    return flat.reshape(shape)


def _fifo_path(name: str, end: str) -> str:
    return os.path.join(shm.SHM_DIR, name + end)


# ------------------------------------------------------------------ the agent


class RingWriter:
    """The agent's side of a ring: opened at the stream's start, closed at its end.

    ``cancelled()`` tells whether the supervisor cancelled the task;
    ``wake_fd`` becomes readable when it does (the agent's reader thread
    writes to it).
    """

    def __init__(self, described: list[Any]) -> None:
        self.name, self.window, self.slot_bytes = str(described[0]), int(described[1]), int(described[2])
        self._mm: mmap.mmap | None = None
        self._chunk_fd = -1
        self._credit_fd = -1
        self._credits = self.window
        # Inline records stay small enough that a window of them fits the
        # FIFO's buffer: writing one never waits for the consumer.
        self._inline_max = min(INLINE_MAX, 32768 // max(1, self.window))

    def open(self) -> bool:
        """Attach the segment and the FIFOs; False if the stream is already over."""
        try:
            self._mm = shm.open_mapped(self.name, writable=True)
            credit = os.open(_fifo_path(self.name, "c"), os.O_RDONLY | os.O_NONBLOCK)
            self._credit_fd = credit
            self._chunk_fd = os.open(_fifo_path(self.name, "k"), os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(self._chunk_fd, True)
        except OSError:
            self.close()
            return False
        return True

    def wait_credit(self, wake_fd: int, cancelled: Any) -> bool:
        """Take a credit, waiting for the consumer if needed; False when the stream is cancelled."""
        if self._credits > 0:
            self._credits -= 1
            return True
        mm = self._mm
        assert mm is not None
        since = time.monotonic()
        _PAUSE.pack_into(mm, 0, since, _PAUSE.unpack_from(mm, 0)[1])
        try:
            while True:
                if cancelled():
                    return False
                ready, _, _ = select.select([self._credit_fd, wake_fd], [], [])
                if self._credit_fd in ready:
                    try:
                        got = len(os.read(self._credit_fd, 4096))
                    except BlockingIOError:
                        continue
                    if got == 0:
                        return False  # the consumer closed its end: nobody will read on
                    self._credits += got - 1
                    return True
        finally:
            _PAUSE.pack_into(mm, 0, 0.0, _PAUSE.unpack_from(mm, 0)[1] + time.monotonic() - since)

    def record_for(self, index: int, value: Any) -> bytes | None:
        """Put ``value`` in its slot or record; the record to send, or None if it must go as a frame."""
        mm = self._mm
        assert mm is not None
        meta = b""
        raw, kind = _raw(value)
        if raw is None:
            encoded = codec.encode(value)
            if len(encoded) <= self._inline_max:
                return RECORD.pack(index, INLINE, len(encoded), 0) + encoded
            raw, kind = memoryview(encoded), CODEC
        elif kind == NDARRAY:
            raw, meta = raw
        nbytes = raw.nbytes
        if nbytes > self.slot_bytes:
            return None
        start = HEADER_BYTES + (index % self.window) * self.slot_bytes
        mm[start : start + nbytes] = raw
        return RECORD.pack(index, kind, nbytes, len(meta)) + meta

    def queued(self, index: int) -> bytes:
        return RECORD.pack(index, QUEUE, 0, 0)

    def send(self, record: bytes) -> bool:
        """Write one record; False if the consumer is gone."""
        try:
            os.write(self._chunk_fd, record)
        except BrokenPipeError:
            return False
        return True

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        for fd in (self._chunk_fd, self._credit_fd):
            if fd >= 0:
                os.close(fd)
        self._chunk_fd = self._credit_fd = -1


def _raw(value: Any) -> tuple[Any, int]:
    """(bytes to put in a slot, kind) for raw values; (None, 0) for values to encode.

    For an ndarray the first element is ``(byte view, meta)``.
    """
    t = type(value)
    if t is bytes or t is bytearray:
        return memoryview(value), BYTES if t is bytes else BYTEARRAY
    if t is memoryview:
        return (value.cast("B"), BYTES) if value.c_contiguous else (None, 0)
    if t.__name__ == "ndarray" and t.__module__ == "numpy" and not value.dtype.hasobject:
        if not value.flags.c_contiguous:
            value = value.copy()  # C order: one contiguous run of bytes
        meta = msgpack.packb([value.dtype.str, list(value.shape)])
        return (memoryview(value.reshape(-1).view("u1")), meta), NDARRAY
    return None, 0
