"""Agent side: attach a segment read-only and read it as a lazy Mapping.

``attach(ref)`` maps a generation once per process (a small cache keyed by
segment name) and returns a ``ContextView``: a read-only Mapping whose
lookups go through the segment's index in O(1) and decode only the value
asked for, once per generation. Raw buffers come back zero-copy, read-only.
``ContextView.overlay()`` gives a task its own copy-on-write MutableMapping.

Ownership: an agent never unlinks and never registers a segment. Python
3.11's ``SharedMemory(name=...)`` registers even a mere attach with the
resource tracker, which then unlinks the segment when that process exits
(and warns about a "leak"): a dying agent would take the context away from
every other agent. So the reader opens the name through ``guildcore.shm``
and maps it ``PROT_READ``: nothing is registered, and the mapping is
read-only at the OS level, so every memoryview or numpy array made from it
is read-only too.

Fork-safety: a forked agent inherits the cache and its mappings; they stay
valid (MAP_SHARED, read-only), so no re-attach is needed after fork.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping

from guildcore import codec, shm
from guildcore._errors import ContextError
from guildcore.context import layout
from guildcore.context.layout import Kind
from guildcore.context.ref import ContextRef

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

MAX_ATTACHED = 4  # generations kept mapped per agent; older ones are unmapped when unused
_MISSING = object()


def _open_readonly(name: str) -> mmap.mmap:
    return shm.open_mapped(name, writable=False)


class ContextView(Mapping["Any", "Any"]):
    """A read-only Mapping over one context generation.

    ``decode_count`` counts values decoded so far (each at most once). The
    segment's bytes are a read-only mapping of /dev/shm, or (``install``) a
    ``bytes`` copy that reached this process over the network.
    """

    def __init__(self, ref: ContextRef, mm: mmap.mmap | bytes) -> None:
        self.ref = ref
        self.name = ref.name
        self.generation = ref.generation
        self.decode_count = 0
        self.closed = False
        self._mmap: mmap.mmap | bytes | None = mm
        if len(mm) < layout.HEADER_SIZE:
            raise ContextError(
                f"segment {ref.name} is {len(mm)} bytes, too short for a context header"
            )
        mv = memoryview(mm)
        (
            magic,
            version,
            _hsize,
            generation,
            owner_pid,
            n,
            slots,
            index_off,
            entries_off,
            _blobs_off,
            _blobs_len,
            _buffers_off,
            used,
        ) = layout.HEADER.unpack_from(mv, 0)
        if magic != layout.MAGIC or version != layout.FORMAT_VERSION:
            mv.release()
            raise ContextError(
                f"segment {ref.name} is not a guildcore context of format {layout.FORMAT_VERSION} "
                f"(magic {magic!r}, version {version})"
            )
        if generation != ref.generation or used > len(mm):
            mv.release()
            raise ContextError(
                f"segment {ref.name} holds generation {generation} of {used} bytes, "
                f"not generation {ref.generation} of {ref.size} bytes"
            )
        self.owner_pid = owner_pid
        self._mv = mv
        self._n = n
        self._mask = slots - 1
        self._table = mv[index_off : index_off + slots * 8].cast("Q")
        self._entries_off = entries_off
        self._values: dict[int, Any] = {}
        self._keys: list[Any] | None = None

    def __repr__(self) -> str:
        return f"<ContextView {self.name} gen={self.generation} items={self._n} decoded={self.decode_count}>"

    # -- index -------------------------------------------------------------

    def _find(self, key: Any) -> int:
        """Entry number of ``key``, or -1. Touches only the index and that entry."""
        self._check_open()
        try:
            kb = codec.encode(key)
        except Exception:
            return -1  # a key that cannot be encoded was never written
        h = layout.key_hash(kb)
        tag = h & layout.SLOT_TAG_MASK
        mask = self._mask
        table = self._table
        slot = h & mask
        while True:
            v = table[slot]
            if v == 0:
                return -1
            if v & layout.SLOT_TAG_MASK == tag:
                i = (v & layout.SLOT_INDEX_MASK) - 1
                eh, key_off, _, _, key_len, _, _ = layout.ENTRY.unpack_from(
                    self._mv, self._entries_off + i * layout.ENTRY.size
                )
                if eh == h and self._mv[key_off : key_off + key_len] == kb:
                    return int(i)
            slot = (slot + 1) & mask

    def _check_open(self) -> None:
        if self.closed:
            raise ContextError(
                f"context generation {self.generation} (segment {self.name}) was "
                "detached in this agent; attach(ref) again"
            )

    def _entry(self, i: int) -> tuple[int, int, int, int, int, int, int]:
        e: tuple[int, int, int, int, int, int, int] = layout.ENTRY.unpack_from(
            self._mv, self._entries_off + i * layout.ENTRY.size
        )
        return e

    def _decode(self, i: int) -> Any:
        _, key_off, value_off, value_len, key_len, kind, meta_len = self._entry(i)
        raw = self._mv[value_off : value_off + value_len]
        self.decode_count += 1
        if kind == Kind.CODEC:
            return codec.decode(raw)
        if kind == Kind.NDARRAY:
            import msgpack
            import numpy as np

            meta = self._mv[key_off + key_len : key_off + key_len + meta_len]
            dtype_str, shape = msgpack.unpackb(meta)
            arr = np.frombuffer(raw, dtype=np.dtype(dtype_str)).reshape(tuple(shape))
            return arr
        return raw  # bytes-like: a read-only memoryview over the segment

    # -- Mapping -----------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        i = self._find(key)
        if i < 0:
            raise KeyError(key)
        value = self._values.get(i, _MISSING)
        if value is _MISSING:
            value = self._values[i] = self._decode(i)
        return value

    def __contains__(self, key: object) -> bool:
        return self._find(key) >= 0

    def __len__(self) -> int:
        return int(self._n)

    def __iter__(self) -> Iterator[Any]:
        self._check_open()
        if self._keys is None:
            keys = []
            for i in range(self._n):
                _, key_off, _, _, key_len, _, _ = self._entry(i)
                keys.append(codec.decode(self._mv[key_off : key_off + key_len]))
            self._keys = keys
        return iter(self._keys)

    def overlay(self) -> TaskContext:
        """A fresh copy-on-write MutableMapping over this view, for one task."""
        return TaskContext(self)

    def close(self) -> bool:
        """Unmap if nothing handed out still points into the segment; True if unmapped."""
        if self._mmap is None:
            return True
        if not self.closed:
            self.closed = True
            self._values.clear()
            self._keys = None
            self._table.release()
            self._mv.release()
        if isinstance(self._mmap, mmap.mmap):
            try:
                self._mmap.close()
            except BufferError:
                return False  # a task kept a buffer: the mapping goes when that buffer does
        self._mmap = None  # bytes: they go with the last buffer handed out
        return True


class TaskContext(MutableMapping["Any", "Any"]):
    """One task's view of the context: reads fall through to the segment,
    writes and deletes stay in this overlay and are seen by this task only.

    Values decoded from the segment are shared by the tasks of one agent for
    that generation: mutate a copy (``ctx[k] = copy(ctx[k])``), not the value.
    """

    def __init__(self, base: Mapping[Any, Any]) -> None:
        self.base = base
        self._set: dict[Any, Any] = {}
        self._deleted: set[Any] = set()

    def __repr__(self) -> str:
        return f"<TaskContext over {self.base!r} set={len(self._set)} deleted={len(self._deleted)}>"

    def __getitem__(self, key: Any) -> Any:
        if key in self._set:
            return self._set[key]
        if key in self._deleted:
            raise KeyError(key)
        return self.base[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._set[key] = value
        self._deleted.discard(key)

    def __delitem__(self, key: Any) -> None:
        found = self._set.pop(key, _MISSING) is not _MISSING
        if key not in self._deleted and key in self.base:
            self._deleted.add(key)
            found = True
        if not found:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if key in self._set:
            return True
        return key not in self._deleted and key in self.base

    def __iter__(self) -> Iterator[Any]:
        for key in self.base:
            if key not in self._deleted and key not in self._set:
                yield key
        yield from self._set

    def __len__(self) -> int:
        base = len(self.base) - len(self._deleted)
        return base + sum(1 for k in self._set if k in self._deleted or k not in self.base)


# -- the per-process attach cache ------------------------------------------

# One cache per agent process, keyed by segment name, most recent last.
_attached: OrderedDict[str, ContextView] = OrderedDict()


def attach(ref: ContextRef) -> ContextView:
    """The view of ``ref``'s generation, mapped once per process."""
    view = _attached.get(ref.name)
    if view is not None:
        _attached.move_to_end(ref.name)
        return view
    try:
        mm = _open_readonly(ref.name)
    except FileNotFoundError:
        raise ContextError(
            f"context generation {ref.generation} (segment {ref.name}) is gone: it was replaced by "
            "a newer g.share() and released, or its supervisor closed; pass the current context "
            "(the value g.share() last returned) to new tasks"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty segment
        raise ContextError(
            f"cannot attach context generation {ref.generation} (segment {ref.name}): {exc}"
        ) from exc
    view = ContextView(ref, mm)
    _attached[ref.name] = view
    while len(_attached) > MAX_ATTACHED:
        _, old = _attached.popitem(last=False)
        old.close()
    return view


def install(ref: ContextRef, data: bytes) -> ContextView:
    """The view of ``ref``'s generation over ``data``, a copy of its segment's bytes.

    For processes on another host than the segment (Dask workers), which
    received the bytes rather than a name to map. Later ``attach(ref)`` calls,
    and ``ContextRef`` arguments, find it like a mapped generation.
    """
    view = _attached.get(ref.name)
    if view is None:
        view = ContextView(ref, data)
        _attached[ref.name] = view
        while len(_attached) > MAX_ATTACHED:
            _, old = _attached.popitem(last=False)
            old.close()
    _attached.move_to_end(ref.name)
    return view


def detach(name: str) -> bool:
    """Forget one generation in this process; True if it was unmapped."""
    view = _attached.pop(name, None)
    return True if view is None else view.close()


def detach_all() -> None:
    """Unmap every attached generation (agent shutdown)."""
    while _attached:
        _, view = _attached.popitem()
        view.close()


def attached_names() -> list[str]:
    return list(_attached)
