"""Which frames an agent may send, with which fields: checked before anything reads them.

This module covers ``frame_problem``: why a decoded frame from an agent
cannot be used (a kind only the supervisor sends, too few fields, fields of
the wrong types, a task frame before READY), or None. The owner loop must
never raise on what an agent sends: a short or mistyped frame from a broken
or hostile agent kills that agent (``taskrules``). It does not cover
decoding (``codec``) nor frames that fail to decode at all (``FrameBad``).
"""

from __future__ import annotations

from guildcore.codec import Kind
from guildcore.engine.lifecycle import AgentRecord

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

_FROM_AGENT = frozenset({Kind.READY, Kind.RESULT, Kind.ERROR, Kind.STATS, Kind.CHUNK, Kind.END, Kind.WITHDRAWN})


def frame_problem(kind: int, task_id: int, fields: list[Any], agent: AgentRecord) -> str | None:
    """Why a decoded frame from ``agent`` cannot be used, or None if it can.

    Checked before anything reads a field: a short or mistyped frame from a
    broken (or hostile) agent must kill that agent, never raise in the loop.
    """
    if kind not in _FROM_AGENT:
        return f"a {kind_name(kind)} frame, which agents never send"
    if not agent.ready and kind not in (Kind.READY, Kind.WITHDRAWN) and not (kind == Kind.ERROR and task_id == 0):
        return f"a {kind_name(kind)} frame before READY"
    n = len(fields)
    if kind == Kind.RESULT:
        return None if n >= 1 else "a RESULT frame without its value"
    if kind == Kind.ERROR:
        if n != 5:
            return f"an ERROR frame with {n} fields instead of 5"
        _exc, tb, type_name, message, flags = fields
        if not (_is_int(flags) and isinstance(type_name, str) and isinstance(message, str) and isinstance(tb, str | None)):
            return "an ERROR frame with fields of the wrong types"
        if task_id == 0 and agent.ready:
            return "an initializer ERROR frame after READY"
        return None
    if kind == Kind.READY:
        if n < 1 or not all(_is_int(f) for f in fields[:2]):
            return "a READY frame without its pid and baseline"
        return None
    if kind == Kind.STATS:
        if n < 1 or not (_is_int(fields[0]) or type(fields[0]) is float):
            return "a STATS frame without its timing"
        return None
    if kind == Kind.CHUNK:
        if n not in (2, 5) or not _is_int(fields[0]) or (n == 5 and not all(_is_int(f) for f in fields[2:])):
            return "a CHUNK frame with the wrong fields"
        return None
    if kind == Kind.END:
        if n < 1 or not _is_int(fields[0]) or (n > 1 and type(fields[1]) is not bool):
            return "an END frame with the wrong fields"
        return None
    return None  # WITHDRAWN: the task id is all it carries


def _is_int(value: object) -> bool:
    return type(value) is int


def kind_name(kind: int) -> str:
    try:
        return Kind(kind).name
    except ValueError:
        return f"kind {kind}"
