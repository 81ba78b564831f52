"""Small slotted records written by hand, for the modules a first result needs.

A dataclass is built at import: its ``__init__``, ``__repr__`` and ``__eq__``
are generated as source and compiled, about a millisecond per class, and
``dataclasses`` itself imports ``inspect``, ``ast`` and ``dis`` (~8 ms). A
script that makes a ``Guild`` and submits once would pay ~40 ms of that
before its first result. A record here lists its fields in ``_fields`` (and so in
``__slots__``) and writes its ``__init__`` by hand (compiled once, into the ``.pyc``, and as
fast as a generated one); this base supplies the rest of what a dataclass
would: a ``repr`` and equality field by field, ``__match_args__``.
``Frozen`` adds immutability, hashing, pickling and ``replace``.

It does not cover defaults or field types (the ``__init__`` of each record
holds them), nor records that need none of this (plain classes do).
It imports nothing.

Declare fields in order, then slots from them (a literal ``__slots__`` would be
sorted by the linter, and the order is the ``repr``'s and the ``__init__``'s)::

    class Moved(Record):
        _fields = ("task_id", "old", "new")
        __slots__ = _fields

        def __init__(self, task_id: int, old: str, new: str) -> None:
            ...

A record with fields in a base class is not supported: the fields are those
of the record's own class.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound="Frozen")

__all__ = ["Frozen", "Record"]


class Record:
    """A mutable record: ``repr`` and ``==`` over ``_fields``, in order; unhashable.

    As a dataclass with ``eq=True``: equal when of the very same class with
    equal fields (compared as tuples, so an object is equal to itself even
    when it is a NaN).
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    __match_args__: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__match_args__ = cls._fields  # type: ignore[misc]  # set per class, as a dataclass does

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._fields])

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    # Defining __eq__ leaves __hash__ None: unhashable, as a mutable dataclass.


class Frozen(Record):
    """An immutable record: fields are set once, by ``__init__`` through ``_set``.

    Assigning or deleting a field raises ``dataclasses.FrozenInstanceError``
    (an ``AttributeError``), as a frozen dataclass does; hashing, pickling
    and copying go through the fields.
    """

    __slots__ = ()

    # How __init__ sets a field: the object's own setter, called straight from C.
    _set = object.__setattr__

    def __setattr__(self, name: str, value: Any) -> None:
        raise _frozen_error(self, name)

    def __delattr__(self, name: str) -> None:
        raise _frozen_error(self, name)

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, self._values())

    def replace(self: _F, **changes: Any) -> _F:
        """A copy with ``changes`` applied, checked by ``__init__`` (as ``dataclasses.replace``)."""
        unknown = set(changes) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__qualname__} has no field {sorted(unknown)[0]!r}")
        values = {name: changes.get(name, getattr(self, name)) for name in self._fields}
        return self.__class__(**values)


def _frozen_error(record: Record, name: str) -> AttributeError:
    # The dataclass error, so that code written against frozen dataclasses
    # still catches it; imported here only, on this error's path.
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot assign to field {name!r} of {type(record).__qualname__}")
