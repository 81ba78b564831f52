"""Chunk sizes: how many items travel in one task. The one policy for the engine.

This module covers every chunk size the engine picks by itself:

- ``auto_size``: ``map(chunksize='auto')`` over ``n`` items, before anything
  is measured;
- ``guided_sizes``: how a ``map`` cuts its items: large chunks first, down to
  the chunk size at the end;
- ``measured_size``: once routing knows an item's compute time and result
  size: chunks long enough to hide the per-chunk cost, and small enough
  that a chunk of big results comes back in a bounded piece (a stream);
- ``rate_size``: ``imap`` over an input of unknown length, from the rate
  items complete at.

It does not cover chunk sizes a caller gives (they are used as given) or
whether to use the pool at all (``routing``).
"""

from __future__ import annotations

import math

# The largest chunk imap's adaptive size picks; a map's automatic size stops
# at four times this.
MAX_AUTO_CHUNK = 8192
# Chunks per agent that map(chunksize='auto') aims for: enough that the last
# chunk's tail is short (load balance), few enough that per-chunk overhead
# (a frame each way, ~50 µs) stays far below the work.
CHUNKS_PER_AGENT = 16
# Guided chunks take 1/(agents * held * this) of the items still unchunked,
# never fewer than the chunk size, where held is what one agent may hold
# (1 + pool.prefetch). Few, large chunks keep per-chunk costs low; the last
# chunks stay small so that agents finish together on uneven work. Dividing
# by held too matters: an agent is sent its prefetched chunks at once, and no
# other agent can take them back, so big prefetched chunks would fix half
# the batch to agents before any finished.
GUIDED_SHARE = 2
# A chunk with measured items should compute at least this long: the
# supervisor's per-chunk work (a frame each way) is ~50 µs.
MIN_CHUNK_S = 0.002
# A chunk of big results brings back about this much (``routing.STREAM``).
STREAM_CHUNK_BYTES = 4 * 2**20
# imap over an input of unknown length: target run time of one chunk.
TARGET_IMAP_CHUNK_S = 0.02


def auto_size(n_items: int, agents: int) -> int:
    """Items per chunk for ``n_items`` over ``agents``, knowing nothing of the items."""
    return max(1, min(MAX_AUTO_CHUNK * 4, math.ceil(n_items / (max(1, agents) * CHUNKS_PER_AGENT))))


def guided_sizes(n_items: int, chunksize: int, *, agents: int, held: int) -> list[int]:
    """Chunk lengths covering ``n_items``: large first, down to ``chunksize / held`` at the end.

    An agent is sent ``held`` chunks at once and no other agent can take
    them back, so at the end of a batch one agent may sit idle while another
    still holds its last ``held`` chunks. Chunks of ``chunksize / held`` at
    the end pin no more work to one agent than a single chunk of
    ``chunksize`` would without prefetch. On the refactor process (734
    files of 1-50 ms, 2 agents, 3 held) the last chunks of 23 files left
    one agent idle for up to 0.24 s at the end.
    """
    share = max(1, agents) * max(1, held) * GUIDED_SHARE
    floor = max(1, -(-chunksize // max(1, held)))
    sizes = []
    left = n_items
    while left > 0:
        size = min(left, max(floor, -(-left // share)))
        sizes.append(size)
        left -= size
    return sizes


def measured_size(n_items: int, agents: int, *, item_s: float, result_bytes: int = 0) -> int:
    """Items per chunk once an item's compute time and result size are known."""
    size = auto_size(n_items, agents)
    if item_s > 0:
        size = max(size, min(MAX_AUTO_CHUNK * 4, math.ceil(MIN_CHUNK_S / item_s)))
        size = min(size, max(1, math.ceil(n_items / max(1, agents))))  # every agent gets work
    if result_bytes > 0:
        size = min(size, max(1, STREAM_CHUNK_BYTES // result_bytes))
    return max(1, size)


def rate_size(items_done: int, elapsed_s: float, agents: int) -> int:
    """imap chunk size from the rate items completed at so far (1 until measured)."""
    if items_done < 2 or elapsed_s <= 0:
        return 1
    rate_per_agent = items_done / elapsed_s / max(1, agents)
    return max(1, min(MAX_AUTO_CHUNK, int(rate_per_agent * TARGET_IMAP_CHUNK_S)))
