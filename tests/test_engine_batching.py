"""Batching identical work and task groups, on a real Guild and as pure functions.

Equal items of a ``map(..., cache=True)`` run once (the caller promised a
pure function); a plain ``map`` runs every item. A task group cancels the
queued tasks of the maps its thread made.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from guildcore import Guild
from guildcore.engine.batching import group_by_key, spread
from guildcore.engine.taskgroup import TaskGroup
from tests import procwork
from tests.faults import make_fifo, signal_started, wait_started


@pytest.fixture
def guild(tmp_path: Path) -> Iterator[Guild]:
    with Guild(max_agents=2, caching={"path": str(tmp_path / "cache")}) as g:
        yield g


def test_group_by_key() -> None:
    run, source = group_by_key([b"a", None, b"a", b"b", None, b"b", b"a"])
    assert run == [0, 1, 3, 4]  # first of each key; keyless items always run
    assert spread(["A", "n1", "B", "n2"], source) == ["A", "n1", "A", "B", "n2", "B", "A"]
    assert group_by_key([]) == ([], [])


def test_cached_maps_batch_equal_items_and_plain_maps_do_not(guild: Guild, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    items = [(1, str(log)), (1, str(log)), (2, str(log)), (1, str(log))]
    assert guild.starmap(procwork.calls_counted, items, cache=True) == [10, 10, 20, 10]
    assert sorted(log.read_text().split()) == ["1", "2"]
    assert guild.stats()["batching"] == {"duplicates_saved": 2}
    log.write_text("")
    assert guild.starmap(procwork.calls_counted, items) == [10, 10, 20, 10]  # may be impure: all run
    assert sorted(log.read_text().split()) == ["1", "1", "1", "2"]
    assert guild.stats()["batching"] == {"duplicates_saved": 2}


def test_a_task_group_cancels_what_is_still_queued(tmp_path: Path) -> None:
    started, release = make_fifo(str(tmp_path / "started")), make_fifo(str(tmp_path / "release"))
    log = tmp_path / "calls.log"
    group = TaskGroup()
    errors: list[BaseException] = []
    with Guild(max_agents=1, min_agents=1) as g:

        def step() -> None:
            with group.active():
                try:
                    g.starmap(procwork.held, [(i, started, release, str(log)) for i in range(10)], chunksize=1)
                except BaseException as exc:
                    errors.append(exc)

        t = threading.Thread(target=step, name="test-step")
        t.start()
        wait_started(started)  # item 0 runs; the others are queued or prefetched
        cancelled = group.cancel()
        signal_started(release)
        t.join(timeout=30)
    assert cancelled >= 1 and len(errors) == 1 and isinstance(errors[0], CancelledError), errors
    ran = log.read_text().split()
    assert ran[0] == "0" and len(ran) == 10 - cancelled  # cancelled chunks never ran
    assert group.items_total == 10
