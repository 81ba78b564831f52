"""Process definitions: YAML and Python build the same model; every mistake names file, step, key, line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from guildcore import ConfigError, Process
from guildcore.config import load_config
from guildcore.process import registry
from guildcore.process.model import REQUIRED
from guildcore.process.runner import bind_inputs
from guildcore.process.yamlfile import load_text, modules_named
from tests import procwork

SOURCE = ".guild/processes/squares.yaml"

SQUARES = """\
# .guild/processes/squares.yaml
steps:
  numbers:
    run: tests.procwork:step_list
    inputs: {n: n}
  squares:
    run: tests.procwork:step_square
    needs: [numbers]
    map: numbers
  total:
    run: tests.procwork:step_total
    needs: [squares]
    inputs: {xs: squares}
"""


def load(text: str, name: str = "squares") -> object:
    return load_text(textwrap.dedent(text), SOURCE, name)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value


def test_the_example_builds_the_expected_model() -> None:
    d = load_text(SQUARES, SOURCE, "squares")
    assert [s.name for s in d.steps] == ["numbers", "squares", "total"]
    numbers, squares, total = d.steps
    assert numbers.fn is procwork.step_list and numbers.ref == "tests.procwork:step_list"
    assert (numbers.needs, str(numbers.inputs["n"]), numbers.inputs["n"].is_step) == ((), "n", False)
    assert (squares.needs, str(squares.map_source), squares.map_param) == (("numbers",), "numbers", None)
    assert total.inputs["xs"].is_step and total.needs == ("squares",)
    assert d.input_names() == ("n",) and d.inputs is None  # implied by the steps
    assert (d.version, d.fail_fast, d.modules) == ("1", False, ("tests.procwork",))
    assert all(s.cache for s in d.steps) and not any(s.has_timeout for s in d.steps)


def test_python_front_ends_build_the_same_steps() -> None:
    by_dict = Process("squares", steps={
        "numbers": {"run": procwork.step_list, "inputs": {"n": "n"}},
        "squares": {"run": "tests.procwork:step_square", "needs": ["numbers"], "map": "numbers"},
        "total": {"run": procwork.step_total, "needs": ["squares"], "inputs": {"xs": "squares"}},
    }).definition()  # fmt: skip
    by_decorator = Process("squares")
    by_decorator.step("numbers", inputs={"n": "n"})(procwork.step_list)
    by_decorator.step("squares", needs=["numbers"], map="numbers")(procwork.step_square)
    by_decorator.step("total", inputs={"xs": "squares"})(procwork.step_total)
    from_yaml = load_text(SQUARES, SOURCE, "squares")
    for d in (by_dict, by_decorator.definition()):
        assert d.steps == from_yaml.steps  # equal models (functions compare by reference)
        assert d.source.startswith("process 'squares' (test_process_definitions.py")


def test_options_and_sources_with_keys() -> None:
    d = load("""\
        version: 3
        fail_fast: true
        inputs: {root: ., depth: 2}
        steps:
          index:
            run: tests.procwork:index
            inputs: {root: root}
            cache: false
            timeout: 2m
            retries: 1
            priority: -1
          lint:
            run: tests.procwork:lint
            map: {item: index.files}
            timeout: null
        """)
    index, lint = d.steps  # type: ignore[attr-defined]
    assert (index.cache, index.timeout_s, index.has_timeout, index.retries, index.priority) == (False, 120.0, True, 1, -1)
    assert (lint.timeout_s, lint.has_timeout, lint.map_param) == (None, True, "item")
    assert (lint.map_source.name, lint.map_source.key, lint.needs) == ("index", "files", ("index",))
    assert (d.version, d.fail_fast, dict(d.inputs)) == ("3", True, {"root": ".", "depth": 2})  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "message", "line", "key"),
    [
        (
            "steps:\n  total:\n    run: tests.procwork:step_total\n    neds: [x]\n",
            "unknown key 'steps.total.neds' in .guild/processes/squares.yaml line 4; did you mean 'needs'?",
            4, "steps.total.neds",
        ),
        (
            SQUARES.replace("needs: [squares]", "needs: [sqares]"),
            "step 'total' needs 'sqares', which is not a step (steps.total.needs in "
            ".guild/processes/squares.yaml line 12); did you mean 'squares'? steps: numbers, squares",
            12, "steps.total.needs",
        ),
        (
            SQUARES.replace("needs: [numbers]", "needs: [total]"),
            "steps form a cycle: squares -> total -> squares (steps.squares.needs in "
            ".guild/processes/squares.yaml line 6); remove one of these needs (or the input that implies it)",
            6, "steps.squares.needs",
        ),
        (
            "inputs: [n]\n" + SQUARES.replace("inputs: {xs: squares}", "inputs: {xs: squars}"),
            "'squars' is neither a step nor a declared process input (steps.total.inputs.xs in "
            ".guild/processes/squares.yaml line 14); did you mean 'squares'? steps and inputs: "
            "numbers, squares, total, n",
            14, "steps.total.inputs.xs",
        ),
        (
            SQUARES.replace("tests.procwork:step_square", "tests.procwork:step_sqare"),
            "step 'squares' runs tests.procwork:step_sqare, which cannot be imported: tests.procwork "
            "has no attribute 'step_sqare' (steps.squares.run in .guild/processes/squares.yaml line 7); "
            "did you mean 'step_square'?",
            7, "steps.squares.run",
        ),
        (
            SQUARES.replace("tests.procwork:step_total", "tests.nowhere:step_total"),
            "step 'total' runs tests.nowhere:step_total, which cannot be imported: ModuleNotFoundError: "
            "No module named 'tests.nowhere' (steps.total.run in .guild/processes/squares.yaml line 11)",
            11, "steps.total.run",
        ),
        (
            SQUARES.replace("run: tests.procwork:step_total", "run: tests.procwork.step_total"),
            "bad value 'tests.procwork.step_total' for 'steps.total.run' in .guild/processes/squares.yaml "
            "line 11; expected module:function such as mypkg.tasks:rewrite",
            11, "steps.total.run",
        ),
        (
            SQUARES.replace("inputs: {xs: squares}", "inputs: {ys: squares}"),
            "step 'total' passes 'ys', but tests.procwork:step_total takes no parameter 'ys' "
            "(steps.total.inputs.ys in .guild/processes/squares.yaml line 10); its parameters: xs",
            10, "steps.total.inputs.ys",
        ),
        (
            SQUARES.replace("    inputs: {n: n}\n", ""),
            "step 'numbers': parameter 'n' of tests.procwork:step_list gets no value (steps.numbers in "
            ".guild/processes/squares.yaml line 3); add it under inputs (n: SOURCE), or give it a default",
            3, "steps.numbers",
        ),
        (
            SQUARES.replace("map: numbers", "map: numbers\n    timeout: soon"),
            "bad value 'soon' for 'steps.squares.timeout' in .guild/processes/squares.yaml line 10; "
            "expected a duration above 0 such as 250ms, 30s, 10m, 1h or a number of seconds, or null to disable",
            10, "steps.squares.timeout",
        ),
        (
            "steps: {}\n",
            "process 'squares' has no steps (steps in .guild/processes/squares.yaml line 1); "
            "add at least one step under steps:",
            1, "steps",
        ),
    ],
    ids=["typo-key", "unknown-step", "cycle", "unknown-input", "no-attribute", "no-module",
         "bad-ref", "unknown-param", "unfilled-param", "bad-timeout", "no-steps"],
)  # fmt: skip
def test_mistakes_name_the_file_step_key_and_line(text: str, message: str, line: int, key: str) -> None:
    err = error(text)
    if "ModuleNotFoundError" in message:
        assert str(err).startswith(message), str(err)
    else:
        assert str(err) == message
    assert (err.source, err.line, err.key) == (SOURCE, line, key)


def test_python_steps_must_be_importable_by_name() -> None:
    p = Process("lam", steps={"a": {"run": lambda: 1}})
    with pytest.raises(ConfigError) as info:
        p.definition()
    assert re.fullmatch(
        r"step 'a' runs \S*test_process_definitions:test_python_steps_must_be_importable_by_name"
        r"\.<locals>\.<lambda>, which agents cannot import by name \(steps\.a\.run in process 'lam' "
        r"\(test_process_definitions\.py\) line \d+\); define the function at module level "
        r"\(lambdas and nested functions have no importable name\)",
        str(info.value),
    ), str(info.value)


def test_inputs_are_bound_checked_and_defaulted() -> None:
    d = load_text(SQUARES, SOURCE, "squares")
    assert bind_inputs(d, {"n": 3}) == {"n": 3}
    with pytest.raises(ConfigError, match=re.escape(
        "process 'squares' needs the input 'n' (steps.numbers.inputs.n in .guild/processes/squares.yaml "
        "line 3), which was not given; pass n=... to run_process, or --input n=VALUE to guild run"
    )):  # fmt: skip
        bind_inputs(d, {})
    with pytest.raises(ConfigError, match=re.escape("process 'squares' (.guild/processes/squares.yaml) takes no input 'm'; it takes: n")):
        bind_inputs(d, {"n": 1, "m": 2})
    declared = load("inputs: {n: 5, label: null}\n" + SQUARES)
    assert bind_inputs(declared, {}) == {"n": 5, "label": None}  # type: ignore[arg-type]
    required = load("inputs: [n]\n" + SQUARES)
    assert required.inputs == {"n": REQUIRED}  # type: ignore[attr-defined]


def test_files_are_found_by_name_and_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / ".guild" / "processes"
    folder.mkdir(parents=True)
    (folder / "squares.yaml").write_text(SQUARES)
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    from guildcore.cache import TieredCache

    with TieredCache.from_config(config) as tiers:
        first, how1 = registry.definition("squares", config, tiers)
        again, how2 = registry.definition("squares", config, tiers)
        assert (how1, how2) == ("parsed", "cached") and again is first
        (folder / "squares.yaml").write_text(SQUARES.replace("version", "version") + "version: 2\n")
        changed, how3 = registry.definition("squares", config, tiers)
        assert (how3, changed.version) == ("parsed", "2")
    assert modules_named(str(folder / "squares.yaml"), "x") == ["tests.procwork"]
    with pytest.raises(ConfigError, match=r"unknown process 'sqares': no sqares.yaml in \.guild/processes; processes: squares"):
        registry.locate("sqares", config)
