"""The planner as a pure function: which steps may start, which never will; no processes."""

from __future__ import annotations

from guildcore.process.plan import Graph, doomed, find_cycle, ready

#   index ─┬─> lint ────┬─> report
#          └─> rewrite ─┘
#   stats (independent)
WORKFLOW = Graph.build(
    ["index", "lint", "rewrite", "report", "stats"],
    {"lint": ["index"], "rewrite": ["index"], "report": ["lint", "rewrite"]},
)


def test_roots_start_at_once() -> None:
    assert ready(WORKFLOW, succeeded=set(), started=set()) == ["index", "stats"]


def test_each_step_starts_when_its_own_needs_are_met_not_in_waves() -> None:
    # lint finished while rewrite still runs: report waits, nothing else is held back.
    started = {"index", "stats", "lint", "rewrite"}
    assert ready(WORKFLOW, succeeded={"index", "lint"}, started=started) == []
    # stats (started with index, still running) does not hold report back: no wave boundary.
    assert ready(WORKFLOW, succeeded={"index", "lint", "rewrite"}, started=started) == ["report"]


def test_independent_branches_start_together() -> None:
    assert ready(WORKFLOW, succeeded={"index"}, started={"index", "stats"}) == ["lint", "rewrite"]


def test_priority_orders_ready_steps() -> None:
    g = Graph.build(["a", "b", "c"], {}, {"a": 5, "b": 0, "c": -1})
    assert ready(g, succeeded=set(), started=set()) == ["c", "b", "a"]


def test_a_failed_step_dooms_its_dependants_only() -> None:
    # lint failed: report can never run; rewrite (running) and stats go on.
    started = {"index", "stats", "lint", "rewrite"}
    assert doomed(WORKFLOW, failed={"lint"}, started=started) == {"report": "lint"}
    # index failed: everything downstream names it as the cause, stats is untouched.
    assert doomed(WORKFLOW, failed={"index"}, started={"index", "stats"}) == {
        "lint": "index",
        "rewrite": "index",
        "report": "index",
    }
    assert ready(WORKFLOW, succeeded={"stats"}, started={"index", "stats"}) == []


def test_the_cause_is_the_first_failed_step_upstream() -> None:
    started = {"index", "lint", "rewrite", "stats"}
    assert doomed(WORKFLOW, failed={"lint", "rewrite"}, started=started) == {"report": "lint"}


def test_upstream_and_dependants() -> None:
    assert WORKFLOW.upstream("report") == ["index", "lint", "rewrite"]
    assert WORKFLOW.dependants("index") == ["lint", "rewrite", "report"]
    assert WORKFLOW.dependants("stats") == []


def test_cycles_are_found_as_a_path() -> None:
    assert find_cycle(["a", "b", "c"], {"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "c", "b", "a"]
    assert find_cycle(["a", "b"], {"b": ["a"]}) is None
    assert find_cycle(["a"], {"a": ["a"]}) == ["a", "a"]
