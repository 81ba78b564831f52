"""Task functions for the result-cache tests (module level: they travel by reference)."""

from __future__ import annotations

import os

import faults


def double_logged(i: int, control_dir: str) -> int:
    """Double ``i``; log the call; hang at the item named in ``control_dir/hang_at``."""
    with open(os.path.join(control_dir, "calls.log"), "a") as f:
        f.write(f"{i}\n")
    hang_at = os.path.join(control_dir, "hang_at")
    if os.path.exists(hang_at):
        with open(hang_at) as f:
            if int(f.read()) == i:
                faults.hang(os.path.join(control_dir, "started"))
    return i * 2


def calls(control_dir: str) -> list[int]:
    try:
        with open(os.path.join(control_dir, "calls.log")) as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


def read_key(ctx: object, key: str) -> object:
    return ctx[key]  # type: ignore[index]


def context_value(key: str) -> object:
    import guildcore

    return guildcore.context()[key]
