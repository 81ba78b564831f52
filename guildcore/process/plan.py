"""Planning a process run: which steps may start now, which never will. Pure.

The runner asks after every step that ends; nothing here starts a step,
reads a clock or touches a process, so the rules are tested with plain sets:

- a step is *ready* when every step it needs has succeeded and it has not
  started: steps start one by one as their needs are met, not in waves, so a
  slow branch never holds back a fast one;
- a step is *doomed* when a step it needs, directly or through others, has
  failed (or was doomed, or cancelled): it will never run, and its cause is
  the failed step upstream. Steps on other branches go on;
- among ready steps, lower ``priority`` first, then definition order.

It does not cover running steps or the fail-fast policy (``runner``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

__all__ = ["Graph", "doomed", "find_cycle", "ready"]


@dataclass(frozen=True)
class Graph:
    """The steps of one process and what each needs (directly)."""

    order: tuple[str, ...]
    needs: Mapping[str, frozenset[str]]
    priority: Mapping[str, int]

    @classmethod
    def build(
        cls, order: Sequence[str], needs: Mapping[str, Sequence[str]], priority: Mapping[str, int] | None = None
    ) -> Graph:
        return cls(
            tuple(order),
            {s: frozenset(needs.get(s, ())) for s in order},
            {s: (priority or {}).get(s, 0) for s in order},
        )

    def upstream(self, step: str) -> list[str]:
        """Every step ``step`` needs, directly or not, in definition order."""
        seen: set[str] = set()
        todo = list(self.needs[step])
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(self.needs[s])
        return [s for s in self.order if s in seen]

    def dependants(self, step: str) -> list[str]:
        """Every step that needs ``step``, directly or not, in definition order."""
        return [s for s in self.order if step in self.upstream(s)]


def ready(graph: Graph, *, succeeded: Set[str], started: Set[str]) -> list[str]:
    """Steps not started whose needs have all succeeded: lower priority first, then in order."""
    out = [s for s in graph.order if s not in started and graph.needs[s] <= succeeded]
    position = {s: i for i, s in enumerate(graph.order)}
    return sorted(out, key=lambda s: (graph.priority[s], position[s]))


def doomed(graph: Graph, *, failed: Set[str], started: Set[str]) -> dict[str, str]:
    """Steps not started that can never run, each with the failed step upstream that stops it.

    ``failed`` holds the steps that ended without a result (raised, or were
    cancelled). The cause named is the first failed step upstream in
    definition order.
    """
    out: dict[str, str] = {}
    for s in graph.order:
        if s in started or s in failed:
            continue
        causes = [u for u in graph.upstream(s) if u in failed]
        if causes:
            out[s] = causes[0]
    return out


def find_cycle(order: Sequence[str], needs: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle of needs as a path that ends where it starts (``[a, b, a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(step: str) -> list[str] | None:
        state[step] = 1
        path.append(step)
        for need in needs.get(step, ()):
            if state.get(need) == 1:
                return [*path[path.index(need) :], need]
            if need not in state:
                found = visit(need)
                if found is not None:
                    return found
        path.pop()
        state[step] = 2
        return None

    for step in order:
        if step not in state:
            found = visit(step)
            if found is not None:
                return found
    return None
