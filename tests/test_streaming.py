"""Streaming: generators chunk by chunk under backpressure, big results, imap windows.

Synchronisation is through FIFOs the agent writes to and the test reads with
deadlines (``streamwork.LineReader``); the only timed waits check that
something does *not* happen (the agent stays paused) or outlast a timeout.
"""

from __future__ import annotations

import gc
import io
import os
import signal
import threading

import faults
import pytest
import streamwork

import guildcore
from guildcore import AgentDied, Guild, SerializationError, TaskCancelled, TaskTimeout, codec
from guildcore.engine import shmbuf

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("backend")]

WINDOW = 4
CHUNK = 256 * 1024  # ring slots small enough to keep the tests light


@pytest.fixture
def guild() -> Guild:
    with Guild(max_agents=1, min_agents=1, streaming={"window": WINDOW, "chunk_size": CHUNK}) as g:
        yield g


def _segments() -> set[str]:
    prefix = f"guild_{os.getpid()}_"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


# ------------------------------------------------------------ generators


def test_first_chunk_arrives_before_the_generator_finishes(guild: Guild, tmp_path: object) -> None:
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    it = guild.stream(streamwork.first_then_wait, release)
    # The generator is now blocked until we release it: "first" can only
    # reach us if it was sent as soon as it was yielded.
    assert next(it) == "first"
    faults.release(release)
    assert list(it) == ["second"]
    assert it.future.result(timeout=10) is None


def test_slow_consumer_pauses_the_agent(guild: Guild, tmp_path: object) -> None:
    progress = streamwork.LineReader(os.path.join(str(tmp_path), "progress"))
    try:
        it = guild.stream(streamwork.counted, progress.path, 100, CHUNK)
        # Nothing consumed: the agent sends WINDOW chunks, produces one more
        # (it waits for a credit only once it has the value), then stops.
        for i in range(WINDOW + 1):
            assert progress.line() == f"produced {i}"
        assert progress.line(timeout_s=0.5) is None, "the agent kept producing past its credit window"
        # Each chunk taken lets exactly one more be produced.
        for taken in range(1, 4):
            item = next(it)
            assert item == bytes([taken - 1]) * CHUNK  # through the ring, copied out
            assert progress.line() == f"produced {WINDOW + taken}"
            assert progress.line(timeout_s=0.3) is None
        rest = list(it)
        assert len(rest) == 97 and rest[-1] == bytes([99]) * CHUNK
    finally:
        progress.close()


def test_close_cancels_the_task_and_frees_the_agent(guild: Guild, tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "finally")
    it = guild.stream(streamwork.forever_with_finally, marker)
    agent_pid = next(it)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    # One agent only: this runs on the agent that ran the stream, after it
    # closed the generator, so its finally has run by now.
    assert guild.submit(faults.pid).result(timeout=10) == agent_pid
    with open(marker) as f:
        assert f.read() == "finally ran"
    assert guild.stats()["counters"]["cancelled"] == 1


def test_abandoned_iterator_cancels_the_task(guild: Guild, tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "finally")
    it = guild.stream(streamwork.forever_with_finally, marker)
    agent_pid = next(it)
    del it
    gc.collect()
    assert guild.submit(faults.pid).result(timeout=10) == agent_pid
    assert os.path.exists(marker)


def test_exception_mid_stream_comes_after_the_chunks_before_it(guild: Guild) -> None:
    got = []
    with pytest.raises(ValueError, match="boom after 3"):
        for item in guild.stream(streamwork.fails_after, 3):
            got.append(item)
    assert got == [0, 1, 2]


def test_unencodable_chunk_fails_with_its_index(guild: Guild) -> None:
    got = []
    with pytest.raises(SerializationError, match=r"chunk 2 of stream task \d+ .*cannot be encoded"):
        for item in guild.stream(streamwork.unencodable_at, 2):
            got.append(item)
    assert got == [0, 1]
    assert guild.submit(faults.inc, 1).result(timeout=10) == 2  # the agent goes on


def test_waiting_for_the_consumer_does_not_count_against_the_timeout(guild: Guild, tmp_path: object) -> None:
    progress = streamwork.LineReader(os.path.join(str(tmp_path), "progress"))
    try:
        it = guild.stream(streamwork.counted, progress.path, 10, timeout=0.5)
        for i in range(WINDOW + 1):
            assert progress.line() == f"produced {i}"
        # Paused for three times the timeout: neither the agent's timer nor
        # the supervisor's hard budget may fire.
        threading.Event().wait(1.5)
        assert list(it) == list(range(10))
    finally:
        progress.close()


def test_production_time_still_times_out(guild: Guild) -> None:
    it = guild.stream(streamwork.one_then_spin, 2, timeout=0.3)
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(TaskTimeout, match=r"timed out after 0\.3 s of production"):
        next(it)
    assert guild.submit(faults.inc, 1).result(timeout=10) == 2


def test_agent_killed_mid_stream_raises_agent_died_after_the_chunks(guild: Guild, tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    it = guild.stream(streamwork.pid_then_hang, CHUNK, started)
    agent_pid = next(it)
    assert faults.wait_started(started) == agent_pid
    assert next(it) == b"\1" * CHUNK  # a ring chunk sent before the kill
    os.kill(agent_pid, signal.SIGKILL)
    with pytest.raises(AgentDied, match="SIGKILL"):
        next(it)
    assert not _segments(), "the stream's ring outlived its task"
    assert guild.submit(faults.inc, 1).result(timeout=30) == 2


def test_chunks_of_every_kind_round_trip(guild: Guild) -> None:
    got = list(guild.stream(streamwork.mixed_chunks, CHUNK))
    want = list(streamwork.mixed_chunks(CHUNK))
    want[4] = bytes(want[4])  # the codec hands a memoryview back as bytes
    assert got == want
    assert [type(x) for x in got] == [type(x) for x in want]
    assert not _segments()


def test_shutdown_cancels_a_paused_stream() -> None:
    with Guild(max_agents=1) as g:
        it = g.stream(streamwork.forever_with_finally, os.devnull)
        next(it)
    # Leaving the block did not wait for a consumer that is this very thread.
    with pytest.raises(TaskCancelled, match=r"task \d+ \(streamwork:forever_with_finally\) was cancelled"):
        list(it)


# ------------------------------------------------------------ big results


@pytest.fixture
def small_threshold() -> Guild:
    with Guild(max_agents=1, streaming={"stream_threshold": "1MB"}) as g:
        yield g


@pytest.mark.parametrize("fn", [streamwork.big_bytes, streamwork.big_bytearray, streamwork.big_list])
def test_big_result_comes_back_whole_through_shared_memory(small_threshold: Guild, fn: object) -> None:
    value = small_threshold.submit(fn, 3_000_000 if fn is not streamwork.big_list else 30_000).result(timeout=30)
    want = fn(3_000_000 if fn is not streamwork.big_list else 30_000)  # type: ignore[operator]
    assert value == want and type(value) is type(want)
    assert not _segments()


def test_stream_result_reads_the_raw_bytes(small_threshold: Guild, tmp_path: object) -> None:
    want = streamwork.big_bytes(5_000_000)
    with small_threshold.submit(streamwork.big_bytes, 5_000_000, stream_result=True).result(timeout=30) as r:
        assert isinstance(r, io.RawIOBase) and len(r) == len(want)
        assert not _segments()  # unlinked on arrival; the mapping lives until close
        assert r.read(10) == want[:10]
        out = bytearray(1 << 20)
        assert r.readinto(out) == 1 << 20 and out == want[10 : 10 + (1 << 20)]
        assert r.read() == want[10 + (1 << 20) :]
        r.seek(0)
        assert r.read() == want
    # Below the threshold, and for values that are not bytes: the codec's bytes.
    with small_threshold.submit(faults.add, 1, 2, stream_result=True).result(timeout=30) as r:
        assert codec.decode(r.read()) == 3
    with small_threshold.submit(streamwork.big_list, 30_000, stream_result=True).result(timeout=30) as r:
        assert codec.decode(r.read()) == streamwork.big_list(30_000)


@pytest.mark.local_only("big results through shared memory: on Dask they travel as Dask data")
def test_big_result_segment_is_not_leaked_when_the_agent_is_killed(small_threshold: Guild, tmp_path: object) -> None:
    started = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    task_id = small_threshold._supervisor.new_task_id() + 1  # the id the next submit gets
    fut = small_threshold.submit(streamwork.leave_result_segment, os.getpid(), task_id, started)
    agent_pid = faults.wait_started(started)
    assert shmbuf.result_name(os.getpid(), task_id) in _segments()
    os.kill(agent_pid, signal.SIGKILL)
    with pytest.raises(AgentDied):
        fut.result(timeout=30)
    assert not _segments()


# ------------------------------------------------------------ imap windows


def test_imap_submits_a_bounded_window_ahead_of_the_consumer() -> None:
    pulled = 0

    def source() -> object:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    with Guild(max_agents=2) as g:
        it = g.imap(faults.inc, source(), chunksize=5, window=3)
        for consumed in range(1, 200):
            assert next(it) == consumed
            # In flight: at most `window` chunks of `chunksize`, plus the chunk being handed out.
            assert pulled - consumed <= 3 * 5 + 5
        it.close()


def test_imap_unordered_hands_back_results_as_they_complete(tmp_path: object) -> None:
    release = faults.make_fifo(os.path.join(str(tmp_path), "release"))
    with Guild(max_agents=2, min_agents=2) as g:
        it = g.imap_unordered(_slow_or_fast, [(release, 0), (None, 1), (None, 2)], chunksize=1)
        # Item 0 is still blocked in its agent: another result comes back first
        # (one of 1 and 2 may be prefetched behind item 0, so only one is sure).
        first = next(it)
        assert first in (1, 2)
        faults.release(release)
        assert sorted([first, *it]) == [0, 1, 2]


def _slow_or_fast(args: tuple[str | None, int]) -> int:
    return streamwork.slow_item(*args)


# ------------------------------------------------------------ numpy and views


@pytest.mark.local_only("the shared-memory ring (slots, views in place): on Dask chunks travel as Dask data")
def test_numpy_chunks_come_through_the_ring_as_arrays(guild: Guild) -> None:
    np = pytest.importorskip("numpy")
    it = guild.stream(streamwork.arrays, CHUNK)
    got = list(it)
    want = list(streamwork.arrays(CHUNK))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert type(g) is np.ndarray and g.dtype == w.dtype and g.shape == w.shape
        assert g.tolist() == w.tolist()
        assert g.flags.writeable  # a copy the consumer owns
    # Only the array too big for a slot took the supervisor's way.
    assert it._state.received == 1


def test_a_loop_keeping_its_last_array_streams_on(guild: Guild) -> None:
    np = pytest.importorskip("numpy")
    it = guild.stream(streamwork.numbered_blocks, 5 * WINDOW, CHUNK).views()
    seen = []
    for view in it:
        arr = np.frombuffer(view, dtype=np.uint8)  # alive until the next one is bound
        seen.append(int(arr[0]))
    assert seen == [i % 256 for i in range(5 * WINDOW)]


@pytest.mark.local_only("the shared-memory ring (slots, views in place): on Dask chunks travel as Dask data")
def test_views_hand_out_chunks_in_place_and_take_slots_back(guild: Guild) -> None:
    it = guild.stream(streamwork.numbered_blocks, 12, CHUNK).views()
    kept = []
    for i, view in enumerate(it):
        assert type(view) is memoryview and view.readonly and view.nbytes == CHUNK
        assert view[0] == view[-1] == i % 256
        if i < 2:
            kept.append(bytes(view))  # a copy: keeping the view itself would hold its slot
    assert kept == [b"\0" * CHUNK, b"\1" * CHUNK]
    assert view[0] == 11  # the last view stays valid while it lives: it holds its own slot


def test_an_array_made_from_a_view_holds_its_slot_until_dropped(guild: Guild) -> None:
    np = pytest.importorskip("numpy")
    it = guild.stream(streamwork.numbered_blocks, 3 * WINDOW, CHUNK).views()
    first = np.frombuffer(next(it), dtype=np.uint8)  # pins chunk 0's slot
    for i in range(1, WINDOW):  # the other slots are still there to use
        assert np.frombuffer(next(it), dtype=np.uint8)[0] == i
    assert first[0] == 0 and first[-1] == 0  # never overwritten
    del first  # chunk 4 needs its slot: now it may come
    assert [bytes(v)[0] for v in it] == list(range(WINDOW, 3 * WINDOW))


@pytest.mark.local_only("the shared-memory ring (slots, views in place): on Dask chunks travel as Dask data")
def test_keeping_every_slot_is_an_error_not_a_hang(guild: Guild) -> None:
    np = pytest.importorskip("numpy")
    it = guild.stream(streamwork.numbered_blocks, 3 * WINDOW, CHUNK).views()
    kept = [np.frombuffer(next(it), dtype=np.uint8) for _ in range(WINDOW)]
    with pytest.raises(guildcore.GuildError, match=r"chunk 0 of this stream is still in use, and the agent needs its slot for chunk 4"):
        next(it)
    assert [int(a[0]) for a in kept] == list(range(WINDOW))
    del kept
    assert guild.submit(faults.inc, 1).result(timeout=30) == 2  # the stream was cancelled, the agent is free


@pytest.mark.local_only("the shared-memory ring (slots, views in place): on Dask chunks travel as Dask data")
def test_numpy_views_are_read_only_arrays(guild: Guild) -> None:
    np = pytest.importorskip("numpy")
    it = guild.stream(streamwork.arrays, CHUNK).views()
    first = next(it)
    assert isinstance(first, np.ndarray) and not first.flags.writeable and first.shape == (10, 100)
    assert float(first.sum()) == float(np.arange(1000).sum())
    del first
    assert sum(1 for _ in it) == 5  # list(it) would keep every chunk alive, so every slot
