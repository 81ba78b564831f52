"""Streaming: 2 GB as 1 MiB chunks from an agent, against the ways to do it by hand.

Systems, all moving the same bytes from one child process to this one:

- ``guildcore stream``: ``for chunk in g.stream(gen)``; 1 MiB ``bytes``
  chunks go through the stream's shared-memory ring and each is copied out
  into a new ``bytes`` the consumer owns;
- ``guildcore stream, numpy``: the same with 1 MiB float64 arrays, each
  copied out into a new array;
- ``guildcore stream, views``: ``g.stream(gen).views()``: each chunk is a
  read-only view of its slot, which goes back once the consumer drops it;
- ``pipe recv_bytes`` / ``pipe recv_bytes_into``: a raw
  ``multiprocessing.Pipe``, chunk by chunk (a new ``bytes`` per chunk, or
  into one reused buffer: the latter keeps nothing);
- ``shm ring (2 slots)``: a bare two-slot shared-memory ring with a pipe for
  "slot full" / "slot free" notes, copying each slot into one reused buffer
  (guildcore hands out a new ``bytes`` per chunk instead); ``shm ring (2
  slots), views``: the same handing out a view of the slot, no copy;
- ``ProcessPoolExecutor``: the whole payload returned as one ``bytes``.
  It needs the payload several times over in memory (pickled in the child,
  received, unpickled), so it moves 512 MB, not 2 GB: its rate is what counts.

Every producer yields one preallocated 1 MiB ``bytes`` again and again, so
the numbers are the cost of moving, not of making, the data. Unit: GB/s
(higher is faster). Targets: guildcore (bytes and numpy chunks) at least
0.7x the bare copying ring in the same run, and the consumer's peak RSS
growing by under 64 MB while streaming (sampled every 64 chunks).

``--quick`` streams 256 MB (and 256 MB through the executor).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from benchmarks.harness import Bench
from guildcore import Guild

NAME = "streaming"

CHUNK = 1 << 20  # 1 MiB
FULL_BYTES = 2 << 30  # 2 GiB
QUICK_BYTES = 256 << 20
EXECUTOR_BYTES = 512 << 20  # one bytes object: pickled, piped, unpickled
TARGET_RING_RATIO = 0.7
TARGET_RSS_MB = 64.0
RSS_SAMPLE_EVERY = 64  # chunks

_GROUP = "1 MiB chunks, child -> parent"
RING = "shm ring (2 slots)"


# --------------------------------------------------------------- producers


def _chunks(n: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    for _ in range(n):
        yield block


def _arrays(n: int) -> Iterator[Any]:
    import numpy as np

    block = np.random.default_rng(0).random(CHUNK // 8)
    for _ in range(n):
        yield block


def _whole(nbytes: int) -> bytes:
    return b"\1" * nbytes


def _pipe_child(conn: Any, n: int) -> None:
    block = os.urandom(CHUNK)
    conn.recv_bytes()  # go: the child's start-up is not timed
    for _ in range(n):
        conn.send_bytes(block)
    conn.close()


def _ring_child(conn: Any, name: str, n: int) -> None:
    from multiprocessing.shared_memory import SharedMemory

    # Registers the name with the parent's resource tracker (shared through
    # the forkserver) again: a no-op, and the parent's unlink unregisters it.
    shm = SharedMemory(name=name)
    buf = shm.buf
    assert buf is not None
    block = os.urandom(CHUNK)
    conn.recv_bytes()  # go: the child's start-up is not timed
    freed = 0
    for i in range(n):
        if i - freed == 2:
            conn.recv_bytes()  # a slot was copied out
            freed += 1
        start = (i % 2) * CHUNK
        buf[start : start + CHUNK] = block
        conn.send_bytes(b"f")
    while freed < n:  # take every "slot free" note before closing
        conn.recv_bytes()
        freed += 1
    del buf
    shm.close()


# ----------------------------------------------------------------- systems


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def _guildcore(g: Guild, n: int, rss: list[float], *, gen: Callable[[int], Iterator[Any]] = _chunks, views: bool = False) -> float:
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    t0 = time.perf_counter()
    got = 0
    it = g.stream(gen, n)
    for i, chunk in enumerate(it.views() if views else it):
        got += chunk.nbytes if not isinstance(chunk, bytes) else len(chunk)
        if i % RSS_SAMPLE_EVERY == 0:
            peak = max(peak, proc.memory_info().rss)
    dt = time.perf_counter() - t0
    peak = max(peak, proc.memory_info().rss)
    assert got == n * CHUNK
    rss.append((peak - base) / 1e6)
    return _rate(got, dt)


def _pipe(ctx: Any, n: int, *, into: bool) -> float:
    recv, send = ctx.Pipe(duplex=True)
    child = ctx.Process(target=_pipe_child, args=(send, n))
    buf = bytearray(CHUNK)
    child.start()
    send.close()
    t0 = time.perf_counter()
    recv.send_bytes(b"go")
    got = 0
    for _ in range(n):
        got += recv.recv_bytes_into(buf) if into else len(recv.recv_bytes())
    dt = time.perf_counter() - t0
    child.join()
    recv.close()
    return _rate(got, dt)


def _ring(ctx: Any, n: int, *, copy: bool = True) -> float:
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=f"guild_{os.getpid()}_bench_ring", create=True, size=2 * CHUNK)
    try:
        view = shm.buf
        assert view is not None
        mine, theirs = ctx.Pipe(duplex=True)
        child = ctx.Process(target=_ring_child, args=(theirs, shm.name, n))
        child.start()
        theirs.close()
        t0 = time.perf_counter()
        mine.send_bytes(b"go")
        got = 0
        out = bytearray(CHUNK)  # copied into one reused buffer: the floor of a copy
        for i in range(n):
            mine.recv_bytes()  # slot full
            start = (i % 2) * CHUNK
            if copy:
                out[:] = view[start : start + CHUNK]
                got += CHUNK
            else:
                piece = view[start : start + CHUNK]
                got += piece.nbytes
                piece.release()
            mine.send_bytes(b"e")  # slot free
        dt = time.perf_counter() - t0
        child.join()
        mine.close()
        del view
    finally:
        shm.close()
        shm.unlink()
    return _rate(got, dt)


def _executor(pool: cf.ProcessPoolExecutor, nbytes: int) -> float:
    t0 = time.perf_counter()
    value = pool.submit(_whole, nbytes).result()
    dt = time.perf_counter() - t0
    assert len(value) == nbytes
    return _rate(nbytes, dt)


# --------------------------------------------------------------------- run


def run(bench: Bench) -> None:
    total = QUICK_BYTES if bench.quick else FULL_BYTES
    executor_bytes = QUICK_BYTES if bench.quick else EXECUTOR_BYTES
    n = total // CHUNK
    ctx = mp.get_context("forkserver")
    rss: list[float] = []
    rss_np: list[float] = []
    with Guild(max_agents=1, min_agents=1) as g, cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        systems: dict[str, Callable[[], float]] = {
            "guildcore stream": lambda: _guildcore(g, n, rss),
            "guildcore stream, numpy": lambda: _guildcore(g, n, rss_np, gen=_arrays),
            "guildcore stream, views": lambda: _guildcore(g, n, [], views=True),
            "pipe recv_bytes": lambda: _pipe(ctx, n, into=False),
            "pipe recv_bytes_into": lambda: _pipe(ctx, n, into=True),
            RING: lambda: _ring(ctx, n),
            "shm ring (2 slots), views": lambda: _ring(ctx, n, copy=False),
            "ProcessPoolExecutor": lambda: _executor(pool, executor_bytes),
        }
        # Warm up: start the agent and the pool's worker, touch the ring once.
        _guildcore(g, 8, [])
        _guildcore(g, 8, [], gen=_arrays)
        _executor(pool, CHUNK)
        samples: dict[str, list[float]] = {name: [] for name in systems}
        for _ in range(bench.repeat):
            for name, fn in systems.items():
                samples[name].append(fn())
    for name, values in samples.items():
        note = f"{executor_bytes >> 20} MB as one bytes" if name == "ProcessPoolExecutor" else ""
        bench.record(_GROUP, name, values, unit="GB/s", note=note, baseline=RING)
    bench.record("consumer peak RSS growth while streaming", "guildcore stream", rss, unit="MB")
    bench.record("consumer peak RSS growth while streaming", "guildcore stream, numpy", rss_np, unit="MB")
    group = bench.groups[_GROUP]
    ring = group.median(RING)
    bench.note(
        f"{total >> 20} MB per sample for the streams, {executor_bytes >> 20} MB for ProcessPoolExecutor; "
        f"GB/s: higher is faster; ratios are against the bare copying ring ({RING})"
    )
    for name in ("guildcore stream", "guildcore stream, numpy"):
        ratio = group.median(name) / ring
        bench.note(
            f"{name}: {group.median(name):.2f} GB/s = {ratio:.2f}x the bare copying ring "
            f"(target >= {TARGET_RING_RATIO}x: {'met' if ratio >= TARGET_RING_RATIO else 'NOT met'})"
        )
    worst_rss = max(rss + rss_np)
    bench.note(
        f"target peak RSS growth < {TARGET_RSS_MB:.0f} MB: worst sample {worst_rss:.1f} MB "
        f"({'met' if worst_rss < TARGET_RSS_MB else 'NOT met'})"
    )


if __name__ == "__main__":  # pragma: no cover - handy for a one-off run
    from benchmarks.__main__ import main

    raise SystemExit(main(["streaming", "--quick"]))
