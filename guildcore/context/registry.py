"""Supervisor side: generations, which task holds which, and cleanup.

``ContextRegistry.share(mapping)`` writes a new generation and supersedes the
previous one; ``acquire(task_id)`` hands the current generation to a task
being dispatched and ``release(task_id)`` lets go of it when the task ends
(DONE, FAILED or CANCELLED). A superseded generation is unlinked as soon as
no task holds it; ``close()`` unlinks everything. ``sweep_stale`` removes
segments whose supervisor died without cleaning up.

Ownership: only the supervisor unlinks; agents only map and unmap.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Mapping

from guildcore import shm
from guildcore.context.ref import ContextRef

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.context.writer import ContextHandle


class ContextRegistry:
    """The supervisor's record of its context generations.

    Thread-safe: ``share`` may run on a caller thread while the owner loop
    acquires and releases. Calls are short (no I/O but the write itself).
    """

    def __init__(self, *, owner_pid: int | None = None) -> None:
        self._owner_pid = os.getpid() if owner_pid is None else owner_pid
        self._lock = threading.Lock()
        self._generation = 0
        self._current: ContextHandle | None = None
        self._live: dict[int, ContextHandle] = {}  # generation -> handle, not yet unlinked
        self._held: dict[Hashable, ContextHandle] = {}  # task id -> the generation it holds
        self._closed = False

    def __repr__(self) -> str:
        return f"<ContextRegistry gen={self._generation} live={sorted(self._live)} held={len(self._held)}>"

    def __enter__(self) -> ContextRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def current(self) -> ContextHandle | None:
        return self._current

    def live_generations(self) -> list[int]:
        with self._lock:
            return sorted(self._live)

    def share(self, mapping: Mapping[Any, Any]) -> ContextHandle:
        """Write ``mapping`` as the next generation; the previous one goes once released."""
        # The write happens outside the lock: it can take a while for big
        # contexts, and a failed write must leave the registry unchanged.
        with self._lock:
            if self._closed:
                from guildcore.errors import ContextError

                raise ContextError("the context registry is closed: the Guild was shut down")
            generation = self._generation = self._generation + 1
        # Imported on first share: the writer's imports (xxhash, the layout)
        # are no cost of a Guild that shares nothing.
        from guildcore.context.writer import write_context

        handle = write_context(mapping, generation=generation, owner_pid=self._owner_pid)
        with self._lock:
            previous, self._current = self._current, handle
            self._live[generation] = handle
            if previous is not None and previous.supersede():
                del self._live[previous.generation]
        return handle

    def acquire(self, task_id: Hashable) -> ContextRef | None:
        """The current generation for a task being dispatched, or None if nothing is shared."""
        with self._lock:
            handle = self._current
            if handle is None:
                return None
            if task_id in self._held:
                return self._held[task_id].ref
            self._held[task_id] = handle
            return handle.acquire()

    def release(self, task_id: Hashable) -> None:
        """The task ended; unlink its generation if it is superseded and no one else holds it."""
        with self._lock:
            handle = self._held.pop(task_id, None)
            if handle is not None and handle.release():
                self._live.pop(handle.generation, None)

    def holders(self, generation: int) -> int:
        with self._lock:
            handle = self._live.get(generation)
            return 0 if handle is None else handle.holders

    def close(self) -> None:
        """Unlink every generation (supervisor shutdown). Idempotent."""
        with self._lock:
            self._closed = True
            handles = list(self._live.values())
            self._live.clear()
            self._held.clear()
            self._current = None
        for handle in handles:
            handle.unlink()


def sweep_stale(prefix: str = shm.PREFIX, *, shm_dir: str = shm.SHM_DIR) -> list[str]:
    """Remove segments named ``{prefix}{pid}_...`` whose owner pid is dead; returns their names.

    Called when a Guild starts (see ``guildcore.shm.sweep_dead``).
    """
    return shm.sweep_dead(prefix, shm_dir=shm_dir)
