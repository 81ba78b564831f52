"""``ContextRef``: the small value that names one context generation.

A reference travels from the supervisor to an agent as a task argument. It
is a small immutable, picklable record, and the codec carries it as ext
type 16, registered when this module is imported. It holds no handle to the
segment: an agent turns it into a view with ``attach(ref)``.

Written by hand rather than as a frozen dataclass: every agent that reads a
context imports this module, and ``dataclasses`` (with ``inspect``, ``ast``
and ``typing``) would cost each of them about 1.2 MB and 10 ms.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import msgpack

from guildcore import codec
from guildcore._errors import SerializationError

TYPE_CHECKING = False  # typing costs every agent ~0.45 MB and ~3 ms; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from guildcore.context.view import ContextView

CONTEXT_REF_EXT = 16  # reserved in guildcore.codec for context references


class ContextRef(Mapping["Any", "Any"]):
    """Names one context segment: ``name`` in /dev/shm, its ``generation`` and ``size`` in bytes.

    It is also a read-only Mapping over that generation, so a task that
    receives the reference as an argument reads it directly
    (``def task(ctx, key): return ctx[key]``); the first access maps the
    segment in this process (once per generation).
    """

    __slots__ = ("generation", "name", "size")
    __match_args__ = ("name", "generation", "size")

    name: str
    generation: int
    size: int

    def __init__(self, name: str, generation: int, size: int) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "generation", generation)
        object.__setattr__(self, "size", size)

    def __setattr__(self, attr: str, value: object) -> None:
        raise AttributeError(f"ContextRef is read-only: cannot set {attr!r}")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"ContextRef is read-only: cannot delete {attr!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (ContextRef, (self.name, self.generation, self.size))

    def __setstate__(self, state: object) -> None:
        # Pickles from when ContextRef was a slotted dataclass: its fields, in order.
        if not isinstance(state, list | tuple) or len(state) != 3:
            raise SerializationError(f"cannot restore a ContextRef from {state!r}")
        for attr, value in zip(self.__match_args__, state, strict=True):
            object.__setattr__(self, attr, value)

    def __eq__(self, other: object) -> bool:
        # Two references are equal when they name the same generation, not
        # when their contents are (Mapping's equality would attach both).
        if type(other) is not ContextRef:
            return NotImplemented
        return (self.name, self.generation, self.size) == (other.name, other.generation, other.size)

    def __hash__(self) -> int:
        return hash((self.name, self.generation, self.size))

    def __repr__(self) -> str:
        return f"ContextRef(name={self.name!r}, generation={self.generation!r}, size={self.size!r})"

    def attach(self) -> ContextView:
        """The read-only view of this generation in this process (cached)."""
        from guildcore.context.view import attach

        return attach(self)

    def __getitem__(self, key: Any) -> Any:
        return self.attach()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.attach())

    def __len__(self) -> int:
        return len(self.attach())

    def __contains__(self, key: object) -> bool:
        return key in self.attach()


def _ref_to_bytes(ref: Any) -> bytes:
    data: bytes = msgpack.packb([ref.name, ref.generation, ref.size])
    return data


def _ref_from_bytes(data: bytes) -> ContextRef:
    name, generation, size = msgpack.unpackb(data)
    return ContextRef(str(name), int(generation), int(size))


codec.register_ext(CONTEXT_REF_EXT, ContextRef, _ref_to_bytes, _ref_from_bytes)
