"""The frozen record base: a named tuple without the compiling, and what a type checker sees."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cpu_tracker_daemon.frozen import Frozen


class Point(Frozen):
    x: int
    y: int
    label: str = "origin"


class Other(Frozen):
    x: int
    y: int
    label: str = "origin"


def test_fields_come_from_the_annotations_in_order() -> None:
    """The fields are the annotated names, in the order written; defaults only where given."""
    assert Point._fields == ("x", "y", "label")
    assert Point._defaults == {"label": "origin"}


def test_construction_by_position_keyword_and_default() -> None:
    """Positional, keyword and defaulted fields all land on the right names."""
    p = Point(1, y=2)
    assert (p.x, p.y, p.label) == (1, 2, "origin")
    assert Point(1, 2, "here").label == "here"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1,), {}, "missing the field 'y'"),
        ((1, 2, "a", "b"), {}, "takes 3 arguments, not 4"),
        ((1, 2), {"z": 3}, "has no field 'z'"),
        ((1, 2), {"x": 3}, "got twice 'x'"),
    ],
)
def test_a_wrong_construction_is_refused(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    """A missing, surplus, unknown or doubled field is a TypeError naming it."""
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)


def test_a_record_is_frozen() -> None:
    """No field can be set or deleted, and no new attribute added."""
    p = Point(1, 2)
    with pytest.raises(AttributeError, match="no setter"):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no deleter"):
        del p.x  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.z = 1  # type: ignore[attr-defined]
    assert p.x == 1


def test_it_is_the_tuple_of_its_fields() -> None:
    """As a named tuple: equal, hashed, indexed and unpacked as the tuple of its values."""
    p = Point(1, 2)
    assert p == (1, 2, "origin")
    assert hash(p) == hash((1, 2, "origin"))
    assert p[1] == 2
    x, y, label = p
    assert (x, y, label) == (1, 2, "origin")
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2


def test_repr_names_every_field() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2, label='origin')"


def test_replace_and_asdict() -> None:
    """_replace makes a new record with the changes; the old one is untouched."""
    p = Point(1, 2)
    q = p._replace(y=5)
    assert Point(1, 5) == q
    assert Point(1, 2) == p
    assert q._asdict() == {"x": 1, "y": 5, "label": "origin"}
    with pytest.raises(TypeError, match="has no field 'z'"):
        p._replace(z=1)


def test_pickle_and_copy_round_trip() -> None:
    """A record survives pickling and copying, both of which rebuild it from its values."""
    p = Point(1, 2, "here")
    assert p == pickle.loads(pickle.dumps(p))
    assert p == copy.copy(p)
    assert p == copy.deepcopy(p)


def test_a_field_without_a_default_after_one_with_is_refused() -> None:
    """As with a dataclass: the class itself is refused when it is defined."""
    with pytest.raises(TypeError, match="'b' without a default follows one with a default"):

        class Bad(Frozen):
            a: int = 0
            b: int


@pytest.mark.slow
def test_a_type_checker_checks_every_construction(tmp_path: Path) -> None:
    """mypy reads a Frozen class as a frozen dataclass: a wrong type, a missing field and an
    assignment are each an error, on the line where they are; using it as a tuple is not."""
    source = tmp_path / "uses.py"
    source.write_text(
        textwrap.dedent(
            """
            from cpu_tracker_daemon.frozen import Frozen

            class P(Frozen):
                a: int
                b: str = "x"

            ok = P(1, b="y")
            wrong = P("no")
            missing = P()
            ok.a = 3
            first, second = ok
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    errors = {int(line.split(":")[1]) for line in done.stdout.splitlines() if ": error:" in line}
    assert {9, 10, 11} == errors, done.stdout
