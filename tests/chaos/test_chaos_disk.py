"""Chaos: the L3 store's disk full, its map full, its pages damaged.

In each case the results are still returned and correct; caching turns off
(disk full: one warning, nothing stored on disk by that process), evicts
(map full), or starts a fresh store with a warning (damage), so that the
next run caches again.

The full disk is real: the script runs in its own mount namespace
(``unshare -m``, root, as here and in CI) with its cache folder on a 2 MB
tmpfs; the rest of the machine is not touched.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdbdamage
import pytest

from guildcore import Guild

pytestmark = pytest.mark.timeout(180)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def payload(i: int) -> bytes:
    """50 kB that do not compress, the same for the same ``i``."""
    return random.Random(i).randbytes(50_000)


def square(i: int) -> int:
    return i * i


def test_disk_full_turns_disk_caching_off_with_one_warning(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import logging, os
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
        from guildcore import Guild

        def payload(i):
            return os.urandom(50_000) + bytes([i % 256])

        if __name__ == "__main__":
            with Guild(max_agents=2, caching={{"path": {str(mount / "cache")!r}, "disk_cache": "64MB"}}) as g:
                for run in range(2):
                    out = g.map(payload, range(200), cache=True)
                    print("run", run, len(out) == 200 and all(o[-1] == i % 256 for i, o in enumerate(out)), flush=True)
    """))
    command = f"mount -t tmpfs -o size=2m tmpfs {mount} && exec {sys.executable} {script}"
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=150,
        env={**os.environ, "PYTHONPATH": ROOT}, cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["run 0 True", "run 1 True"]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    cache_warnings = [line for line in warnings if line.startswith("WARNING guildcore.cache ")]
    assert len(cache_warnings) == 1, proc.stderr
    assert "cannot be written" in cache_warnings[0] and "results are still returned" in cache_warnings[0]
    # The run history beside the cache is skipped on the full disk, said once,
    # instead of risking the SIGBUS of an LMDB file growing on a full tmpfs.
    others = [line for line in warnings if line not in cache_warnings]
    assert len(others) <= 1 and all("was not saved to the history" in line for line in others), proc.stderr
    assert "Traceback" not in proc.stderr


def test_map_full_evicts_and_results_are_still_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Guild(max_agents=2, caching={"path": str(tmp_path / "c"), "disk_cache": "1MB"}) as g:
        for _ in range(2):
            with caplog.at_level(logging.INFO, logger="guildcore.cache"):
                out = g.map(payload, range(100), cache=True)
            assert out == [payload(i) for i in range(100)]
    assert "map full, evicted" in caplog.text


def test_damaged_store_is_rebuilt_with_a_warning_and_caches_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caching = {"path": str(tmp_path / "c")}
    expected = [i * i for i in range(3000)]
    with Guild(max_agents=2, caching=caching) as g:
        assert g.map(square, range(3000), cache=True) == expected
    assert lmdbdamage.damage_database(caching["path"], b"ns:result") > 1
    with Guild(max_agents=2, caching=caching) as g, caplog.at_level(logging.WARNING, logger="guildcore.cache"):
        assert g.map(square, range(3000), cache=True) == expected
        stats = g.stats()["cache"]
    assert "could not be used" in caplog.text and "started an empty one" in caplog.text
    assert stats["items_hit"] == 0  # the damaged entries are never served
    with Guild(max_agents=2, caching=caching) as g:
        assert g.map(square, range(3000), cache=True) == expected
        assert g.stats()["cache"]["items_hit"] == 3000  # the fresh store holds the recomputed results
    assert len(list((tmp_path / "c").glob("data.mdb.broken-*"))) == 1
