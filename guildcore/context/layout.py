"""Byte layout of one context segment, shared by the writer and the reader.

This module covers the on-segment format (header, index, entries, blobs,
buffers), the key hash and the segment name. It does not open, map or
unlink anything: see ``writer.py`` (supervisor side) and ``view.py``
(agent side).

A context segment is one POSIX shared-memory object, written once by the
supervisor and never changed afterwards. All integers are in native byte
order with standard sizes (``struct`` ``=``): a segment never leaves the
host that wrote it. Offsets are absolute, from the start of the segment.

  Header, 128 bytes at offset 0:
  - 8 bytes:  magic ``b"GUILDCTX"``
  - 4 bytes:  u32 format version (``FORMAT_VERSION``)
  - 4 bytes:  u32 header size in bytes (128)
  - 8 bytes:  u64 generation (the ``g.share()`` counter of the supervisor)
  - 8 bytes:  u64 owner pid (the supervisor that wrote, and will unlink, it)
  - 8 bytes:  u64 item count N
  - 8 bytes:  u64 slot count S of the index (a power of two, S >= 2N)
  - 8 bytes:  u64 index offset (64-aligned)
  - 8 bytes:  u64 entries offset
  - 8 bytes:  u64 blobs offset
  - 8 bytes:  u64 blobs length in bytes
  - 8 bytes:  u64 buffers offset (64-aligned)
  - 8 bytes:  u64 used size in bytes (the segment may be rounded up by the OS)
  - 32 bytes: reserved, zero

  Index, S x 8 bytes at the index offset: an open-addressing hash table with
  linear probing, keyed by ``h = xxh3_64(encoded key)``. A slot is a u64:
  0 for empty, else ``(h & 0xFFFFFFFF00000000) | (entry number + 1)``. The
  high half of the hash rejects most non-matching slots without touching the
  entries; the encoded key bytes settle a match. Load factor <= 0.5.

  Entries, N x 40 bytes at the entries offset, in insertion order (the
  iteration order of the view):
  - 8 bytes: u64 h, the full key hash
  - 8 bytes: u64 key offset (the codec-encoded key, in the blobs region)
  - 8 bytes: u64 value offset
  - 8 bytes: u64 value length in bytes
  - 4 bytes: u32 key length in bytes
  - 2 bytes: u16 value kind (``Kind``)
  - 2 bytes: u16 meta length: for ``Kind.NDARRAY``, a msgpack
             ``[dtype.str, shape]`` that follows the key bytes directly

  Blobs, packed, at the blobs offset: encoded keys, array meta and the
  ``guildcore.codec`` encoding of every ``Kind.CODEC`` value.

  Buffers, at the buffers offset: the raw bytes of every ``bytes``,
  ``bytearray``, ``memoryview`` and numpy array value, each starting on a
  64-byte boundary (one cache line; numpy and SIMD loads like it), arrays in
  C order.

Invariant: a segment is complete before its name is handed to anyone; the
reader trusts the header once magic, version, generation and size check.
"""

from __future__ import annotations

import enum
import struct

import xxhash

from guildcore import shm

MAGIC = b"GUILDCTX"
FORMAT_VERSION = 1
HEADER_SIZE = 128
ALIGN = 64  # one cache line; numpy's preferred alignment for SIMD loads
MAX_LOAD_FACTOR_INV = 2  # slots >= 2 x items: short probe runs, 8 bytes per slot

HEADER = struct.Struct("=8sIIQQQQQQQQQQ32x")
ENTRY = struct.Struct("=QQQQIHH")
SLOT_TAG_MASK = 0xFFFF_FFFF_0000_0000
SLOT_INDEX_MASK = 0x0000_0000_FFFF_FFFF

assert HEADER.size == HEADER_SIZE
assert ENTRY.size == 40

SEGMENT_PREFIX = shm.PREFIX

key_hash = xxhash.xxh3_64_intdigest


class Kind(enum.IntEnum):
    """How an entry's value is stored."""

    CODEC = 1  # guildcore.codec blob, decoded on first access
    BYTES = 2  # raw buffer, read back as a read-only memoryview
    BYTEARRAY = 3  # raw buffer, read back as a read-only memoryview
    MEMORYVIEW = 4  # raw buffer (C-contiguous bytes of the view), read-only memoryview
    NDARRAY = 5  # raw buffer + [dtype.str, shape] meta, read-only numpy array


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) & ~(align - 1)


def slot_count(items: int) -> int:
    """Power of two >= 2 x items (at least 8)."""
    want = max(8, items * MAX_LOAD_FACTOR_INV)
    return 1 << (want - 1).bit_length()


def segment_name(owner_pid: int, generation: int, token: str) -> str:
    """``guild_{owner pid}_{generation}_{random hex}``: ``sweep_stale`` reads the pid back."""
    return f"{SEGMENT_PREFIX}{owner_pid}_{generation}_{token}"
