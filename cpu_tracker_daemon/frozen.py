"""Frozen records that cost almost nothing to define.

Every command imports the project's records: the configuration, the privacy settings, the
budget, the ledger's rows, 25 classes in all. As ``typing.NamedTuple`` classes they cost
``cpu-tracker status`` 22 M of its 220 M instructions at import: each class compiles its
``__new__`` from source and checks each annotation. Twenty ``Frozen`` classes of six fields
cost 2.2 M, where twenty such named tuples cost 33 M: a ``Frozen`` class reads its fields from
the annotations as written, never evaluating them, and all share one ``__init__``.

It keeps what the code used of a named tuple: construction by position or keyword with
defaults, immutability, equality and hashing by value, a repr, ``_replace``, ``_asdict`` and
``_fields``. It is not a tuple: it cannot be unpacked, indexed or ordered, and it equals only a
record of its own class. Type checkers read it as a frozen dataclass (PEP 681), so they check
every construction and every field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, dataclass_transform

if TYPE_CHECKING:
    from typing import Self


@dataclass_transform(frozen_default=True)
class _FrozenType(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> _FrozenType:
        if "__slots__" in namespace:  # Frozen itself
            return super().__new__(mcs, name, bases, namespace)
        own = tuple(namespace.get("__annotations__", ()))
        inherited: tuple[str, ...] = ()
        defaults: dict[str, Any] = {}
        for base in bases:
            inherited += getattr(base, "_fields", ())
            defaults.update(getattr(base, "_defaults", {}))
        for field in own:
            if field in namespace:
                defaults[field] = namespace.pop(field)
            elif defaults and field not in defaults:
                raise TypeError(f"{name}: field {field!r} without a default follows one with a default")
        namespace["__slots__"] = own
        namespace["_fields"] = inherited + own
        namespace["_defaults"] = defaults
        return super().__new__(mcs, name, bases, namespace)


class Frozen(metaclass=_FrozenType):
    """A frozen record: subclass it and annotate the fields, as with a dataclass."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]]
    _defaults: ClassVar[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, not {len(args)}")
        setter = object.__setattr__
        for field, value in zip(fields, args, strict=False):
            setter(self, field, value)
        for field in fields[len(args) :]:
            if field in kwargs:
                setter(self, field, kwargs.pop(field))
            elif field in self._defaults:
                setter(self, field, self._defaults[field])
            else:
                raise TypeError(f"{type(self).__name__}() is missing the field {field!r}")
        for field in kwargs:
            doubled = field in fields
            raise TypeError(f"{type(self).__name__}() {'got twice' if doubled else 'has no field'} {field!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, field) for field in self._fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen; use _replace")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        body = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__name__}({body})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._values())

    def _replace(self, **changes: Any) -> Self:
        return type(self)(**{**self._asdict(), **changes})

    def _asdict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self._fields}
