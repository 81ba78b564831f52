"""An agent's pipe, read and written without ever blocking the owner loop.

This module covers the supervisor's end of one agent's pipe (a socket set
non-blocking): ``FrameReader`` reads it with one ``read`` per readiness and
splits what it reads into frames; ``FrameWriter`` writes frames as far as
the pipe takes them and keeps the rest until it is writable again. Frames
are laid out as ``multiprocessing.Connection`` lays them out (the agent's
end is one, ``send_bytes`` and ``recv_bytes``):

    # - 4 bytes: big-endian signed length n of the frame, or -1, then
    # - 8 bytes: big-endian unsigned length (frames of 2 GiB and more)
    # - n bytes: the frame

``multiprocessing``'s own ``recv_bytes`` reads a whole frame, blocking until
the last byte: an agent that writes half a frame and stops (stopped,
stuck, or hostile) would freeze the whole supervisor, and a length header of
2 GiB would make it allocate 2 GiB. Here a partial frame waits in the
reader's buffer while the loop serves everyone else, and a frame longer
than ``max_bytes`` is refused before anything is allocated for it. Small
frames that arrive together cost one read between them.

Writing has the same hazard the other way: an agent whose reader cannot
drain its pipe (the process is stopped, or a task holds the GIL in a long C
call) would block a ``send_bytes`` of a big TASK frame, and with it every
other agent's results, every timeout and every caller. Here the rest of the
frame waits in the writer; the loop asks the selector for writability.

It does not cover decoding frames (``codec``) nor the agent's end.
"""

from __future__ import annotations

import os
import select
import struct
from collections import deque

from guildcore.errors import format_bytes

# Bytes per read of small frames: results of a map chunk are usually a few KB.
# Kept under malloc's mmap threshold (128 KiB): a 256 KiB read buffer was
# mapped and unmapped at every read, and cost a chunked map a few ms.
_READ_BYTES = 64 * 1024
_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")


class FrameTooBig(Exception):
    """A frame header announced more than the reader accepts (internal)."""


class FrameReader:
    """Frames from one file descriptor, as they complete."""

    __slots__ = ("_buf", "_fd", "_frame", "_got", "eof", "max_bytes")

    def __init__(self, fd: int, max_bytes: int | None = None) -> None:
        self._fd = fd
        self.max_bytes = max_bytes
        self._buf = bytearray()  # bytes read, not yet part of a frame being filled
        self._frame: bytearray | None = None  # a big frame being filled in place
        self._got = 0  # bytes of _frame filled so far
        self.eof = False

    def read(self) -> list[bytes | bytearray]:
        """Read once (the fd must be readable) and return every frame completed.

        Sets ``eof`` at the end of the stream. Raises ``FrameTooBig`` for a
        frame over ``max_bytes``; the reader is unusable after that.
        """
        if self._frame is not None:
            self._fill()
            return self._complete()
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return []  # woken for nothing (another reader of the readiness took it)
        if not data:
            self.eof = True
            return []
        buf = self._buf
        buf += data
        return self._complete()

    def drain(self) -> list[bytes | bytearray]:
        """Everything readable now, up to the end of the stream; never blocks.

        For an agent that has exited: frames it wrote before dying are read
        before its death is handled.
        """
        out: list[bytes | bytearray] = []
        while not self.eof:
            ready, _, _ = select.select([self._fd], [], [], 0)
            if not ready:
                break
            out += self.read()
        return out

    def _fill(self) -> None:
        """Read the rest of a big frame straight into its own buffer."""
        frame = self._frame
        assert frame is not None
        view = memoryview(frame)[self._got :]
        try:
            n = os.readv(self._fd, [view])
        except BlockingIOError:
            n = -1
        finally:
            view.release()
        if n < 0:
            return
        if n == 0:
            self.eof = True
        self._got += n

    def _complete(self) -> list[bytes | bytearray]:
        frames: list[bytes | bytearray] = []
        frame = self._frame
        if frame is not None:
            if self._got < len(frame):
                return frames
            frames.append(frame)  # filled in place: no copy
            self._frame = None
        buf = self._buf
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:
            pos = self._split(view, end, frames)
        if pos:
            del buf[:pos]
        return frames

    def _split(self, view: memoryview, end: int, frames: list[bytes | bytearray]) -> int:
        """Append the whole frames in ``view``; returns how many bytes they took."""
        pos = 0
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(view, pos)
            head = 4
            if size == -1:
                if end - pos < 12:
                    break
                (size,) = _LONG_HEADER.unpack_from(view, pos + 4)
                head = 12
            elif size < 0:
                raise FrameTooBig(f"a frame header with a negative length ({size})")
            if self.max_bytes is not None and size > self.max_bytes:
                raise FrameTooBig(
                    f"a frame of {format_bytes(size)}, more than the {format_bytes(self.max_bytes)} an agent can hold"
                )
            start = pos + head
            if end - start >= size:
                frames.append(view[start : start + size].tobytes())
                pos = start + size
                continue
            if size > _READ_BYTES:
                # A big frame: allocate it once and read the rest into it.
                big = bytearray(size)
                have = end - start
                big[:have] = view[start:end]
                self._frame, self._got = big, have
                pos = end
            break
        return pos


class FrameWriter:
    """Frames to one file descriptor (non-blocking): written as far as it takes them, in order."""

    __slots__ = ("_fd", "_pending")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: deque[memoryview] = deque()  # what the pipe did not take yet, in order

    @property
    def pending(self) -> bool:
        """Bytes wait for the pipe to be writable."""
        return bool(self._pending)

    def send(self, frame: bytes) -> bool:
        """Queue ``frame`` and write what the pipe takes now; True if some of it waits.

        Raises ``OSError`` if the pipe is broken (the agent is gone).
        """
        n = len(frame)
        header = _HEADER.pack(n) if n <= 0x7FFFFFFF else _HEADER.pack(-1) + _LONG_HEADER.pack(n)
        pending = self._pending
        if pending:
            pending.append(memoryview(header))
            pending.append(memoryview(frame))
            return True
        try:
            written = os.writev(self._fd, [header, frame])
        except BlockingIOError:
            written = 0
        if written == len(header) + n:
            return False
        if written < len(header):
            pending.append(memoryview(header)[written:])
            pending.append(memoryview(frame))
        else:
            pending.append(memoryview(frame)[written - len(header) :])
        return True

    def flush(self) -> bool:
        """Write what waits, as far as the pipe takes it; True if some still waits.

        Raises ``OSError`` if the pipe is broken (the agent is gone).
        """
        pending = self._pending
        while pending:
            try:
                written = os.writev(self._fd, list(pending)[:64])
            except BlockingIOError:
                return True
            while written and pending:
                head = pending[0]
                if written >= len(head):
                    written -= len(head)
                    pending.popleft()
                else:
                    pending[0] = head[written:]
                    written = 0
        return False

    def drop(self) -> None:
        """Forget what waits (the agent is gone)."""
        self._pending.clear()
