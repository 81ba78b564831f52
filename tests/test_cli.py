"""The ``guild`` command: run in-process through main(argv), and once as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import guildcore
from guildcore import __version__
from guildcore.cli import main
from guildcore.config import Config, explain_config, load_config

REPO = Path(guildcore.__file__).resolve().parent.parent


@pytest.fixture
def in_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in an empty project with .guild/, and no GUILD_* settings from the caller."""
    (tmp_path / ".guild").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GUILD_"):
            monkeypatch.delenv(name)
    return tmp_path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"guild {__version__}\n"


def test_version_as_module_subprocess() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "guildcore", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"guild {__version__}\n", "")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_init_writes_every_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path)]) == 0
    guild = tmp_path / ".guild"
    assert (guild / "processes").is_dir() and list((guild / "processes").iterdir()) == []
    assert "wrote" in capsys.readouterr().out
    config, sources = explain_config(cwd=tmp_path, environ={})
    assert config == Config(root=str(tmp_path))  # parses back to exactly the defaults
    # Every setting is written out, except result's ttl which follows caching.ttl.
    unlisted = {
        key
        for key, source in sources.items()
        if not source.startswith(".guild/instructions.md line ")
    }
    assert unlisted == {"caching.namespaces.result.ttl"}
    text = (guild / "instructions.md").read_text()
    assert text.startswith("# Guild instructions\n") and "max_agents: auto" in text


def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instructions = tmp_path / ".guild" / "instructions.md"
    instructions.parent.mkdir()
    instructions.write_text("mine\n")
    assert main(["init", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"guild: error: {tmp_path}/.guild/instructions.md already exists; pass --force to overwrite it\n"
    )
    assert instructions.read_text() == "mine\n"
    assert main(["init", "--force", str(tmp_path)]) == 0
    assert load_config(cwd=tmp_path, environ={}) == Config(root=str(tmp_path))


def test_config_show_text(
    in_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_project / ".guild" / "config.yaml").write_text("limits:\n  per_agent: 200MB\n")
    monkeypatch.setenv("GUILD_POOL__MAX_AGENTS", "3")
    assert main(["config", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# settings from {in_project / '.guild'}"
    table = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert table["pool.max_agents"].split() == ["3", "#", "env", "GUILD_POOL__MAX_AGENTS"]
    assert table["limits.per_agent"].split() == ["200MB", "#", ".guild/config.yaml", "line", "2"]
    assert table["limits.timeout"].split() == ["30s", "#", "default"]
    assert len(table) == len(Config().flat())


def test_config_show_json(
    in_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GUILD_OPTIMIZATION__PRELOAD", "[json]")
    assert main(["config", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optimization.preload"] == {
        "value": ["json"],
        "source": "env GUILD_OPTIMIZATION__PRELOAD",
    }
    assert data["limits.per_agent"] == {"value": 100_000_000, "source": "default"}
    assert data["caching.namespaces.result.ttl"] == {
        "value": 3600.0,
        "source": "default (follows caching.ttl)",
    }


def test_config_error_is_one_line_exit_2(
    in_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GUILD_POOL__MAX_AGENTS", "lots")
    assert main(["config", "show"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        "guild: error: bad value 'lots' for 'pool.max_agents' in env GUILD_POOL__MAX_AGENTS; "
        "expected a whole number >= 1 or 'auto'\n"
    )


def test_repository_guild_folder_loads() -> None:
    """This repository's own .guild/instructions.md stays valid."""
    config = load_config(cwd=REPO, environ={})
    assert config.root == str(REPO)
