"""A process forked while a Guild is live exits normally.

Regression: the child inherited the parent's set of live Guilds, and its
exit hook waited forever for supervisor threads that only exist in the
parent (seen as a hung ``ProcessPoolExecutor(mp_context=fork)`` worker in
the benchmarks).
"""

from __future__ import annotations

import multiprocessing

from guildcore import Guild


def _return() -> None:
    return None


def test_fork_child_of_a_live_guild_exits() -> None:
    with Guild(max_agents=1):
        child = multiprocessing.get_context("fork").Process(target=_return)
        child.start()
        child.join(timeout=30)
        try:
            assert child.exitcode == 0
        finally:
            if child.exitcode is None:
                child.kill()
                child.join()
