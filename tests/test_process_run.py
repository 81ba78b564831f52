"""Running processes on a real Guild: parallel steps, cache, failures, batching, shared inputs.

The workflow (``WORKFLOW``) indexes a generated codebase, then lints and
rewrites every file (two independent map steps), then reports. Its lint and
rewrite of ``sync.py`` meet through a FIFO, so the recorded timeline must
show the two steps overlapping: that is asserted from the recorded start and
end times, never from durations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guildcore import ConfigError, Guild, Process, ProcessFailed
from guildcore.process import ProcessRun, StepRecord
from tests import procwork
from tests.faults import make_fifo

WORKFLOW = """\
inputs: [root, old, new, fifo]
steps:
  index:
    run: tests.procwork:index
    inputs: {root: root}
    cache: false            # reads the disk: its output is what a rerun must check
  lint:
    run: tests.procwork:lint
    map: index
    inputs: {fifo: fifo}
  rewrite:
    run: tests.procwork:rewrite
    map: index
    inputs: {old: old, new: new, fifo: fifo}
  report:
    run: tests.procwork:report
    inputs: {lints: lint, rewrites: rewrite}
"""

USES = "def f{n}(result):\n    return result + {n}  # a line that is longer than sixty characters\n"
PLAIN = "def g{n}(x):\n    return x\n"


def make_codebase(root: Path) -> None:
    for n in range(8):
        (root / f"use_{n}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"use_{n}.py").write_text(USES.format(n=n))
    for n in range(6):
        (root / "pkg" / f"plain_{n}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / "pkg" / f"plain_{n}.py").write_text(PLAIN.format(n=n))
    (root / procwork.SYNC_FILE).write_text(USES.format(n=99))


@pytest.fixture
def guild(tmp_path: Path) -> Iterator[Guild]:
    with Guild(max_agents=2, min_agents=2, caching={"path": str(tmp_path / "cache")}) as g:
        yield g


def steps_of(run: ProcessRun) -> dict[str, StepRecord]:
    return {r.step: r for r in run.steps}


def overlap(a: StepRecord, b: StepRecord) -> bool:
    assert None not in (a.start_s, a.end_s, b.start_s, b.end_s)
    return a.start_s < b.end_s and b.start_s < a.end_s  # type: ignore[operator]


def test_squares_runs_in_python_and_yaml(guild: Guild, tmp_path: Path) -> None:
    squares = Process("squares")
    squares.step("numbers", inputs={"n": "n"})(procwork.step_list)
    squares.step("squares", map="numbers")(procwork.step_square)
    squares.step("total", inputs={"xs": "squares"})(procwork.step_total)
    run = guild.run_process(squares, n=200)
    assert run["total"] == sum(i * i for i in range(200))
    assert run["squares"][:4] == [0, 1, 4, 9] and dict(run).keys() == {"numbers", "squares", "total"}
    assert run.definition == "python" and run.sinks == ("total",) and run.ok
    record = guild.metrics()  # the step timeline joins the Guild's run record
    assert record is not None
    assert [(x["process"], x["name"]) for x in record["steps"]] == [
        ("squares", "numbers"), ("squares", "squares"), ("squares", "total"),
    ]  # fmt: skip

    path = tmp_path / "squares.yaml"
    path.write_text(squares_yaml())
    first = guild.run_process(str(path), n=200)
    second = guild.run_process(str(path), n=200)
    assert (first.definition, second.definition) == ("parsed", "cached")  # once per session
    assert first["total"] == second["total"] == run["total"]
    # One model, two front ends: the same process (name, version, steps, functions)
    # from YAML is served from what the Python one stored.
    assert [r.cache_hits for r in first.steps] == [1, 200, 1]
    assert [r.agents for r in second.steps] == [0, 0, 0]


def squares_yaml() -> str:
    return (
        "steps:\n"
        "  numbers: {run: 'tests.procwork:step_list', inputs: {n: n}}\n"
        "  squares: {run: 'tests.procwork:step_square', needs: [numbers], map: numbers}\n"
        "  total: {run: 'tests.procwork:step_total', needs: [squares], inputs: {xs: squares}}\n"
    )


def workflow(tmp_path: Path, text: str = WORKFLOW) -> str:
    path = tmp_path / "proc" / "refactor.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


def test_workflow_overlaps_reruns_from_cache_and_reruns_only_what_changed(tmp_path: Path) -> None:
    root = tmp_path / "code"
    make_codebase(root)
    proc = workflow(tmp_path)
    fifo = make_fifo(str(tmp_path / "sync.fifo"))
    inputs: dict[str, Any] = {"root": str(root), "old": "result", "new": "outcome", "fifo": fifo}
    cache = {"path": str(tmp_path / "cache")}

    with Guild(max_agents=2, min_agents=2, caching=cache) as g:
        run = g.run_process(proc, **inputs)
    s = steps_of(run)
    assert run["report"] == {"files": 15, "long_lines": 9, "changed": 9, "renamed": 18}
    # lint and rewrite ran at the same time (they met through the FIFO), each
    # after index ended and before report started.
    assert overlap(s["lint"], s["rewrite"])
    for name in ("lint", "rewrite"):
        assert s["index"].end_s <= s[name].start_s  # type: ignore[operator]
        assert s[name].end_s <= s["report"].start_s  # type: ignore[operator]
        assert (s[name].items, s[name].cache_hits, s[name].status) == (15, 0, "done")
    assert s["lint"].agents + s["lint"].inline >= 1
    timeline = run.timeline()
    assert [t["step"] for t in timeline] == ["index", "lint", "rewrite", "report"]
    assert set(timeline[0]) >= {"step", "start_s", "end_s", "items", "cache_hits", "agents", "status"}

    # A new Guild: everything but the uncached index comes from the disk cache.
    with Guild(max_agents=2, caching=cache) as g:
        again = g.run_process(proc, **inputs)
        tasks_after = g.stats()["counters"]
    a = steps_of(again)
    assert again["report"] == run["report"]
    assert [(a[n].cache_hits, a[n].agents, a[n].inline) for n in ("lint", "rewrite", "report")] == [
        (15, 0, 0), (15, 0, 0), (1, 0, 0),
    ]  # fmt: skip
    assert a["index"].cache_hits == 0 and a["index"].agents == 1
    assert tasks_after["submitted"] == 1, tasks_after  # the index call, nothing else

    # Change one step's function: that step and its dependant rerun, the rest are hits.
    Path(proc).write_text(WORKFLOW.replace("tests.procwork:lint", "tests.procwork:lint_tabs"))
    with Guild(max_agents=2, caching=cache) as g:
        changed = g.run_process(proc, **inputs)
    c = steps_of(changed)
    assert (c["lint"].cache_hits, c["report"].cache_hits, c["rewrite"].cache_hits) == (0, 0, 15)
    assert changed["report"]["long_lines"] == 0 and changed["report"]["changed"] == 9


def test_a_failing_step_fails_its_dependants_only(guild: Guild, tmp_path: Path) -> None:
    root = tmp_path / "code"
    make_codebase(root)
    text = WORKFLOW.replace("tests.procwork:lint", "tests.procwork:broken_lint")
    text += "  stats:\n    run: tests.procwork:step_total\n    inputs: {xs: sizes}\n"
    text += "  sizes:\n    run: tests.procwork:step_list\n    inputs: {n: count}\n"
    text = text.replace("inputs: [root, old, new, fifo]", "inputs: [root, old, new, fifo, count]")
    with pytest.raises(ProcessFailed) as info:
        guild.run_process(workflow(tmp_path, text), root=str(root), old="result", new="outcome", fifo=None, count=4)
    err = info.value
    run: ProcessRun = err.run  # type: ignore[assignment]
    s = steps_of(run)
    assert (s["lint"].status, s["report"].status, s["report"].cause) == ("failed", "not run", "lint")
    assert s["lint"].error is not None and s["lint"].error.startswith("ValueError: cannot lint ")
    assert {n: s[n].status for n in ("index", "rewrite", "sizes", "stats")} == dict.fromkeys(
        ("index", "rewrite", "sizes", "stats"), "done"
    )
    assert run["stats"] == 6 and "report" not in run and len(run["rewrite"]) == 15
    assert list(err.failures) == ["lint"] and isinstance(err.__cause__, ValueError)
    assert str(err).startswith("process 'refactor' failed: step 'lint' raised ValueError: cannot lint ")
    assert str(err).endswith("; not run: report; finished: index, rewrite, stats, sizes")
    assert not run.ok and run.to_dict()["status"] == "failed"


FAIL_FAST = """\
fail_fast: {fail_fast}
inputs: [flag]
steps:
  bad: {{run: 'tests.procwork:fail_now', inputs: {{message: flag}}, priority: -1}}
  gate: {{run: 'tests.procwork:gate', inputs: {{flag: flag}}}}
  after: {{run: 'tests.procwork:after', inputs: {{value: gate}}}}
"""


@pytest.mark.parametrize("fail_fast", [False, True])
def test_fail_fast_stops_everything_else(guild: Guild, tmp_path: Path, fail_fast: bool) -> None:
    flag = str(tmp_path / "open")
    proc = workflow(tmp_path, FAIL_FAST.format(fail_fast=str(fail_fast).lower()))

    def on_event(kind: str, record: StepRecord, run: ProcessRun) -> None:
        if kind == "end" and record.step == "bad":
            Path(flag).touch()  # gate may return only after bad's failure was handled

    from guildcore.process.runner import run as run_process

    with pytest.raises(ProcessFailed) as info:
        run_process(guild, proc, {"flag": flag}, on_event=on_event)
    s = steps_of(info.value.run)  # type: ignore[arg-type]
    assert s["bad"].status == "failed"
    if fail_fast:  # after is independent of bad, yet never starts
        assert (s["after"].status, s["after"].cause) == ("not run", "bad")
        assert s["gate"].status in ("done", "cancelled")
    else:
        assert (s["gate"].status, s["after"].status) == ("done", "done")
        assert info.value.run["after"] == "opened and after"  # type: ignore[index]


def test_equal_items_of_a_cached_step_run_once(guild: Guild, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    items = [1, 1, 2, 2, 2, 3]
    for cache in (True, False):
        p = Process(f"dedup-{cache}", inputs=["items", "log"])
        p.step("tens", map="items", inputs={"log": "log"}, cache=cache)(procwork.calls_counted)
        log.write_text("")
        before = guild.stats()["batching"]["duplicates_saved"]
        run = guild.run_process(p, items=items, log=str(log))
        assert run["tens"] == [10, 10, 20, 20, 20, 30]
        calls = sorted(log.read_text().split())
        saved = guild.stats()["batching"]["duplicates_saved"] - before
        if cache:
            assert (calls, saved, steps_of(run)["tens"].duplicates) == (["1", "2", "3"], 3, 3)
        else:  # cache: false says the function may not be pure: every item runs
            assert (calls, saved) == (["1", "1", "2", "2", "2", "3"], 0)


def test_big_inputs_go_through_shared_memory(guild: Guild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    package = importlib.import_module("guildcore.context")  # the package, not guildcore.context()
    written: list[int] = []
    real = package.write_context

    def counting(mapping: Any, **kw: Any) -> Any:
        written.append(len(mapping["v"]))
        return real(mapping, **kw)

    monkeypatch.setattr(package, "write_context", counting)
    p = Process("blob", inputs=["n", "xs"])
    p.step("blob", inputs={"n": "n"})(procwork.make_blob)
    p.step("sizes", map={"x": "xs"}, inputs={"data": "blob"})(procwork.size_of)
    n = 3 * 2**20
    run = guild.run_process(p, n=n, xs=[1, 2, 3])
    assert run["sizes"] == [n + 1, n + 2, n + 3]
    assert written == [n]  # written once, read by every item; unlinked at the end (conftest checks)


def test_map_over_a_key_of_a_mapping_output_and_bad_sources(guild: Guild, tmp_path: Path) -> None:
    p = Process("keys", inputs=["cfg"])
    p.step("sq", map="cfg.values")(procwork.step_square)
    assert guild.run_process(p, cfg={"values": [2, 3]})["sq"] == [4, 9]
    with pytest.raises(ProcessFailed, match=r"step 'sq' raised ConfigTypeError: step 'sq' maps over cfg\.values, a dict"):
        guild.run_process(p, cfg={"values": {"a": 1}})
    with pytest.raises(ConfigError, match="takes no input 'cfgg'; it takes: cfg"):
        guild.run_process(p, cfg={}, cfgg=1)
    with pytest.raises(ProcessFailed, match=r"step 'sq' raised ConfigError: cfg\.values reads key 'values' of the input 'cfg', a dict without it"):
        guild.run_process(p, cfg={"other": 1})


def test_preload_names_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".guild" / "processes").mkdir(parents=True)
    (tmp_path / ".guild" / "processes" / "squares.yaml").write_text(squares_yaml())
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GUILD_"):
            monkeypatch.delenv(name)
    from guildcore.process.preload import imported

    def agent_has(**overrides: Any) -> bool:
        # Forkserver agents: a forked one would inherit this process's imports.
        with Guild(min_agents=1, max_agents=1, start_method="forkserver", **overrides) as g:
            return g.submit(imported, ["tests.procwork"]).result()["tests.procwork"]

    assert agent_has() is False
    assert agent_has(optimization={"preload": ["process:squares"]}) is True
    assert agent_has(optimization={"preload": ["process:*"]}) is False  # nothing run yet
    assert agent_has(optimization={"preload": True}) is False
    with Guild(max_agents=1) as g:
        g.run_process("squares", n=3)  # recorded as this project's most recent process
    assert agent_has(optimization={"preload": ["process:*"]}) is True
    assert agent_has(optimization={"preload": True}) is True  # "what is likely": the recent processes
    with pytest.raises(ConfigError, match=r"optimization.preload names 'process:nope', but there is no process 'nope'"):
        Guild(optimization={"preload": ["process:nope"]})
