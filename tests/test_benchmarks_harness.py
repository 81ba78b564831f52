"""The benchmark runner on a fake suite: interleaving, medians, ratios, files."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.__main__ import discover, main
from benchmarks.harness import Bench, render_markdown

FAKE_SUITE = """
NAME = "fake"
calls = []

def run(bench):
    bench.compare(
        "tiny",
        {"guildcore": lambda: calls.append("g"), "peer": lambda: calls.append("p")},
        number=2,
        baseline="peer",
        unit="us",
    )
    bench.record("external", "guildcore pool", [0.2, 0.1, 0.3], unit="s")
    bench.record(case="external", method="other pool", times=[0.4, 0.4, 0.5], unit="s", note="legacy spelling")
    bench.skip("missing peer", "not installed")
    bench.note("quick=%s repeat=%d" % (bench.quick, bench.repeat))
"""


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    package = tmp_path / "fakebench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "suite_fake.py").write_text(textwrap.dedent(FAKE_SUITE))
    (package / "suite_broken.py").write_text(
        "NAME = 'broken'\ndef run(bench):\n    raise RuntimeError('boom')\n"
    )
    (package / "helper.py").write_text("")  # not a suite
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fakebench"
    for name in [m for m in sys.modules if m.startswith("fakebench")]:
        del sys.modules[name]


def test_runner_writes_tables_json_and_index(
    fake_package: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert main(["fake", "--quick", "--out", str(out)], package=fake_package) == 0
    printed = capsys.readouterr().out
    assert "| tiny | guildcore |" in printed and "x peer" in printed

    data = json.loads((out / "fake.json").read_text())
    assert data["suite"] == "fake" and data["quick"] is True and data["repeat"] == 3
    tiny, external = data["groups"]
    assert tiny["unit"] == "µs" and tiny["reference"] == "peer"
    assert len(tiny["samples"]["guildcore"]) == 3 and len(tiny["samples"]["peer"]) == 3
    assert set(tiny["guildcore_to_peer"]) == {"guildcore / peer"}
    assert external["medians"] == {"guildcore pool": 0.2, "other pool": 0.4}
    assert external["reference"] == "guildcore pool"  # no baseline: ours
    assert external["ratios"] == {"other pool": pytest.approx(2.0)}
    assert external["notes"] == {"other pool": "legacy spelling"}
    assert data["skipped"] == {"missing peer": "not installed"}
    assert data["machine"]["python"] and data["machine"]["cores"]

    md = (out / "fake.md").read_text()
    assert "- skipped missing peer: not installed" in md and "- quick=True repeat=3" in md
    index = (out / "latest.md").read_text()
    assert "machine:" in index and "## fake" in index
    assert f"- reproduce: `python -m benchmarks fake --quick --out {out}`" in index


def test_compare_interleaves_systems(fake_package: str, tmp_path: Path) -> None:
    main(["fake", "--repeat", "4", "--out", str(tmp_path)], package=fake_package)
    calls = sys.modules[f"{fake_package}.suite_fake"].calls
    # one warm-up call each, then rounds of 2 calls per system, in turns
    assert calls == ["g", "p"] + ["g", "g", "p", "p"] * 4


def test_a_failing_suite_is_reported_and_others_run(
    fake_package: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path)], package=fake_package) == 1
    err = capsys.readouterr().err
    assert "suite broken failed" in err and "RuntimeError: boom" in err
    assert (tmp_path / "fake.json").exists() and not (tmp_path / "broken.json").exists()


def test_unknown_suite_and_list(fake_package: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["nope"], package=fake_package)
    assert "unknown suite(s) nope; available: broken, fake" in capsys.readouterr().err
    assert main(["--list"], package=fake_package) == 0
    assert capsys.readouterr().out.split() == ["broken", "fake"]


def test_real_suites_are_discovered() -> None:
    assert "codec" in discover()


def test_bench_checks_its_arguments() -> None:
    bench = Bench("x")
    assert bench.repeat == bench.repeats >= 3
    with pytest.raises(ValueError, match=r"unit must be one of"):
        bench.compare("g", {"a": lambda: None}, unit="MB")
    with pytest.raises(ValueError, match=r"got no samples"):
        bench.record("g", "a", [])
    bench.record("g", "a", [1.0], unit="ms")
    with pytest.raises(ValueError, match=r"group 'g' is in ms, cannot add samples in s"):
        bench.record("g", "b", [1.0], unit="s")
    assert Bench("y", repeat=1).repeat == 3  # never fewer than 3
    assert "| g | a | 1.00 | ms |  | 1 |" in render_markdown(bench)  # no reference: no ratio


# A program whose child outlives it: the child waits on a pipe the test holds, so
# nothing is timed; the session is gone only once the test lets the child go.
_ORPHAN = "import os, sys\nif os.fork() == 0:\n    sys.stdin.read()\n    os._exit(0)\n"


def test_wait_session_gone_waits_for_a_launched_programs_helpers() -> None:
    import subprocess
    import threading

    from benchmarks import pools

    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdin=subprocess.PIPE, start_new_session=True)
    proc.wait(timeout=30)  # the program is gone; its child still reads stdin
    assert pools._session_members(proc.pid), "the child outlives the program"
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (pools.wait_session_gone(proc.pid), done.set()))
    waiter.start()
    assert not done.wait(0.2), "returned while a member of the session was alive"
    assert proc.stdin is not None
    proc.stdin.close()  # the child reads EOF and exits
    assert done.wait(30)
    waiter.join()
    assert pools._session_members(proc.pid) == []


def test_wait_session_gone_kills_what_outlives_its_deadline() -> None:
    import subprocess

    from benchmarks import pools

    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdin=subprocess.PIPE, start_new_session=True)
    proc.wait(timeout=30)
    pools.wait_session_gone(proc.pid, timeout_s=0.1)
    assert pools._session_members(proc.pid) == []
    assert proc.stdin is not None
    proc.stdin.close()
