"""``guild run`` and ``guild preload``: the installed command on a project, and main(argv).

The first test is the example as a user meets it: ``.guild/processes/squares.yaml``
exactly as documented, ``mymod.py`` beside ``.guild``, and the ``guild``
script (whose ``sys.path`` does not hold the working directory) run there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guildcore.cli import main

SQUARES = """\
# .guild/processes/squares.yaml
steps:
  numbers:
    run: mymod:step_list        # def step_list(n): return list(range(n))
    inputs: {n: n}              # parameter n <- the process input n
  squares:
    run: mymod:step_square      # def step_square(x): return x * x
    needs: [numbers]
    map: numbers                # one call per item of numbers' output
  total:
    run: mymod:step_total       # def step_total(xs): return sum(xs)
    needs: [squares]
    inputs: {xs: squares}       # parameter xs <- squares' output (a list)
"""

MYMOD = """\
def step_list(n): return list(range(n))
def step_square(x): return x * x
def step_total(xs): return sum(xs)
"""

GUILD = Path(sys.executable).with_name("guild")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".guild" / "processes").mkdir(parents=True)
    (tmp_path / ".guild" / "processes" / "squares.yaml").write_text(SQUARES)
    (tmp_path / "mymod.py").write_text(MYMOD)
    return tmp_path


def guild(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_") and k != "PYTHONPATH"}
    return subprocess.run([str(GUILD), *args], cwd=project, capture_output=True, text=True, env=env, timeout=120)


def steps(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in report["steps"]}


def test_squares_runs_as_written_then_reruns_only_the_changed_step(project: Path) -> None:
    done = guild(project, "run", "squares", "--input", "n=200", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout holds the JSON and nothing else
    assert report["outputs"] == {"total": 2646700}
    assert (report["process"], report["status"], report["definition"]) == ("squares", "ok", "parsed")
    assert [(s["step"], s["items"], s["cache_hits"]) for s in report["steps"]] == [
        ("numbers", 1, 0), ("squares", 200, 0), ("total", 1, 0),
    ]  # fmt: skip

    # One run in the project's history, with the step timeline (guild stats / report).
    from guildcore.metrics.history import History

    history = History(str(project / ".guild" / "metrics"))
    record = history.load(history.runs()[0]["id"])
    assert record is not None and (record["kind"], record["label"]) == ("process", "guild run squares n=200")
    assert [(x["name"], x["items"], x["status"]) for x in record["steps"]] == [
        ("numbers", 1, "done"), ("squares", 200, "done"), ("total", 1, "done"),
    ]  # fmt: skip
    assert record["steps"][0]["end"] <= record["steps"][1]["start"]

    again = json.loads(guild(project, "run", "squares", "--input", "n=200", "--json").stdout)
    assert [s["cache_hits"] for s in again["steps"]] == [1, 200, 1]
    assert [s["agents"] for s in again["steps"]] == [0, 0, 0]

    # A real edit of one step's code: that step and its dependant rerun, numbers is a hit.
    (project / "mymod.py").write_text(MYMOD.replace("return x * x", "return x * x + 1"))
    changed = json.loads(guild(project, "run", "squares", "--input", "n=200", "--json", "--all-outputs").stdout)
    assert changed["outputs"]["total"] == 2646700 + 200 and changed["outputs"]["squares"][:2] == [1, 2]
    assert [s["cache_hits"] for s in changed["steps"]] == [1, 0, 0]


def test_table_progress_and_preload(project: Path) -> None:
    done = guild(project, "run", "squares", "--input", "n=50")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["step", "status", "items", "wall", "cache", "hits", "agents"]
    assert any(line.split()[:3] == ["squares", "done", "50"] for line in done.stdout.splitlines())
    assert "process squares (version 1): ok in" in done.stdout
    events = [line.split(None, 1)[1] for line in done.stderr.splitlines()]
    assert events[0] == "numbers: started" and events[-1].startswith("total: done, 1 item in")
    assert "squares: done, 50 items in" in done.stderr

    pre = guild(project, "preload", "squares")
    assert pre.returncode == 0, pre.stderr
    assert "process squares: checked in" in pre.stdout and "modules: mymod" in pre.stdout
    assert "a new agent started with 1 of 1 modules already imported" in pre.stdout
    assert "recent processes of this project: squares" in pre.stdout
    assert 'set optimization.preload: true (or add "process:*" to it)' in pre.stdout
    shown = json.loads(guild(project, "preload", "--json").stdout)
    assert [r["name"] for r in shown["recent"]] == ["squares"]
    assert shown["preloaded_by_process_star"] == ["mymod"]


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))  # guild run puts the project first
    for name in list(os.environ):
        if name.startswith("GUILD_"):
            monkeypatch.delenv(name)
    return project


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "nope"], 2, "guild: error: unknown process 'nope': no nope.yaml in .guild/processes; processes: squares"),
        (["run", "squares"], 2, "guild: error: process 'squares' needs the input 'n' (steps.numbers.inputs.n in "
         ".guild/processes/squares.yaml line 3), which was not given; pass n=... to run_process, or --input n=VALUE to guild run"),
        (["run", "squares", "--input", "n"], 2, "guild: error: --input takes KEY=VALUE, not 'n'"),
        (["run", "squares", "--input", "n=1", "--input", "m=2"], 2,
         "guild: error: process 'squares' (.guild/processes/squares.yaml) takes no input 'm'; it takes: n"),
    ],
)  # fmt: skip
def test_usage_errors(in_project: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str) -> None:
    assert main(args) == code
    assert capsys.readouterr().err.strip() == message


def test_a_process_defined_in_python_runs_by_module_and_name(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tests.procwork:SQUARES", "--json", "--agents", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["process"], report["outputs"], report["definition"]) == ("py-squares", {"total": 285}, "python")
    assert main(["run", "tests.procwork:step_list"]) == 2
    assert capsys.readouterr().err.strip() == "guild: error: tests.procwork:step_list is a function, not a guildcore.Process"


def test_a_failed_step_exits_1_with_the_table(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_project / ".guild" / "processes" / "bad.yaml").write_text(
        "steps:\n"
        "  boom: {run: 'tests.procwork:fail_now', inputs: {message: why}}\n"
        "  after: {run: 'tests.procwork:after', inputs: {value: boom}}\n"
        "  other: {run: 'tests.procwork:step_list', inputs: {n: count}}\n"
    )
    assert main(["run", "bad", "--input", "why=no luck", "--input", "count=2", "--agents", "1"]) == 1
    out, err = capsys.readouterr()
    table = {line.split()[0]: line for line in out.splitlines()[2:5]}
    assert table["boom"].split()[1] == "failed" and "not run (boom failed)" in table["after"]
    assert table["other"].split()[1] == "done"
    assert "  boom: ValueError: no luck" in out
    assert err.splitlines()[-1] == (
        "guild: error: process 'bad' failed: step 'boom' raised ValueError: no luck; "
        "not run: after; finished: other"
    )
    assert "boom: failed: ValueError: no luck" in err and "after: not run (boom failed)" in err

    assert main(["run", "bad", "--input", "why=x", "--input", "count=2", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "failed" and report["outputs"] == {"other": [0, 1]}
    assert report["error"].startswith("process 'bad' failed")
