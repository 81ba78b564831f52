"""Supervisor side: write a mapping once into a segment; own and unlink it.

``write_context`` lays a mapping out as described in ``layout.py`` and
returns a ``ContextHandle``. The handle counts the tasks that hold its
generation and unlinks the segment once it is both released and superseded.
Making generations and tracking tasks is ``registry.py``'s job.

Ownership: the supervisor process that wrote a segment is the only one that
unlinks it (``ContextHandle.unlink`` is a no-op in any other process, for
instance a forked agent that inherited the handle). The writer creates the
segment through ``guildcore.shm`` and registers it with this process's
resource tracker: if the supervisor dies without unlinking, the tracker
removes it; if the tracker dies too, ``sweep_stale`` does at the next start.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from array import array
from collections.abc import Mapping
from typing import Any

import msgpack
import xxhash

from guildcore import codec, shm
from guildcore.context import layout
from guildcore.context.layout import Kind
from guildcore.context.ref import ContextRef
from guildcore.errors import ContextError, format_bytes

SHM_DIR = shm.SHM_DIR


def _key_error(key: Any, exc: Exception) -> ContextError:
    return ContextError(
        f"context key {key!r} ({type(key).__name__}) cannot be encoded: {exc}; "
        "use str, int, bytes or tuples of them as keys"
    )


def _value_error(key: Any, value: Any, exc: Exception) -> ContextError:
    return ContextError(
        f"context value for key {key!r} ({type(value).__name__}) cannot be encoded: {exc}; "
        "share plain data, bytes or numpy arrays, or make the type picklable"
    )


def _as_raw(value: Any) -> tuple[Kind, Any, bytes] | None:
    """(kind, buffer, meta) for values stored as raw buffers, None for codec values."""
    vtype = type(value)
    if vtype is bytes:
        return Kind.BYTES, value, b""
    if vtype is bytearray:
        return Kind.BYTEARRAY, value, b""
    if vtype is memoryview and value.c_contiguous:
        return Kind.MEMORYVIEW, value.cast("B"), b""
    if vtype.__module__ == "numpy" and vtype.__name__ == "ndarray":
        dt = value.dtype
        # Object arrays hold pointers and structured/sub-array dtypes do not
        # survive dtype.str: those go through the codec (pickle ext).
        if not dt.hasobject and dt.names is None and dt.subdtype is None:
            import numpy as np

            arr = np.ascontiguousarray(value)
            meta: bytes = msgpack.packb([dt.str, list(value.shape)])
            return Kind.NDARRAY, arr, meta
    return None


def _check_free_space(needed: int) -> None:
    free = shm.free_bytes(SHM_DIR)
    if free is None:
        return  # no /dev/shm (macOS): let the OS say no
    if needed > free:
        raise ContextError(
            f"context needs {format_bytes(needed)} ({needed} bytes) of shared memory but "
            f"{SHM_DIR} has only {format_bytes(free)} ({free} bytes) free; share less data, "
            f"or enlarge {SHM_DIR} (docker: --shm-size)"
        )


def _reserve(fd: int, needed: int) -> None:
    """Back every page of the new segment before writing into it.

    The free-space check above can be overtaken (another process fills
    /dev/shm meanwhile); tmpfs then kills the writer with SIGBUS on the first
    page it has no room for. Reserving first turns that into ENOSPC here.
    """
    try:
        shm.reserve(fd, needed)
    except OSError as exc:
        raise ContextError(
            f"context needs {format_bytes(needed)} ({needed} bytes) of shared memory but {SHM_DIR} "
            f"could not provide it ({exc}); share less data, or enlarge {SHM_DIR} (docker: --shm-size)"
        ) from exc


def _raw_bytes(kind: Kind, value: Any) -> memoryview:
    """The bytes of a raw value, in segment order (C order for arrays), without a copy."""
    if kind is Kind.NDARRAY:
        import numpy as np

        return memoryview(value.reshape(-1).view(np.uint8))
    return memoryview(value).cast("B")


def _write_buffer(fd: int, buf: memoryview, offset: int, data: memoryview) -> None:
    """Copy one raw value into the segment: ``pwrite`` on its descriptor, else through the mapping.

    ``pwrite`` lets tmpfs allocate the pages without a page fault per 4 KB
    that a copy through the fresh mapping takes: 256 MB in ~100 ms instead
    of ~240 ms. Hosts whose shared memory refuses ``write`` (macOS) copy.
    """
    done = 0
    if fd >= 0:
        try:
            while done < len(data):  # Linux writes at most ~2 GB per call
                done += os.pwrite(fd, data[done:], offset + done)
            return
        except OSError:
            pass
    buf[offset + done : offset + len(data)] = data[done:]


# Raw bytes from which the content digest runs in a helper thread while the
# same bytes are written: xxh3 releases the GIL, and hashing 256 MB takes
# ~27 ms that would otherwise follow the ~80 ms of writes. Below this, a
# thread costs more than it saves.
PARALLEL_DIGEST_BYTES = 16 << 20


def _raw_pieces(
    raws: list[tuple[int, Kind, Any, int]], value_offs: list[int], start: int, used: int
) -> tuple[list[bytes | memoryview], list[tuple[int, memoryview]]]:
    """What the digest reads after ``start`` (padding zeros and values, in segment order), and the writes."""
    pieces: list[bytes | memoryview] = []
    writes: list[tuple[int, memoryview]] = []
    pos = start
    for i, kind, buffer, nbytes in raws:
        if nbytes == 0:
            continue
        data = _raw_bytes(kind, buffer)
        pieces += (bytes(value_offs[i] - pos), data)  # alignment padding, then the value
        writes.append((value_offs[i], data))
        pos = value_offs[i] + nbytes
    pieces.append(bytes(used - pos))
    return pieces, writes


def _write_and_digest(
    fd: int,
    buf: memoryview,
    writes: list[tuple[int, memoryview]],
    hasher: Any,
    pieces: list[bytes | memoryview],
) -> bytes:
    """Write the raw values and finish the digest over ``pieces``, side by side when they are big."""

    failed: list[BaseException] = []

    def digest_all() -> None:
        try:
            for piece in pieces:
                hasher.update(piece)
        except BaseException as exc:  # re-raised in the caller: a partial digest must not pass
            failed.append(exc)

    helper: threading.Thread | None = None
    if sum(len(data) for _offset, data in writes) >= PARALLEL_DIGEST_BYTES:
        helper = threading.Thread(target=digest_all, name="guild-context-digest", daemon=True)
        try:
            helper.start()
        except RuntimeError:  # no thread to be had: hash after the writes
            helper = None
    try:
        for offset, data in writes:
            _write_buffer(fd, buf, offset, data)
    finally:
        if helper is not None:
            helper.join()  # Invariant: the thread reads the values; it ends before they are released
    if helper is None:
        digest_all()
    if failed:
        raise failed[0]
    return hasher.digest()  # type: ignore[no-any-return]


def _build_index(hashes: array[int], slots: int) -> array[int]:
    """The open-addressing table of ``layout.py``: linear probing, load <= 0.5."""
    table = array("Q", bytes(slots * 8))
    mask = slots - 1
    tag_mask = layout.SLOT_TAG_MASK
    for i, h in enumerate(hashes, 1):
        slot = h & mask
        while table[slot]:
            slot = (slot + 1) & mask
        table[slot] = (h & tag_mask) | i
    return table


def write_context(
    mapping: Mapping[Any, Any], *, generation: int, owner_pid: int | None = None
) -> ContextHandle:
    """Write ``mapping`` once into a new segment ``guild_{owner_pid}_{generation}_{random}``.

    Raises ``ContextError`` if a key or value cannot be encoded (naming the
    key) or if the segment would not fit in /dev/shm (with both sizes).
    """
    pid = os.getpid() if owner_pid is None else owner_pid
    n = len(mapping)
    if n >= layout.SLOT_INDEX_MASK:
        raise ContextError(
            f"context has {n} keys, more than the {layout.SLOT_INDEX_MASK - 1} a segment indexes"
        )
    slots = layout.slot_count(n)
    index_off = layout.align_up(layout.HEADER_SIZE)
    entries_off = index_off + slots * 8
    blobs_off = entries_off + n * layout.ENTRY.size

    # Pass 1: encode keys and codec values into the packed blobs region; the
    # entry columns are filled as we go (raw value offsets come in pass 2).
    encode, key_hash = codec.encode, layout.key_hash
    parts: list[bytes] = []
    hashes: array[int] = array("Q")
    key_offs: list[int] = []
    key_lens: list[int] = []
    value_offs: list[int] = []
    value_lens: list[int] = []
    kinds: list[int] = []
    meta_lens: list[int] = []
    raws: list[tuple[int, Kind, Any, int]] = []  # (entry number, kind, buffer, nbytes)
    pos = blobs_off
    for key, value in mapping.items():
        try:
            kb = encode(key)
        except Exception as exc:
            raise _key_error(key, exc) from exc
        hashes.append(key_hash(kb))
        key_offs.append(pos)
        key_lens.append(len(kb))
        parts.append(kb)
        pos += len(kb)
        raw = _as_raw(value)
        if raw is None:
            try:
                blob = encode(value)
            except Exception as exc:
                raise _value_error(key, value, exc) from exc
            parts.append(blob)
            kinds.append(Kind.CODEC)
            meta_lens.append(0)
            value_offs.append(pos)
            value_lens.append(len(blob))
            pos += len(blob)
        else:
            kind, buffer, meta = raw
            parts.append(meta)
            pos += len(meta)
            nbytes = buffer.nbytes if kind is Kind.NDARRAY else len(buffer)
            raws.append((len(kinds), kind, buffer, nbytes))
            kinds.append(kind)
            meta_lens.append(len(meta))
            value_offs.append(0)
            value_lens.append(nbytes)
    blobs_len = pos - blobs_off
    # Pass 2: raw buffers, each on a 64-byte boundary.
    buffers_off = pos = layout.align_up(pos)
    for i, _, _, nbytes in raws:
        value_offs[i] = pos
        pos = layout.align_up(pos + nbytes)
    used = max(pos, layout.HEADER_SIZE)

    _check_free_space(used)
    entries = b"".join(
        map(layout.ENTRY.pack, hashes, key_offs, value_offs, value_lens, key_lens, kinds, meta_lens)
    )
    del key_offs, key_lens, value_lens, kinds, meta_lens
    table = _build_index(hashes, slots)
    del hashes
    name = layout.segment_name(pid, generation, os.urandom(4).hex())
    try:
        fd = shm.create(name, used)
    except OSError as exc:
        raise ContextError(
            f"could not create shared-memory segment {name} of {format_bytes(used)}: {exc}"
        ) from exc
    mm: mmap.mmap | None = None
    try:
        shm.track(name)  # the tracker unlinks it if this process dies first
        _reserve(fd, used)
        mm = shm.map_fd(fd, used, writable=True)
        buf = memoryview(mm)
        layout.HEADER.pack_into(
            buf,
            0,
            layout.MAGIC,
            layout.FORMAT_VERSION,
            layout.HEADER_SIZE,
            generation,
            pid,
            n,
            slots,
            index_off,
            entries_off,
            blobs_off,
            blobs_len,
            buffers_off,
            used,
        )
        buf[index_off:entries_off] = memoryview(table).cast("B")
        del table
        buf[entries_off:blobs_off] = entries
        del entries
        buf[blobs_off : blobs_off + blobs_len] = b"".join(parts)
        del parts
        # The content digest covers all but the header (which holds generation
        # and pid): equal mappings give equal digests across runs, so results
        # cached against a context survive a restart. It is the xxh3_128 of
        # buf[HEADER_SIZE:used], streamed from the source buffers rather than
        # read back from the segment (~27 ms for 256 MB, no page faults).
        hasher = xxhash.xxh3_128(buf[layout.HEADER_SIZE : buffers_off])
        pieces, writes = _raw_pieces(raws, value_offs, buffers_off, used)
        digest = _write_and_digest(fd, buf, writes, hasher, pieces)
        # Invariant: no export of a value outlives the write.
        del pieces, writes
        buf.release()
    except BaseException:
        if mm is not None:
            mm.close()
        os.close(fd)
        shm.unlink(name)
        shm.untrack(name)
        raise
    # The supervisor keeps no mapping: agents map it, the handle only needs the name.
    mm.close()
    os.close(fd)
    return ContextHandle(name, generation=generation, size=used, owner_pid=os.getpid(), digest=digest)


class ContextHandle:
    """The supervisor's hold on one written segment.

    ``acquire()``/``release()`` count the tasks that hold this generation;
    ``supersede()`` marks it replaced by a newer one. The segment is unlinked
    once it is superseded and no task holds it, or by ``unlink()``.
    """

    def __init__(
        self, name: str, *, generation: int, size: int, owner_pid: int, digest: bytes = b""
    ) -> None:
        self.digest = digest
        self.name = name
        self.generation = generation
        self.size = size
        self.owner_pid = owner_pid
        self.holders = 0
        self.superseded = False
        self.unlinked = False

    def __repr__(self) -> str:
        state = "UNLINKED" if self.unlinked else "SUPERSEDED" if self.superseded else "CURRENT"
        return (
            f"<ContextHandle {self.name} gen={self.generation} size={format_bytes(self.size)} "
            f"holders={self.holders} {state}>"
        )

    @property
    def ref(self) -> ContextRef:
        return ContextRef(self.name, self.generation, self.size)

    def acquire(self) -> ContextRef:
        """One more task holds this generation; returns the ref to send it."""
        if self.unlinked:
            raise ContextError(
                f"context generation {self.generation} (segment {self.name}) is already unlinked"
            )
        self.holders += 1
        return self.ref

    def release(self) -> bool:
        """One task let go; returns True if that unlinked the segment."""
        if self.holders <= 0:
            raise ContextError(
                f"context generation {self.generation} released more often than acquired"
            )
        self.holders -= 1
        return self._maybe_unlink()

    def supersede(self) -> bool:
        """A newer generation replaced this one; returns True if that unlinked the segment."""
        self.superseded = True
        return self._maybe_unlink()

    def _maybe_unlink(self) -> bool:
        if self.superseded and self.holders == 0 and not self.unlinked:
            self.unlink()
            return True
        return False

    def unlink(self) -> None:
        """Remove the segment name now (idempotent). Agents' mappings stay valid until they unmap."""
        # Ownership: only the writing supervisor unlinks; a forked copy of this handle does nothing.
        if self.unlinked or os.getpid() != self.owner_pid:
            return
        self.unlinked = True
        shm.unlink(self.name)  # gone already (swept, removed by hand) is fine
        shm.untrack(self.name)
        # This process may have mapped it too, for tasks run inline: that
        # mapping alone would keep the segment's memory alive until evicted.
        view = sys.modules.get("guildcore.context.view")
        if view is not None:
            view.detach(self.name)
