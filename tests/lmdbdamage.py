"""Damage one database of an LMDB file on purpose, the way a bad disk would.

``damage_database(folder, b"ns:result")`` walks the file's B-trees (meta
page -> main database -> the named database's root) and overwrites the
page-type flags of that database's pages. Opening the environment and the
other databases still works; the first operation that reaches one of those
pages fails with ``MDB_CORRUPTED`` ("Located page was wrong type"), which is
what flipped bytes inside data pages produce, deterministically.

Layout read here (lmdb.h / mdb.c, 64-bit): a page starts with pgno(8)
pad(2) flags(2) lower(2) upper(2), then uint16 node offsets; a node is
lo(2) hi(2) flags(2) ksize(2) key data. A branch node's child page number
is lo | hi << 16 | flags << 32; a leaf node's data size is lo | hi << 16.
Meta pages 0 and 1 hold, after the header, magic(4) version(4) address(8)
mapsize(8) and the free and main MDB_db records (48 bytes each: pad(4)
flags(2) depth(2) branch(8) leaf(8) overflow(8) entries(8) root(8)), then
last_pgno(8) txnid(8).
"""

from __future__ import annotations

import os
import struct

P_BRANCH, P_LEAF = 0x01, 0x02
F_SUBDATA = 0x02
_HEADER = 16
_DB = struct.Struct("<IHHQQQQQ")


def _page(data: bytes, pgno: int, psize: int) -> bytes:
    return data[pgno * psize : (pgno + 1) * psize]


def _nodes(page: bytes) -> list[tuple[int, int, int, bytes, int]]:
    """``(lo, hi, flags, key, offset of data)`` of every node of a page."""
    lower = struct.unpack_from("<H", page, 12)[0]
    out = []
    for i in range((lower - _HEADER) // 2):
        off = struct.unpack_from("<H", page, _HEADER + 2 * i)[0]
        lo, hi, flags, ksize = struct.unpack_from("<HHHH", page, off)
        out.append((lo, hi, flags, page[off + 8 : off + 8 + ksize], off + 8 + ksize))
    return out


def _tree_pages(data: bytes, root: int, psize: int) -> tuple[list[int], list[bytes]]:
    """Page numbers of a tree, and the leaf pages' contents."""
    pages, leaves, todo = [], [], [root]
    while todo:
        pgno = todo.pop()
        page = _page(data, pgno, psize)
        pages.append(pgno)
        flags = struct.unpack_from("<H", page, 10)[0]
        if flags & P_BRANCH:
            todo += [lo | hi << 16 | nflags << 32 for lo, hi, nflags, _k, _o in _nodes(page)]
        elif flags & P_LEAF:
            leaves.append(page)
    return pages, leaves


# Page flags written over the damaged pages, by the error LMDB then reports.
DAMAGE = {
    "wrong page type": bytes(2),  # MDB_CORRUPTED
    "garbage flags": bytes.fromhex("ff7f"),  # MDB_BAD_TXN after the failed read
}


def damage_database(folder: str, name: bytes, flags: bytes = DAMAGE["wrong page type"]) -> int:
    """Overwrite the page flags of every page of database ``name``; return how many."""
    path = os.path.join(folder, "data.mdb")
    with open(path, "rb") as f:
        data = f.read()
    psize = 4096
    metas = []
    for pgno in (0, 1):
        page = _page(data, pgno, psize)
        main = _DB.unpack_from(page, _HEADER + 24 + _DB.size)
        txnid = struct.unpack_from("<Q", page, _HEADER + 24 + 2 * _DB.size + 8)[0]
        metas.append((txnid, main[-1]))
    _txnid, main_root = max(metas)
    _pages, leaves = _tree_pages(data, main_root, psize)
    for leaf in leaves:
        for _lo, _hi, node_flags, key, off in _nodes(leaf):
            if key == name and node_flags & F_SUBDATA:
                root = _DB.unpack_from(leaf, off)[-1]
                victims, _ = _tree_pages(data, root, psize)
                with open(path, "r+b") as f:
                    for pgno in victims:
                        f.seek(pgno * psize + 10)
                        f.write(flags)
                return len(victims)
    raise LookupError(f"no database {name!r} in {path}")
