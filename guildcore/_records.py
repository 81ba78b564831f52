"""Small slotted records without ``dataclasses``, for the modules a first result needs.

A dataclass is built at import: its ``__init__``, ``__repr__`` and ``__eq__``
are generated as source and compiled, about a millisecond per class, and
``dataclasses`` itself imports ``inspect``, ``ast`` and ``dis`` (~8 ms). A
script that makes a ``Guild`` and submits once would pay ~40 ms of that
before its first result. This module covers two ways around it:

- ``Record`` (mutable) and ``Frozen``: the record lists its fields in
  ``_fields`` (and so in ``__slots__``) and writes its ``__init__`` by hand,
  compiled once into the ``.pyc`` and as fast as a generated one: for
  records made on hot paths. The base supplies the rest of what a
  dataclass would: a ``repr`` and equality field by field,
  ``__match_args__``; ``Frozen`` adds immutability, hashing, pickling and
  ``replace``.
- ``Declared``: a frozen record declared as a frozen dataclass is (annotated
  fields with defaults, ``field(default_factory=..., metadata=...)``,
  ``fields(...)`` to list them), whose ``__init__`` is one generic loop: for
  records made a few times per run, such as settings. No code is generated.

And ``made_once``: an attribute made on its first use, once, whichever
thread asks first, for what the path to a first result leaves for later.

It does not cover inheritance of fields (the fields are those of the
record's own class), ``ClassVar`` fields, ``dataclasses.replace``/``asdict``
(use ``replace`` and the fields). It imports nothing.

Hand-written records declare their fields in order, then slots from them (a
literal ``__slots__`` would be sorted by the linter, and the order is the
``repr``'s and the ``__init__``'s)::

    class Moved(Record):
        _fields = ("task_id", "old", "new")
        __slots__ = _fields

        def __init__(self, task_id: int, old: str, new: str) -> None:
            ...
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound="Frozen")
    _T = TypeVar("_T")

__all__ = ["MISSING", "Declared", "Field", "Frozen", "Record", "field", "fields", "made_once"]


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


# -- declared records ------------------------------------------------------------------------


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # no default given


class Field:
    """One field of a ``Declared`` record, as ``dataclasses.Field``: name, default, metadata."""

    __slots__ = ("default", "default_factory", "metadata", "name")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING, metadata: Any = None) -> None:
        self.name = ""  # set when its class is made
        self.default = default
        self.default_factory = default_factory
        self.metadata = {} if metadata is None else metadata

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, default_factory={self.default_factory!r})"


def field(*, default: Any = MISSING, default_factory: Any = MISSING, metadata: Any = None) -> Any:
    """A field with a default, or a factory of defaults, and metadata (as ``dataclasses.field``)."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, metadata)


def fields(record: Any) -> tuple[Field, ...]:
    """The fields of a ``Declared`` record or class, in order."""
    specs: tuple[Field, ...] = record._specs
    return specs


class _DeclaredMeta(type):
    """Turns annotated class attributes into slots, and their values into ``Field`` defaults."""

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any], **kwargs: Any) -> _DeclaredMeta:
        if "_specs" not in ns:  # a record class, not the Declared base
            specs = []
            for fname, annotation in ns.get("__annotations__", {}).items():
                if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
                    raise TypeError(f"{name}.{fname}: ClassVar fields are not supported by Declared records")
                value = ns.pop(fname, MISSING)
                spec = value if isinstance(value, Field) else Field(default=value)
                spec.name = fname
                specs.append(spec)
            ns["_specs"] = tuple(specs)
            ns["_fields"] = tuple(spec.name for spec in specs)
            ns["__slots__"] = ns["_fields"]
        return super().__new__(mcs, name, bases, ns, **kwargs)


class Declared(Frozen, metaclass=_DeclaredMeta):
    """A frozen record declared like a frozen dataclass; see the module docstring."""

    __slots__ = ()
    _specs: tuple[Field, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        specs = self._specs
        cls = type(self).__qualname__
        if len(args) > len(specs):
            raise TypeError(f"{cls}() takes {len(specs)} positional arguments but {len(args)} were given")
        for spec, value in zip(specs, args, strict=False):  # args may be fewer: defaults follow
            if spec.name in kwargs:
                raise TypeError(f"{cls}() got multiple values for argument {spec.name!r}")
            self._set(spec.name, value)
        for spec in specs[len(args) :]:
            if spec.name in kwargs:
                value = kwargs.pop(spec.name)
            elif spec.default is not MISSING:
                value = spec.default
            elif spec.default_factory is not MISSING:
                value = spec.default_factory()
            else:
                raise TypeError(f"{cls}() missing required argument: {spec.name!r}")
            self._set(spec.name, value)
        if kwargs:
            raise TypeError(f"{cls}() got an unexpected keyword argument {next(iter(kwargs))!r}")


def made_once(owner: object, name: str, lock: Any, make: Callable[[], _T]) -> _T:
    """``owner.<name>``, set to ``make()`` the first time it is None (under ``lock``, checked twice).

    Read without the lock once made; ``make`` runs under it, so it must not
    take ``lock`` itself.
    """
    value: _T | None = getattr(owner, name)
    if value is None:
        with lock:
            value = getattr(owner, name)
            if value is None:
                value = make()
                setattr(owner, name, value)
    return value
