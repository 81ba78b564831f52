"""No ``guild`` command ends in a raw traceback: damaged stores and other bad input.

Each command runs as a real subprocess (``python -m guildcore``) against a
store whose pages are damaged, a store whose header is garbage, a cache
path that is a file, and other bad input; each ends with its exit code and
at most a one-line ``guild: error: ...`` (or a logged warning), never a
traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lmdbdamage
import pytest

import guildcore
from guildcore.cache import TieredCache
from guildcore.cli import main

REPO = Path(guildcore.__file__).resolve().parent.parent

CACHE_COMMANDS = [
    ["cache", "stats"],
    ["cache", "stats", "--json"],
    ["cache", "clear"],
    ["cache", "clear", "result"],
    ["cache", "compact"],
]


def _guild(cwd: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}
    environ.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-m", "guildcore", *argv], capture_output=True, text=True, cwd=cwd, env=environ, timeout=60
    )


def _project(tmp_path: Path) -> Path:
    (tmp_path / ".guild").mkdir()
    return tmp_path


def _filled_store(path: Path) -> None:
    with TieredCache(str(path), map_size=2**24) as c:
        c.set_many("result", [(i.to_bytes(16, "big"), b"v" * 100) for i in range(3000)])


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr


@pytest.mark.parametrize("argv", CACHE_COMMANDS, ids=" ".join)
def test_cache_commands_on_a_store_with_damaged_pages(tmp_path: Path, argv: list[str]) -> None:
    project = _project(tmp_path)
    store = project / ".guild" / "cache"
    _filled_store(store)
    lmdbdamage.damage_database(str(store), b"ns:result")
    done = _guild(project, *argv)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr
    if argv[1] in ("clear", "compact"):  # these reach the damaged pages
        assert "could not be used" in done.stderr and "started an empty one" in done.stderr
    after = _guild(project, "cache", "stats", "--json")
    assert after.returncode == 0 and '"exists": true' in after.stdout


@pytest.mark.parametrize("argv", CACHE_COMMANDS, ids=" ".join)
def test_cache_commands_on_a_store_with_a_garbage_header(tmp_path: Path, argv: list[str]) -> None:
    project = _project(tmp_path)
    store = project / ".guild" / "cache"
    _filled_store(store)
    (store / "data.mdb").write_bytes(os.urandom(64 * 1024))
    done = _guild(project, *argv)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert "could not be used" in done.stderr


@pytest.mark.parametrize("argv", CACHE_COMMANDS, ids=" ".join)
def test_cache_commands_when_the_cache_path_is_a_file(tmp_path: Path, argv: list[str]) -> None:
    project = _project(tmp_path)
    (project / "afile").write_text("not a folder")
    done = _guild(project, *argv, GUILD_CACHING__PATH=str(project / "afile"))
    _no_traceback(done)
    assert done.returncode in (0, 1), done.stderr
    if done.returncode:
        assert done.stderr.startswith("guild: error: ") and done.stderr.count("\n") == 1


def test_cache_path_under_a_file_fails_in_one_line(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "afile").write_text("not a folder")
    store = project / "afile" / "store"
    done = _guild(project, "cache", "stats", GUILD_CACHING__PATH=str(store))
    _no_traceback(done)
    assert done.returncode == 0 and "no cache store" in done.stdout


@pytest.mark.parametrize(
    ("argv", "setup", "code", "message"),
    [
        (["cache", "clear", "nope"], "store", 2, "no cache namespace 'nope'"),
        (["init", "sub"], "sub is a file", 1, "guild: error: [Errno"),
        (["config", "show"], "bad yaml", 2, "guild: error: "),
        (["demo", "--path", "missing"], None, 2, "is not a folder"),
        (["demo", "--rename", "a=a"], None, 2, "error"),
        (["cache", "nosuch"], None, 2, "invalid choice"),
    ],
    ids=["unknown namespace", "init over a file", "bad yaml", "demo path", "demo rename", "bad command"],
)
def test_bad_input_is_one_line_with_an_exit_code(
    tmp_path: Path, argv: list[str], setup: str | None, code: int, message: str
) -> None:
    project = _project(tmp_path)
    if setup == "store":
        _filled_store(project / ".guild" / "cache")
    elif setup == "sub is a file":
        (project / "sub").write_text("x")
    elif setup == "bad yaml":
        (project / ".guild" / "config.yaml").write_text("pool: [unclosed\n")
    done = _guild(project, *argv)
    _no_traceback(done)
    assert done.returncode == code, done.stderr
    assert message in done.stderr


def test_an_unexpected_error_is_one_line_and_traceback_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import guildcore.cache

    def broken(cfg: object) -> None:
        raise KeyError("a bug")

    monkeypatch.chdir(_project(tmp_path))
    monkeypatch.setattr(guildcore.cache, "cache_stats", broken)
    assert main(["cache", "stats"]) == 3
    err = capsys.readouterr().err
    assert err == (
        "guild: error: unexpected KeyError: 'a bug'; this is a bug in guildcore: "
        "rerun with guild --traceback ... and report what it prints\n"
    )
    with pytest.raises(KeyError, match="a bug"):
        main(["--traceback", "cache", "stats"])
