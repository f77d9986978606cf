"""Named tuples that cost almost nothing to define.

Every command imports the project's records: the configuration, the privacy settings, the
budget, the ledger's rows, 25 classes in all. As ``typing.NamedTuple`` classes they cost
``cpu-tracker status`` 22 M of its 220 M instructions at import: each class compiles its
``__new__`` from source and checks each annotation. Twenty ``Frozen`` classes of six fields
cost 3.0 M, where twenty such named tuples cost 33 M: a ``Frozen`` class reads its fields from
the annotations as written, never evaluating them, and all share one ``__new__``.

A ``Frozen`` record is a tuple with a property per field, as a named tuple is: immutable,
compared and hashed as a tuple (at C speed), constructed by position or keyword with defaults,
with ``_replace``, ``_asdict`` and ``_fields``. Type checkers read it as a frozen dataclass
(PEP 681), so they check every construction and every field.
"""

from __future__ import annotations

from operator import itemgetter

TYPE_CHECKING = False  # not typing's: a command need not import typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self, dataclass_transform

    _Tuple = tuple[Any, ...]
else:  # at run time the transform only marks the class for introspection, which nothing here does

    def dataclass_transform(**_: object) -> object:
        return lambda cls: cls

    _Tuple = tuple

_MISSING: Any = object()


@dataclass_transform(frozen_default=True)
class _FrozenType(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> _FrozenType:
        if "_fields" in namespace:  # Frozen itself
            return super().__new__(mcs, name, bases, namespace)
        fields = tuple(namespace.get("__annotations__", ()))
        defaults: dict[str, Any] = {}
        for index, field in enumerate(fields):
            if field in namespace:
                defaults[field] = namespace[field]
            elif defaults:
                raise TypeError(f"{name}: field {field!r} without a default follows one with a default")
            namespace[field] = property(itemgetter(index), doc=f"field {index}: {field}")
        namespace["__slots__"] = ()
        namespace["_fields"] = fields
        namespace["_defaults"] = defaults
        return super().__new__(mcs, name, bases, namespace)


class Frozen(_Tuple, metaclass=_FrozenType):
    """A frozen record: subclass it and annotate the fields, as with a dataclass."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        fields = cls._fields
        given = len(args)
        if not kwargs and given == len(fields):
            return super().__new__(cls, args)
        if given > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments, not {given}")
        values = list(args)
        defaults = cls._defaults
        for field in fields[given:]:
            value = kwargs.pop(field, _MISSING)
            if value is _MISSING:
                value = defaults.get(field, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{cls.__name__}() is missing the field {field!r}")
            values.append(value)
        for field in kwargs:
            doubled = field in fields
            raise TypeError(f"{cls.__name__}() {'got twice' if doubled else 'has no field'} {field!r}")
        return super().__new__(cls, values)

    def __repr__(self) -> str:
        body = ", ".join(f"{field}={value!r}" for field, value in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({body})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def _replace(self, **changes: Any) -> Self:
        values = [changes.pop(field, value) for field, value in zip(self._fields, self, strict=True)]
        for field in changes:
            raise TypeError(f"{type(self).__name__}() has no field {field!r}")
        return tuple.__new__(type(self), values)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))
