"""The start-up suite's task, in a module that imports nothing.

Start-up figures should be the pools' own. Workers import a task's module
on first use (forkserver and spawn) or inherit it (fork); ``workloads``
imports ``ast`` and ``pathlib`` for the refactor task, about 8 ms and
0.8 MB per worker that no pool can avoid and that would blur the comparison.
"""


def ping(x: int = 0) -> int:
    """Return ``x``: the first task of a fresh pool."""
    return x
