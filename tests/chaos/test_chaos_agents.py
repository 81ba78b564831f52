"""Chaos: agents killed at random, and agents that send what no agent should.

A killer thread SIGKILLs random busy agents while a 100,000-item map runs:
with retries every item comes back correct, none lost or duplicated, and
nothing hangs; without retries every failure says what happened (AgentDied,
with the signal's name) and everything else completes. Hostile agents write
short, mistyped, garbage and oversized frames into their pipe: each is
killed, and the supervisor and every other task are fine.
"""

from __future__ import annotations

import os
from concurrent.futures import Future

import chaoswork
import faults
import pytest

from guildcore import AgentDied, Guild

pytestmark = pytest.mark.timeout(240)

N = 100_000


def test_a_killer_among_the_agents_loses_no_item_of_a_map_with_retries() -> None:
    expected = [chaoswork.work(x) for x in range(N)]
    with Guild(max_agents=2, min_agents=2, timeout=None) as g:
        with chaoswork.Killer(g, most=10) as killer:
            out = g.map(chaoswork.work, range(N), retries=3)
        assert len(out) == N and out == expected  # in order: nothing lost, nothing twice
        counters = g.stats()["counters"]
    assert len(killer.kills) >= 3, "the killer found too few busy agents to prove anything"
    assert counters["agents_died"] >= len(killer.kills) - 1  # one may land as its agent finished
    assert counters["failed"] == 0 and counters["split"] >= 1


def test_without_retries_each_failure_names_its_cause_and_the_rest_completes() -> None:
    chunks = [list(range(i, i + 500)) for i in range(0, N // 2, 500)]
    with Guild(max_agents=2, min_agents=2, timeout=None) as g:
        with chaoswork.Killer(g, most=8) as killer:
            futures: list[Future[list[int]]] = [g.submit(chaoswork.work_chunk, c) for c in chunks]
            died = 0
            for chunk, fut in zip(chunks, futures, strict=True):
                try:
                    assert fut.result(timeout=120) == [chaoswork.work(x) for x in chunk]
                except AgentDied as exc:
                    died += 1
                    assert exc.exitcode == -9 and "died with signal SIGKILL (-9)" in str(exc)
                    assert exc.pid in killer.kills
        assert g.stats()["counters"]["failed"] == died
    assert killer.kills and 1 <= died <= len(killer.kills)


HOSTILE = ["short", "short-error", "wrong-type", "garbage", "not-a-frame", "supervisor-kind", "oversized"]


def test_hostile_agents_are_killed_and_nothing_else_notices(tmp_path: object) -> None:
    fifo = faults.make_fifo(os.path.join(str(tmp_path), "started"))
    expected = [chaoswork.work(x) for x in range(2000)]
    with Guild(max_agents=2, min_agents=2, per_agent="100MB", timeout=None) as g:
        assert g.map(chaoswork.work, range(2000), chunksize=50) == expected
        for kind in HOSTILE:
            hostile = g.submit(faults.send_raw, kind, fifo)
            honest = [g.submit(chaoswork.work_chunk, list(range(i, i + 100))) for i in range(0, 2000, 100)]
            faults.wait_started(fifo)
            with pytest.raises(AgentDied, match=r"sent a frame the supervisor could not read"):
                hostile.result(timeout=60)
            assert [x for f in honest for x in f.result(timeout=60)] == expected, kind
        stats = g.stats()["counters"]
        assert stats["agents_killed_malformed"] == len(HOSTILE) and stats["failed"] == len(HOSTILE)
        assert g.map(chaoswork.work, range(2000), chunksize=50) == expected
