"""An agent's end of its pipe, for agents forked from the template.

``Channel`` sends and receives whole frames laid out as
``multiprocessing.Connection`` lays them out, which is what the supervisor's
``wire.FrameReader`` and ``FrameWriter`` read and write:

    # - 4 bytes: big-endian signed length n of the frame, or -1, then
    # - 8 bytes: big-endian unsigned length (frames of 2 GiB and more)
    # - n bytes: the frame

Why not ``multiprocessing.connection.Connection`` itself: importing that
module imports ``tempfile``, ``shutil`` (with ``bz2`` and ``lzma``),
``random`` and ``subprocess``, 15-30 ms that the template paid before it
could fork the first agent, and the caller paid again for its end of the
pipe; a script's first result waited for both. An agent uses four methods
of it (``send_bytes``, ``recv_bytes``, ``fileno``, ``close``), and the
supervisor only the file descriptor of its end (a plain socket).

It answers as ``Connection`` does where an agent can tell: ``EOFError`` at
the end of the stream between frames, ``OSError`` at an end inside a frame
or on a closed channel. It does not cover the supervisor's end (``wire``)
nor forkserver and spawn agents, which get the stdlib's ``Connection``.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
# Frames up to this size go in one write with their header.
_JOIN_BYTES = 16 * 1024


class Channel:
    """One end of a stream socket carrying length-prefixed frames, blocking."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise OSError("handle is closed")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Write one whole frame (blocks until the pipe has taken it all)."""
        fd = self.fileno()
        view = memoryview(data).cast("B")
        n = view.nbytes
        header = _HEADER.pack(n) if n <= 0x7FFFFFFF else _HEADER.pack(-1) + _LONG_HEADER.pack(n)
        if n <= _JOIN_BYTES:
            _write_all(fd, memoryview(header + view.tobytes()))
        else:
            _write_all(fd, memoryview(header))
            _write_all(fd, view)

    def recv_bytes(self) -> bytes:
        """Read one whole frame (blocks until it has arrived)."""
        fd = self.fileno()
        (n,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, first=True))
        if n == -1:
            (n,) = _LONG_HEADER.unpack(_read_exactly(fd, _LONG_HEADER.size))
        return _read_exactly(fd, n)

    def __repr__(self) -> str:
        return f"<Channel fd={self._fd}>"


def _write_all(fd: int, view: memoryview) -> None:
    while view.nbytes:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, n: int, *, first: bool = False) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            if first and left == n:
                raise EOFError
            raise OSError("got end of file during message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
