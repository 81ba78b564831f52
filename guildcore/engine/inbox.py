"""The supervisor's inbox: how caller threads reach the owner thread.

This module covers the one piece of the supervisor that caller threads
touch: a deque of ``(kind, payload)`` requests and a wake-up pipe. A caller
``post``s and, unless a wake-up is already pending, writes one byte; the
owner thread waits on ``wake_fd`` with its selector, calls ``woken`` when it
is readable, and drains the requests with ``take``. At the end of the loop
``close`` refuses later posts and hands back what raced with the end.

It does not cover what the requests mean nor how they are served (the
owner loop, ``supervisor``).

Ownership: callers only ``post``; the owner thread alone calls ``woken``,
``take`` and ``close``.
"""

from __future__ import annotations

import os
import threading
from collections import deque

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any


class Inbox:
    """A thread-safe queue of requests with a wake-up pipe for a selector."""

    def __init__(self) -> None:
        self._items: deque[tuple[str, Any]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_pending = threading.Event()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def wake_fd(self) -> int:
        """Readable when a request was posted since the last ``woken``."""
        return self._wake_r

    def post(self, kind: str, payload: Any) -> bool:
        """Queue a request and wake the owner; False once the inbox is closed."""
        with self._lock:
            if self._closed:
                # Race: a late caller (a stream dropped by the garbage collector,
                # a stats() call) after the loop ended. The wake-up fds are
                # closed and their numbers may belong to another file by now.
                return False
            self._items.append((kind, payload))
            # Race: the flag may be cleared by the owner right after we test it;
            # then we write a byte we did not need. Never the other way round,
            # because the owner clears the flag before draining the inbox.
            if not self._wake_pending.is_set():
                self._wake_pending.set()
                try:
                    os.write(self._wake_w, b"\0")
                except (BlockingIOError, OSError):
                    pass
        return True

    def woken(self) -> None:
        """The owner saw ``wake_fd`` readable: consume the wake-up."""
        # Race: read the bytes first, then clear the flag. The other
        # order loses a wake-up: a caller that sets the flag and
        # writes between the clear and the read has its byte swallowed
        # while the flag stays set, so later callers write nothing and
        # the loop sleeps on a non-empty inbox (streams, which post a
        # credit per chunk, hit this within a few thousand chunks).
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        self._wake_pending.clear()

    def __bool__(self) -> bool:
        return bool(self._items)

    def take(self) -> tuple[str, Any]:
        """The oldest request; the inbox must not be empty."""
        return self._items.popleft()

    def close(self) -> list[tuple[str, Any]]:
        """Refuse later posts, close the pipe; returns the requests not yet taken."""
        with self._lock:
            self._closed = True
        left = list(self._items)
        self._items.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        return left
