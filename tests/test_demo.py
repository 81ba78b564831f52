"""``guild demo`` on a small generated codebase: counts, cold and warm, --write twice.

The codebase (``make_codebase``): 32 modules below the root, of which 13
use ``result`` in renamed positions (a known number of times each; one of
them in ``tests/``: a project's tests are renamed with its code), 3
mention it only in a comment or a string (parsed, nothing to rename), 15
never mention it (skipped by the index) and one, in ``tests/``, does not
parse. ``--exclude tests`` leaves the ``tests/`` folder out.
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import guildcore
from guildcore.cli import main
from guildcore.demo.command import parse_rename
from guildcore.demo.refactor import refactor_source

REPO = Path(guildcore.__file__).resolve().parent.parent
WORD = re.compile(r"\bresult\b")

HELPERS = """\
def result(value):
    return value
"""

# Every `result` here is one renamed occurrence; no string holds the word.
USING = """\
import json as result
from helpers import result

def compute{n}(result, *args, **kw):
    total = result + {n}
    kw["obj"].result = total
    call(result=total)
    squares = lambda result: result * result
    return f"{{result}}!"

class Box{n}:
    result = 0

def retry{n}(x):
    global result
    result = x
    try:
        pass
    except ValueError as result:
        pass
    match x:
        case {{"k": result}}:
            pass
        case Box{n}(result=[*result]):
            pass
    def inner():
        nonlocal x
        return x.result
    return inner
"""

MENTIONS = """\
def double{n}(x):
    # the result is doubled
    return {{"result": x * 2}}["result"]
"""

PLAIN = """\
def triple{n}(x):
    return x * 3
"""


def make_codebase(root: Path) -> dict[str, int]:
    """Write the codebase; return the expected renames per changed module."""
    expected: dict[str, int] = {}
    files = {"helpers.py": HELPERS}
    for n in range(11):
        files[f"pkg/use_{n}.py" if n % 2 else f"use_{n}.py"] = USING.format(n=n)
    for n in range(3):
        files[f"mention_{n}.py"] = MENTIONS.format(n=n)
    for n in range(15):
        files[f"pkg/sub/plain_{n}.py" if n % 3 else f"plain_{n}.py"] = PLAIN.format(n=n)
    files["tests/test_uses.py"] = USING.format(n=99)
    files["tests/broken.py"] = "def broken(:\n    result\n"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if WORD.search(text) and rel.startswith(("use_", "pkg/use_", "helpers", "tests/test_")):
            expected[rel] = len(WORD.findall(text))
    (root / "use_0.py").chmod(0o640)  # --write keeps a file's mode
    return expected


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["demo", *args, "--json"]) == 0
    out = capsys.readouterr().out
    report: dict[str, Any] = json.loads(out)  # stdout holds the JSON and nothing else
    return report


@pytest.fixture
def codebase(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    root = tmp_path / "code"
    return root, make_codebase(root)


def demo_args(root: Path, tmp_path: Path) -> list[str]:
    return [
        "--path",
        str(root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--agents",
        "2",
        "--sample",
        "0",
    ]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.py"))}


def test_cold_then_warm(
    codebase: tuple[Path, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, expected = codebase
    before = snapshot(root)
    report = run_json(demo_args(root, tmp_path), capsys)
    assert report["codebase"]["files"] == 32
    assert report["codebase"]["skipped_dirs"] == ["__pycache__", "site-packages"]
    assert report["rename"] == {"old": "result", "new": "outcome"}
    seq, cold, warm = report["passes"]
    assert [p["name"] for p in report["passes"]] == ["sequential", "cold", "warm"]
    assert (cold["hit_rate"], warm["hit_rate"]) == (0.0, 1.0)
    assert seq["extrapolated"] is False and seq["digest"] == cold["digest"] == warm["digest"]
    assert warm["agents_used"] == 0  # nothing ran: every result came from disk
    assert cold["counts"] == {"changed": 13, "error": 1, "skipped": 15, "unchanged": 3}
    assert cold["changes"] == sum(expected.values())
    assert report["index"]["modules_mentioning_old"] == 17
    assert report["index"]["modules_defining_old"] == 1  # helpers.py; the rest bind it in functions
    assert report["checks"]["warm_matches_cold"] is True
    assert report["write"] is None and snapshot(root) == before

    # A second run clears the demo's cache first: cold again.
    again = run_json([*demo_args(root, tmp_path), "--sample", "5"], capsys)
    assert [p["hit_rate"] for p in again["passes"][1:]] == [0.0, 1.0]
    seq = again["passes"][0]
    assert (seq["extrapolated"], seq["sample_files"], seq["files"]) == (True, 5, 32)
    assert seq["wall_s"] > 0 and seq["digest"] == ""  # a sample's digest compares to nothing


def test_write_twice(
    codebase: tuple[Path, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, expected = codebase
    report = run_json([*demo_args(root, tmp_path), "--write"], capsys)
    assert report["write"]["files_written"] == 13 and report["write"]["problems"] == {}
    after = snapshot(root)
    for rel, text in after.items():
        if rel == "tests/broken.py":
            assert text == b"def broken(:\n    result\n"  # does not parse: left as it was
            continue
        ast.parse(text)  # still Python
        if rel in expected:  # tests included: the codebase stays consistent
            assert not WORD.search(text.decode()), rel  # gone where the index said it was used
            assert text.decode().count("outcome") == expected[rel]
    assert "tests/test_uses.py" in expected
    assert stat.S_IMODE(os.stat(root / "use_0.py").st_mode) == 0o640
    assert not [p for p in root.rglob("*.tmp")]

    second = run_json([*demo_args(root, tmp_path), "--write"], capsys)
    assert second["passes"][1]["counts"] == {"error": 1, "unchanged": 3, "skipped": 28}
    assert second["write"]["files_written"] == 0
    assert snapshot(root) == after


def test_table_and_subprocess_json(
    codebase: tuple[Path, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _expected = codebase
    assert main(["demo", *demo_args(root, tmp_path), "--rename", "triple3=treble3"]) == 0
    text = capsys.readouterr().out
    assert "32 files" in text and "rename: triple3 -> treble3" in text
    assert re.search(r"^cold\s+\S+ s\s+\S+x\s+0%\s+\d", text, re.M)
    assert re.search(r"^warm\s+\S+ s\s+\S+x\s+100%\s+0\s", text, re.M)
    assert "nothing written" in text

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "guildcore", "demo", *demo_args(root, tmp_path), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passes"][1]["counts"]["changed"] == 13


def test_exclude_leaves_folders_out(
    codebase: tuple[Path, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, expected = codebase
    (root / "pkg" / "vendored").mkdir()
    (root / "pkg" / "vendored" / "lib.py").write_text(USING.format(n=7))
    before = snapshot(root)
    args = [*demo_args(root, tmp_path), "--exclude", "tests", "--exclude", "pkg/vendored", "--write"]
    report = run_json(args, capsys)
    assert report["codebase"]["files"] == 30
    assert report["codebase"]["excluded"] == ["tests", "pkg/vendored"]
    assert report["passes"][1]["counts"] == {"changed": 12, "skipped": 15, "unchanged": 3}
    after = snapshot(root)
    for rel in ("tests/test_uses.py", "tests/broken.py", "pkg/vendored/lib.py"):
        assert after[rel] == before[rel]  # excluded: untouched
    assert sum(1 for rel in expected if after[rel] != before[rel]) == 12


def test_the_stdlib_default_keeps_test_suites_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import guildcore.demo
    from guildcore.demo.sources import SKIP_DIRS, STDLIB_SKIP_DIRS, default_root, discover

    files = discover(default_root(), skip_dirs=STDLIB_SKIP_DIRS)
    assert files and not any(part in ("test", "tests", "idle_test") for s in files for part in s.rel.split("/"))
    seen: list[Any] = []
    monkeypatch.setattr(guildcore.demo, "run_demo", lambda opts, write: seen.append(opts) or {})
    assert main(["demo", "--json"]) == 0 and main(["demo", "--path", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    assert [(o.root, o.skip_dirs) for o in seen] == [
        (default_root(), STDLIB_SKIP_DIRS),  # the stdlib sample: its test suites stay out
        (str(tmp_path), SKIP_DIRS),  # a project: its tests are part of it
    ]


@pytest.mark.parametrize(
    ("source", "renamed", "count"),
    [
        ("import result\nresult.x\n", "import result as outcome\noutcome.x", 2),
        ("import a.result\n", "import a.result", 0),
        ("from m import result, other as result\n", "from m import outcome, other as outcome", 2),
        ("from result import x\n", "from result import x", 0),
        ("x = 'result'  # result\n", "x = 'result'", 0),
        ("class result(result.Base):\n    pass\n", "class outcome(outcome.Base):\n    pass", 2),
        (
            "async def result(*result, **kw):\n    await result\n",
            "async def outcome(*outcome, **kw):\n    await outcome",
            3,
        ),
        (
            "match v:\n    case {**result}:\n        pass\n",
            "match v:\n    case {**outcome}:\n        pass",
            1,
        ),
        ("results = result_ = 1\n", "results = result_ = 1", 0),
    ],
)
def test_rename_positions(source: str, renamed: str, count: int) -> None:
    new, n = refactor_source(source.encode(), "m.py", "result", "outcome")
    assert (new, n) == (renamed + "\n", count)
    assert refactor_source(new.encode(), "m.py", "result", "outcome") == (new, 0)  # idempotent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("result", "--rename takes OLD=NEW, not 'result'"),
        ("result=class", "--rename: 'class' is not an identifier one can rename"),
        ("a=a", "--rename: OLD and NEW are both 'a'"),
    ],
)
def test_bad_rename(text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rename(text)
    assert main(["demo", "--rename", text, "--path", "."]) == 2
    assert capsys.readouterr().err == f"guild: error: {message}\n"


def test_the_example_process_does_the_demo_refactor_in_three_steps(
    codebase: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    from guildcore import Guild

    root, expected = codebase
    process = str(REPO / ".guild" / "processes" / "refactor.yaml")
    inputs = {"path": str(root), "old": "result", "new": "outcome"}
    with Guild(max_agents=2, caching={"path": str(tmp_path / "cache")}) as g:
        run = g.run_process(process, **inputs)
        report = run["report"]
        assert [r.step for r in run.steps] == ["index", "rewrite", "report"]
        assert report["files"] == 32 and report["root"] == str(root)
        assert report["counts"] == {"changed": 13, "error": 1, "skipped": 15, "unchanged": 3}
        assert report["occurrences"] == sum(expected.values())
        assert report["changed_files"] == sorted(expected)  # tests/test_uses.py among them
        assert run.record("rewrite").items == 32 and run.record("rewrite").cache_hits == 0

        again = g.run_process(process, **inputs)
        assert again["report"] == report
        assert [r.cache_hits for r in again.steps] == [0, 32, 1]  # index stats files every run

        (root / "plain_0.py").write_text("def result():\n    return 1\n")  # one file changes
        changed = g.run_process(process, **inputs)
        assert changed.record("rewrite").cache_hits == 31  # only that file is read again
        assert changed["report"]["counts"]["changed"] == 14

        excluded = g.run_process(process, **inputs, exclude=["tests"])
        assert excluded["report"]["files"] == 30


@pytest.mark.parametrize("agents", [2, None])
def test_the_demo_guild_has_room_for_every_agent(tmp_path: Path, agents: int | None) -> None:
    """The demo raises per_agent to 1 GB; total_system must still fit the pool, or the monitor holds it to one agent."""
    import warnings

    from guildcore.demo.passes import DemoOptions, _guild

    opts = DemoOptions(str(tmp_path), "a", "b", str(tmp_path / "cache"), agents=agents)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one-agent warning would fail this
        g = _guild(opts)
    try:
        limits, pool = g.config.limits, g.config.pool
        assert limits.per_agent == 10**9
        assert limits.total_system >= limits.per_agent * (agents or pool.max_agents) + limits.per_agent
    finally:
        g.shutdown()
