"""``ContextRef``: the small value that names one context generation.

A reference travels from the supervisor to an agent as a task argument. It
is a plain frozen dataclass (picklable) and the codec carries it as ext
type 16, registered when this module is imported. It holds no handle to the
segment: an agent turns it into a view with ``attach(ref)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from guildcore import codec

if TYPE_CHECKING:
    from guildcore.context.view import ContextView

CONTEXT_REF_EXT = 16  # reserved in guildcore.codec for context references


@dataclass(frozen=True, slots=True)
class ContextRef(Mapping[Any, Any]):
    """Names one context segment: ``name`` in /dev/shm, its ``generation`` and ``size`` in bytes.

    It is also a read-only Mapping over that generation, so a task that
    receives the reference as an argument reads it directly
    (``def task(ctx, key): return ctx[key]``); the first access maps the
    segment in this process (once per generation).
    """

    name: str
    generation: int
    size: int

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
