"""Settings: sizes, durations, sources and their order, and every bad-input message."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import textwrap
from pathlib import Path

import pytest

from guildcore.config import (
    Config,
    NamespacePolicy,
    explain_config,
    find_guild_dir,
    load_config,
    parse_duration,
    parse_size,
    usable_cpus,
)
from guildcore.config_values import render_duration, render_size
from guildcore.errors import ConfigError

MD = ".guild/instructions.md"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with an empty .guild/, so the upward search stops here."""
    (tmp_path / ".guild").mkdir()
    return tmp_path


def write_md(project: Path, yaml_body: str, before: str = "# notes\n\nsome prose\n\n") -> None:
    """instructions.md with ``before`` then a ```yaml block; the block's first line is 1 + lines of ``before``."""
    block = textwrap.dedent(yaml_body).strip("\n")
    (project / MD).write_text(f"{before}```yaml\n{block}\n```\n\nmore prose\n")


def write_yaml(project: Path, body: str) -> None:
    (project / ".guild/config.yaml").write_text(textwrap.dedent(body).lstrip("\n"))


def load(project: Path, overrides: dict[str, object] | None = None, **environ: str) -> Config:
    return load_config(overrides, cwd=project, environ=environ)


def fails(
    project: Path, message: str, overrides: dict[str, object] | None = None, **environ: str
) -> ConfigError:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as info:
        load(project, overrides, **environ)
    return info.value


# -- sizes and durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512 * 10**6),
        ("1GiB", 2**30),
        ("100 kB", 100_000),
        ("64 MiB", 64 * 2**20),
        ("2kib", 2048),
        ("1.5GB", 1_500_000_000),
        ("512mb", 512 * 10**6),
        ("10B", 10),
        (4096, 4096),
        ("4096", 4096),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", [0, -1, "0MB", "-5MB", "12XB", "lots", True, None, 1.5, [1]])
def test_parse_size_rejects(bad: object) -> None:
    message = (
        f"bad value {bad!r} for 'limits.per_agent'; "
        "expected a size above 0 such as 512MB, 1GiB, 100 kB or a number of bytes"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as info:
        parse_size(bad, key="limits.per_agent")
    assert info.value.key == "limits.per_agent"
    assert info.value.value == bad


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("10m", 600.0),
        ("2d", 172800.0),
        (5, 5.0),
        (0.5, 0.5),
        ("1.5 h", 5400.0),
    ],
)
def test_parse_duration(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["soon", -1, 0, True, "5 parsecs", float("inf"), None])
def test_parse_duration_rejects(bad: object) -> None:
    message = f"bad value {bad!r} for 'duration'; expected a duration above 0 such as 250ms, 30s, 10m, 1h or a number of seconds"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        parse_duration(bad)


@pytest.mark.parametrize("size", [1, 1000, 1500, 2**20, 100 * 10**6, 10**9, 3 * 2**30])
def test_render_size_round_trips(size: int) -> None:
    assert parse_size(render_size(size)) == size


@pytest.mark.parametrize(
    "seconds", [0.1, 0.25, 1.0, 30.0, 60.0, 90.0, 1800.0, 3600.0, 86400.0, 1.2345]
)
def test_render_duration_round_trips(seconds: float) -> None:
    assert parse_duration(render_duration(seconds)) == seconds


# -- defaults and the search for .guild ---------------------------------------------------


def test_defaults_when_guild_folder_is_empty(project: Path) -> None:
    config, sources = explain_config(cwd=project, environ={})
    assert config == Config(root=str(project))
    assert config.pool.max_agents == usable_cpus()
    assert config.limits.per_agent == 100 * 10**6 and config.streaming.chunk_size == 2**20
    assert config.caching.disk_cache == 10**9 and config.limits.timeout == 30.0
    assert set(sources.values()) == {"default", "default (follows caching.ttl)"}
    assert sources["caching.namespaces.result.ttl"] == "default (follows caching.ttl)"


def test_builtin_namespaces() -> None:
    ns = Config().caching.namespaces
    assert ns["process"] == NamespacePolicy(ttl=None, max_entries=100, scope="session")
    assert ns["agent"] == NamespacePolicy(ttl=None, max_entries=None, scope="persistent")
    assert ns["research"] == NamespacePolicy(ttl=3600.0, max_entries=50, scope="persistent")
    assert ns["routing"] == NamespacePolicy(ttl=1800.0, max_entries=100, scope="persistent")
    assert ns["result"] == NamespacePolicy(ttl=3600.0, max_entries=None, scope="persistent")


def test_guild_folder_found_walking_up(project: Path) -> None:
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    write_md(project, "performance:\n  pool:\n    max_agents: 3\n")
    assert find_guild_dir(deep) == str(project / ".guild")
    config, sources = explain_config(cwd=deep, environ={})
    assert config.root == str(project) and config.pool.max_agents == 3
    assert sources["pool.max_agents"] == "../../.guild/instructions.md line 8"


def test_cache_path_is_relative_to_root(project: Path) -> None:
    assert load(project).cache_path() == str(project / ".guild" / "cache")
    assert load(project, {"caching": {"path": "/var/tmp/gc"}}).cache_path() == "/var/tmp/gc"
    assert load(project).guild_dir() == str(project / ".guild")


def test_usable_cpus_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert usable_cpus() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 5


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool.max_agents = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.caching.namespaces["x"] = NamespacePolicy()  # type: ignore[index]


def test_config_pickles_and_hashes(project: Path) -> None:
    write_md(project, "performance:\n  caching:\n    namespaces:\n      mine: {ttl: 10m}\n")
    config = load(project)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config and hash(copy) == hash(config)
    assert copy.caching.namespaces["mine"].ttl == 600.0


def test_to_dict_is_json_ready() -> None:
    data = json.loads(json.dumps(Config().to_dict()))
    assert data["limits"]["per_agent"] == 100_000_000
    assert data["optimization"]["preload"] == []
    assert data["caching"]["namespaces"]["routing"] == {
        "ttl": 1800.0,
        "max_entries": 100,
        "scope": "persistent",
    }


# -- sources, their order and their descriptions ------------------------------------------


def test_instructions_block_values_and_lines(project: Path) -> None:
    write_md(
        project,
        """
        performance:
          pool:
            max_agents: 4
            start_method: spawn
          limits:
            per_agent: 200MB
            timeout: null
          optimization:
            preload: [numpy, json]
        """,
    )
    config, sources = explain_config(cwd=project, environ={})
    assert config.pool.max_agents == 4 and config.pool.start_method == "spawn"
    assert config.limits.per_agent == 200 * 10**6 and config.limits.timeout is None
    assert config.optimization.preload == ("numpy", "json")
    # The file: 4 lines of prose, the fence on line 5, `performance:` on line 6.
    assert sources["pool.max_agents"] == f"{MD} line 8"
    assert sources["limits.per_agent"] == f"{MD} line 11"
    assert sources["pool.min_agents"] == "default"


def test_other_yaml_blocks_in_markdown_are_ignored(project: Path) -> None:
    other = "```yaml\nsteps: [a, b]\n```\n\n```python\nperformance: int = 3\n```\n\n"
    write_md(project, "performance:\n  pool: {max_agents: 2}\n", before=other)
    assert load(project).pool.max_agents == 2


def test_config_yaml_top_level_or_under_performance(project: Path) -> None:
    write_md(project, "performance:\n  pool:\n    max_agents: 4\n    min_agents: 2\n")
    write_yaml(project, "pool:\n  max_agents: 3\n")
    config, sources = explain_config(cwd=project, environ={})
    assert (config.pool.max_agents, config.pool.min_agents) == (3, 2)
    assert sources["pool.max_agents"] == ".guild/config.yaml line 2"
    assert sources["pool.min_agents"] == f"{MD} line 9"
    write_yaml(project, "performance:\n  limits:\n    per_agent: 1GiB\n")
    assert load(project).limits.per_agent == 2**30


def test_precedence_env_over_files_keywords_over_env(project: Path) -> None:
    write_yaml(project, "pool: {max_agents: 3}\nlimits: {timeout: 10s}\n")
    env = {
        "GUILD_POOL__MAX_AGENTS": "4",
        "GUILD_LIMITS__PER_AGENT": "200MB",
        "GUILD_LIMITS__TIMEOUT": "none",
    }
    config, sources = explain_config(cwd=project, environ=env)
    assert config.pool.max_agents == 4 and config.limits.per_agent == 200 * 10**6
    assert config.limits.timeout is None
    assert sources["pool.max_agents"] == "env GUILD_POOL__MAX_AGENTS"
    config, sources = explain_config(
        {"pool": {"max_agents": 5, "min_agents": 2}}, cwd=project, environ=env
    )
    assert config.pool.max_agents == 5 and sources["pool.max_agents"] == "keyword argument"
    # A flat shortcut wins over the same key given by section.
    config = load(
        project, {"pool": {"max_agents": 5}, "max_agents": 6, "per_agent": "1GB", "timeout": 1}
    )
    assert (config.pool.max_agents, config.limits.per_agent, config.limits.timeout) == (
        6,
        10**9,
        1.0,
    )
    assert load(project, {"start_method": "fork", "min_agents": 0}).pool.start_method == "fork"


def test_env_values_are_yaml_scalars(project: Path) -> None:
    config = load(
        project,
        GUILD_CACHING__ENABLED="false",
        GUILD_MONITORING__WARNING_THRESHOLD="70%",
        GUILD_OPTIMIZATION__PRELOAD="numpy, mypkg.tasks",
        GUILD_HOME="/somewhere",  # no `__`: not a setting, ignored
    )
    assert config.caching.enabled is False and config.monitoring.warning_threshold == 0.7
    assert config.optimization.preload == ("numpy", "mypkg.tasks")


@pytest.mark.parametrize("word", ["auto", "auto_detect"])
def test_max_agents_auto(project: Path, word: str) -> None:
    assert load(project, GUILD_POOL__MAX_AGENTS=word).pool.max_agents == usable_cpus()


def test_namespaces_user_defined_and_overridden(project: Path) -> None:
    write_md(
        project,
        """
        performance:
          caching:
            ttl: 2h
            namespaces:
              mine: {ttl: 10m, max_entries: 5}
              bare: {max_entries: 9, scope: session}
              research: {ttl: 5m}
        """,
    )
    config, sources = explain_config(
        cwd=project, environ={"GUILD_CACHING__NAMESPACES__MINE__MAX_ENTRIES": "6"}
    )
    ns = config.caching.namespaces
    assert ns["mine"] == NamespacePolicy(ttl=600.0, max_entries=6, scope="persistent")
    assert ns["bare"] == NamespacePolicy(ttl=7200.0, max_entries=9, scope="session")
    assert ns["research"] == NamespacePolicy(ttl=300.0, max_entries=50, scope="persistent")
    assert ns["result"].ttl == 7200.0  # follows caching.ttl
    assert (
        sources["caching.namespaces.mine.max_entries"]
        == "env GUILD_CACHING__NAMESPACES__MINE__MAX_ENTRIES"
    )
    assert sources["caching.namespaces.bare.ttl"] == "default (follows caching.ttl)"
    assert (
        load(project, {"caching": {"namespaces": {"kw": None}}}).caching.namespaces["kw"].scope
        == "persistent"
    )


# -- bad input: each failure by its whole message ------------------------------------------


def test_unknown_section_suggests(project: Path) -> None:
    write_md(project, "performance:\n  cachng:\n    enabled: true\n")
    err = fails(
        project, f"unknown key 'performance.cachng' in {MD} line 7; did you mean 'caching'?"
    )
    assert (err.source, err.line, err.key) == (MD, 7, "performance.cachng")


def test_unknown_field_suggests(project: Path) -> None:
    write_md(project, "performance:\n  pool:\n    min_agents: 1\n    max_agent: 4\n")
    fails(
        project,
        f"unknown key 'performance.pool.max_agent' in {MD} line 9; did you mean 'max_agents'?",
    )


def test_unknown_key_without_close_match_lists_keys(project: Path) -> None:
    write_yaml(project, "streaming:\n  zzz: 1\n")
    fails(project, "unknown key 'streaming.zzz' in .guild/config.yaml line 2; "
          "valid keys: enabled, stream_threshold, chunk_size, window")  # fmt: skip


def test_unknown_key_in_env_and_keywords(project: Path) -> None:
    fails(project, "unknown key 'pool.max_agnts' in env GUILD_POOL__MAX_AGNTS; did you mean 'max_agents'?",
          GUILD_POOL__MAX_AGNTS="3")  # fmt: skip
    fails(
        project,
        "unknown key 'max_agent' in keyword argument; did you mean 'max_agents'?",
        {"max_agent": 3},
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_agents: lots", "bad value 'lots' for 'performance.pool.max_agents' in {md} line 8; expected a whole number >= 1 or 'auto'"),
        ("max_agents: true", "bad value True for 'performance.pool.max_agents' in {md} line 8; expected a whole number >= 1 or 'auto'"),
        ("max_agents: 0", "bad value 0 for 'performance.pool.max_agents' in {md} line 8; expected a whole number >= 1 or 'auto'"),
        ("idle_timeout: soon", "bad value 'soon' for 'performance.pool.idle_timeout' in {md} line 8; "
         "expected a duration above 0 such as 250ms, 30s, 10m, 1h or a number of seconds"),
        ("start_method: threads", "bad value 'threads' for 'performance.pool.start_method' in {md} line 8; "
         "choose one of auto, forkserver, fork, spawn"),
        ("balancing: random", "bad value 'random' for 'performance.pool.balancing' in {md} line 8; "
         "choose one of least_loaded, round_robin"),
        ("retries: -1", "bad value -1 for 'performance.pool.retries' in {md} line 8; expected a whole number >= 0"),
    ],
)  # fmt: skip
def test_bad_pool_values(project: Path, line: str, message: str) -> None:
    write_md(project, f"performance:\n  pool:\n    {line}\n")
    err = fails(project, message.format(md=MD))
    assert err.line == 8


def test_bool_given_a_string(project: Path) -> None:
    write_md(project, 'performance:\n  caching:\n    enabled: "yes"\n')
    fails(
        project,
        f"bad value 'yes' for 'performance.caching.enabled' in {MD} line 8; expected true or false",
    )


@pytest.mark.parametrize("size", ["0", "-5MB", "0 kB"])
def test_zero_or_negative_size(project: Path, size: str) -> None:
    write_md(project, f"performance:\n  limits:\n    per_agent: {size}\n")
    value = repr(0) if size == "0" else repr(size)
    fails(project, f"bad value {value} for 'performance.limits.per_agent' in {MD} line 8; "
          "expected a size above 0 such as 512MB, 1GiB, 100 kB or a number of bytes")  # fmt: skip


def test_negative_size_from_env(project: Path) -> None:
    fails(project, "bad value -1 for 'limits.cache_size' in env GUILD_LIMITS__CACHE_SIZE; "
          "expected a size above 0 such as 512MB, 1GiB, 100 kB or a number of bytes", GUILD_LIMITS__CACHE_SIZE="-1")  # fmt: skip


def test_threshold_outside_0_1(project: Path) -> None:
    fails(project, "bad value 1.5 for 'monitoring.warning_threshold' in keyword argument; "
          "expected a fraction above 0 and at most 1, such as 0.8 or 80%", {"monitoring": {"warning_threshold": 1.5}})  # fmt: skip


def test_warning_not_below_critical(project: Path) -> None:
    write_yaml(project, "monitoring:\n  warning_threshold: 0.9\n  critical_threshold: 0.9\n")
    err = fails(project, "monitoring.warning_threshold 0.9 (.guild/config.yaml line 2) is not below "
                "monitoring.critical_threshold 0.9 (.guild/config.yaml line 3); set the warning threshold below the critical one")  # fmt: skip
    assert err.key == "monitoring.warning_threshold"


def test_min_agents_above_max_agents(project: Path) -> None:
    write_md(project, "performance:\n  pool:\n    min_agents: 8\n")
    err = fails(project, f"pool.min_agents 8 ({MD} line 8) is greater than pool.max_agents 4 "
                "(env GUILD_POOL__MAX_AGENTS); lower pool.min_agents or raise pool.max_agents", GUILD_POOL__MAX_AGENTS="4")  # fmt: skip
    assert (err.source, err.line, err.value) == (MD, 8, 8)


@pytest.mark.parametrize("parser", ["libyaml", "pure Python"])
def test_both_yaml_parsers_read_the_same_values_and_lines(project: Path, parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every Guild made reads instructions.md: libyaml parses it in ~1 ms,
    # PyYAML's own parser in ~10 ms, and either must say the same.
    import yaml

    assert yaml.__with_libyaml__, "PyYAML's wheels ship libyaml; without it Guild() is ~10 ms slower in a configured project"
    used: list[str] = []

    def spy(name: str) -> type:
        class Spy(getattr(yaml, name)):  # type: ignore[misc]
            def __init__(self, text: str) -> None:
                used.append(name)
                super().__init__(text)

        return Spy

    for name in ("CSafeLoader", "SafeLoader"):
        monkeypatch.setattr(yaml, name, spy(name))
    if parser == "pure Python":
        monkeypatch.delattr(yaml, "CSafeLoader")
    write_md(project, "performance:\n  pool:\n    max_agents: 4\n  limits:\n    per_agent: 200MB\n")
    config, sources = explain_config(cwd=project, environ={})
    assert used == ["CSafeLoader" if parser == "libyaml" else "SafeLoader"]
    assert config.pool.max_agents == 4 and sources["pool.max_agents"] == f"{MD} line 8"
    assert config.limits.per_agent == 200 * 10**6 and sources["limits.per_agent"] == f"{MD} line 10"


def test_each_text_of_a_guild_file_is_parsed_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every Guild made reads the .guild files: a text read before is not
    # parsed again, a changed one is, even rewritten in place with the same
    # size and times (``cp -p``, a coarse clock), and Configs share no mistake.
    from guildcore import config as config_module

    parsed: list[str] = []
    read_yaml = config_module.read_yaml
    monkeypatch.setattr(config_module, "read_yaml", lambda text, source, first: parsed.append(source) or read_yaml(text, source, first))
    write_md(project, "performance:\n  pool:\n    max_agents: 4\n")
    write_yaml(project, "performance:\n  pool:\n    min_agents: 2\n")
    first, sources = explain_config(cwd=project, environ={})
    again = load_config({"timeout": 3}, cwd=project, environ={})
    assert len(parsed) == 2 and (first.pool.max_agents, again.pool.max_agents, again.pool.min_agents) == (4, 4, 2)
    assert sources["pool.max_agents"] == f"{MD} line 8"
    md = project / MD
    stat = md.stat()
    write_md(project, "performance:\n  pool:\n    max_agents: 5\n")
    os.utime(md, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert md.stat().st_size == stat.st_size and md.stat().st_mtime_ns == stat.st_mtime_ns
    assert load_config(cwd=project, environ={}).pool.max_agents == 5
    assert parsed == [MD, ".guild/config.yaml", MD]


def test_auto_in_a_guild_file_is_the_cpus_usable_at_each_load(project: Path) -> None:
    write_md(project, "performance:\n  pool:\n    max_agents: auto\n    min_agents: 1\n")
    cpus = os.sched_getaffinity(0)
    assert load_config(cwd=project, environ={}).pool.max_agents == len(cpus)
    if len(cpus) < 2:
        pytest.fail("this test needs a host with two usable CPUs or more")
    os.sched_setaffinity(0, {min(cpus)})
    try:
        assert load_config(cwd=project, environ={}).pool.max_agents == 1
    finally:
        os.sched_setaffinity(0, cpus)


def test_malformed_yaml_has_line(project: Path) -> None:
    write_md(project, "performance:\n  pool:\n    max_agents: 4\n   min_agents: [1\n")
    with pytest.raises(ConfigError, match=rf"^malformed yaml in {re.escape(MD)} line 9 \(.+\); fix the indentation, colons or quotes there$") as info:  # fmt: skip
        load(project)
    assert info.value.line == 9


def test_markdown_without_performance_block(project: Path) -> None:
    (project / MD).write_text("# notes\n\n```yaml\nsteps: []\n```\n")
    fails(project, f"no ```yaml block with the top key 'performance:' in {MD}; add one, "
          "or run 'guild init --force' to write one with every default")  # fmt: skip


def test_markdown_with_two_performance_blocks(project: Path) -> None:
    block = "```yaml\nperformance:\n  pool: {max_agents: 2}\n```\n"
    (project / MD).write_text(f"# notes\n{block}\nprose\n{block}")
    err = fails(
        project,
        f"2 ```yaml blocks with the top key 'performance:' in {MD} (lines 2 and 8); merge them into one",
    )
    assert err.line == 8


def test_section_must_be_a_mapping(project: Path) -> None:
    write_yaml(project, "pool: 4\n")
    fails(
        project,
        "bad value 4 for 'pool' in .guild/config.yaml line 1; expected a mapping (key: value lines indented below it)",
    )


def test_duplicate_key(project: Path) -> None:
    write_yaml(project, "pool:\n  max_agents: 2\n  max_agents: 3\n")
    fails(
        project,
        "duplicate key 'pool.max_agents' in .guild/config.yaml line 3 (first at .guild/config.yaml line 2); keep one of them",
    )


def test_other_top_key_in_performance_block(project: Path) -> None:
    write_md(project, "performance:\n  pool: {max_agents: 2}\nperformanse: {}\n")
    fails(project, f"unknown key 'performanse' in {MD} line 8; did you mean 'performance'?")


def test_bad_namespace_policy(project: Path) -> None:
    write_md(
        project, "performance:\n  caching:\n    namespaces:\n      mine: {ttl: 10m, max_entry: 5}\n"
    )
    fails(
        project,
        f"unknown key 'performance.caching.namespaces.mine.max_entry' in {MD} line 9; did you mean 'max_entries'?",
    )
    write_md(project, "performance:\n  caching:\n    namespaces:\n      mine: {scope: forever}\n")
    fails(project, f"bad value 'forever' for 'performance.caching.namespaces.mine.scope' in {MD} line 9; "
          "choose one of session, persistent")  # fmt: skip
    write_md(project, "performance:\n  caching:\n    namespaces:\n      my.ns: {}\n")
    fails(project, f"bad value 'my.ns' for 'performance.caching.namespaces.my.ns' in {MD} line 9; "
          "a namespace name is letters, digits, _ and -, starting with a letter")  # fmt: skip


# -- the performance block as users write it ----------------------------------------------


def test_issue_style_block_loads_as_written(project: Path) -> None:
    write_md(
        project,
        """
        performance:
          parallelization: {enabled: true, max_parallel: 3, strategy: adaptive}
          caching: {enabled: true, memory_cache: 256MB, disk_cache: 1GB, ttl: 3600}
          optimization: {preload: true, streaming: true, compression: true}
          monitoring: {enabled: true, metrics: true, alerts: true}
        """,
    )
    config, sources = explain_config(cwd=project, environ={})
    assert config.parallelization.strategy == "adaptive" and config.parallelization.max_parallel == 3
    assert (config.caching.memory_cache, config.caching.disk_cache, config.caching.ttl) == (256 * 10**6, 10**9, 3600.0)
    assert config.optimization.preload is True and config.monitoring.metrics is True
    assert sources["optimization.preload"] == f"{MD} line 9"
    assert sources["monitoring.metrics"] == f"{MD} line 10"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [(True, True), (False, False), (["numpy", "json"], ("numpy", "json")), ("numpy, json", ("numpy", "json"))],
)
def test_preload_true_false_or_a_list(project: Path, raw: object, stored: object) -> None:
    assert load(project, {"optimization": {"preload": raw}}).optimization.preload == stored


def test_preload_bad_value_names_the_choices(project: Path) -> None:
    fails(project, "bad value 3 for 'optimization.preload' in keyword argument; "
          "expected true, false or a list of module names such as [numpy, mypkg.tasks]",
          {"optimization": {"preload": 3}})  # fmt: skip


def test_preload_modules_resolves_true_to_what_is_likely() -> None:
    from guildcore.config import AGENT_MODULES, OptimizationConfig

    assert OptimizationConfig(preload=True).preload_modules() == AGENT_MODULES
    assert OptimizationConfig(preload=True).preload_modules(["numpy", "a.b", "numpy"]) == ("numpy", "a.b")
    assert OptimizationConfig(preload=False).preload_modules(["numpy"]) == ()
    assert OptimizationConfig(preload=("json",)).preload_modules(["numpy"]) == ("json",)


def test_env_mapping_value_sets_a_subtree_keeping_name_case(project: Path) -> None:
    config = load(project, GUILD_CACHING__NAMESPACES='{MyNs: {ttl: 10m, max_entries: 4}}')
    assert config.caching.namespaces["MyNs"] == NamespacePolicy(ttl=600.0, max_entries=4, scope="persistent")
    fails(project, "bad value {'a': 1} for 'pool.max_agents' in env GUILD_POOL__MAX_AGENTS; "
          "expected a whole number >= 1 or 'auto'", GUILD_POOL__MAX_AGENTS="{a: 1}")  # fmt: skip


def test_agent_cache_env_reproduces_the_caching_settings(project: Path) -> None:
    from guildcore.config import agent_cache_env

    overrides = {
        "caching": {"enabled": False, "memory_cache": "3MB", "memory_entries": 77, "disk_cache": "20MB",
                    "ttl": "90s", "path": 'odd: "dir"', "namespaces": {"MyNs": {"ttl": "10m", "max_entries": 3}}},
        "optimization": {"compression": False},
    }  # fmt: skip
    config = load(project, overrides)
    env = agent_cache_env(config)
    assert all(name.startswith("GUILD_") and "__" in name for name in env)
    again = load(project, **env)
    assert again.caching.replace(path=config.caching.path) == config.caching
    assert again.cache_path() == config.cache_path() == str(project / 'odd: "dir"')
    assert again.optimization.compression is False


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -5, 10**20, 1.5, 3600.0, 1e-7, float("inf"), float("nan"), "", "a b/c.d", 'o"q', "a\\b",
     "é", "tab\there", "line\nbreak", {"a": 1, "b": {"ttl": None, "max_entries": 3, "scope": "x"}}, {1: 2}, [1, "x"]],
)  # fmt: skip
def test_settings_for_agents_are_written_as_json_writes_them(value: object) -> None:
    import json

    from guildcore.config import _json_text

    assert _json_text(value) == json.dumps(value)
