"""Peer files are hostile: every bad kind is skipped with its reason, and time zones are compared right."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon.network.peers import (
    MAX_BYTES,
    UNPARSEABLE,
    StillWriting,
    held_open,
    read_release,
    release_path,
)
from cpu_tracker_daemon.untrusted import NotAccepted

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MAX_AGE = timedelta(hours=2)
PEER = "alice@example.org"


def release(**overrides: Any) -> dict[str, Any]:
    """A valid member release, as the member code writes it (see test_real_member_outputs_are_accepted)."""
    doc: dict[str, Any] = {
        "schema": "cpu-tracker/release",
        "schema_version": 2,
        "release_id": "0123456789abcdef0123456789abcdef",
        "cpu": 41.5,
        "cpu_units": 4150,
        "cpu_clamped": 41.5,
        "timestamp": (NOW - timedelta(minutes=10)).isoformat(),
        "window": {"start": NOW.isoformat(), "end": NOW.isoformat(), "samples": 50, "interval_seconds": 1.0},
        "privacy": {
            "unit": "window",
            "mechanism": "discrete_laplace",
            "epsilon": 0.5,
            "delta": 0.0,
            "sensitivity": 100.0,
            "sensitivity_units": 10_000,
            "grid": 0.01,
            "noise_scale": 200.0,
            "noise_stddev": 282.8427124451562,
            "unbiased": True,
            "lower": 0.0,
            "upper": 100.0,
        },
        "generator": "cpu-tracker 0.1.0",
    }
    doc.update(overrides)
    return doc


def privacy(**overrides: Any) -> dict[str, Any]:
    doc = release()
    doc["privacy"].update(overrides)
    return doc


def put(datasites: Path, peer: str, content: Any, raw: bytes | None = None) -> Path:
    path = release_path(datasites, peer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else json.dumps(content).encode())
    return path


def reason(datasites: Path, peer: str = PEER) -> str:
    with pytest.raises(NotAccepted) as info:
        read_release(datasites, peer, NOW, MAX_AGE)
    return str(info.value)


without_privacy = release()
del without_privacy["privacy"]

HOSTILE: dict[str, tuple[Any, str]] = {
    "a JSON list": ([1, 2, 3], "not a JSON object"),
    "another schema": (release(schema="cpu-tracker/aggregate"), "not a cpu-tracker release"),
    "schema version 3": (release(schema_version=3), "unsupported schema version"),
    "schema version true": (release(schema_version=True), "unsupported schema version"),
    # CI's fuzzer: a dict here raised TypeError (unhashable) out of the reader, past NotAccepted.
    "schema version an object": (release(schema_version={"unit": "window"}), "unsupported schema version"),
    "schema version a list": (release(schema_version=[2]), "unsupported schema version"),
    "a float mechanism in schema 2": (privacy(mechanism="laplace"), "unknown mechanism"),
    "noise declared 10x what epsilon buys": (
        privacy(noise_stddev=2828.427124451562),
        "declared noise does not match its parameters",
    ),
    "noise declared below what epsilon buys": (
        privacy(noise_stddev=28.28),
        "declared noise does not match its parameters",
    ),
    "epsilon below 1e-6": (privacy(epsilon=1e-9), "bad epsilon"),
    "samples missing": (release(window={"start": NOW.isoformat()}), "bad window"),
    "cpu off the grid": (release(cpu=41.505), "cpu is not on the grid"),
    "cpu_units disagree with cpu": (release(cpu_units=4151), "cpu is not on the grid"),
    "cpu_units missing": (release(cpu_units=None), "cpu is not on the grid"),
    "bounds off the grid": (privacy(lower=0.001), "bad bounds"),
    "release_id with a path": (release(release_id="../../x"), "bad release_id"),
    "cpu is text": (release(cpu="41.5"), "cpu is not a finite number"),
    "cpu is true": (release(cpu=True), "cpu is not a finite number"),
    "cpu is null": (release(cpu=None), "cpu is not a finite number"),
    "cpu poisons the mean": (release(cpu=1e12), "cpu implausibly far out of range"),
    "no privacy block": (without_privacy, "privacy block missing"),
    "privacy is a string": (release(privacy="laplace"), "privacy block missing"),
    "unknown mechanism": (privacy(mechanism="none"), "unknown mechanism"),
    "unknown unit": (privacy(unit="bit"), "unknown privacy unit"),
    "biased snapping": (privacy(mechanism="snapping", unbiased=False), "biased mechanism"),
    "epsilon zero": (privacy(epsilon=0), "bad epsilon"),
    "delta one": (privacy(delta=1.0), "bad delta"),
    "no noise": (privacy(noise_stddev=0), "bad noise_stddev"),
    "negative noise": (privacy(noise_stddev=-3), "bad noise_stddev"),
    "bounds upside down": (privacy(lower=90, upper=10), "bad bounds"),
    "naive timestamp": (release(timestamp="2026-06-01T11:50:00"), "timestamp is not a timezone-aware time"),
    "timestamp not a time": (release(timestamp="last tuesday"), "timestamp is not a timezone-aware time"),
    "timestamp a number": (release(timestamp=1780000000), "timestamp is not a timezone-aware time"),
    "from the future": (release(timestamp=(NOW + timedelta(hours=1)).isoformat()), "timestamp in the future"),
    "stale": (release(timestamp=(NOW - timedelta(hours=3)).isoformat()), "stale"),
}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children) | st.dictionaries(st.text(max_size=10), children),
    max_leaves=20,
)


class TestHostile:
    @pytest.mark.parametrize("case", sorted(HOSTILE))
    def test_each_kind_is_skipped_with_its_reason(self, tmp_path: Path, case: str) -> None:
        """Each malformed, implausible or stale release is skipped with a stable reason."""
        content, expected = HOSTILE[case]
        put(tmp_path, PEER, copy.deepcopy(content))
        assert reason(tmp_path) == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (b"\xff\xfe\x00junk", "not UTF-8 JSON"),
            (b'{"cpu": NaN}', "not UTF-8 JSON"),
            (b'{"cpu": Infinity}', "not UTF-8 JSON"),
            (b"[" * 50_000, "not UTF-8 JSON"),
            (b" " * (MAX_BYTES + 1), "too large"),
            (b"", "not UTF-8 JSON"),
        ],
    )
    def test_bytes_that_are_not_json_are_skipped(self, tmp_path: Path, raw: bytes, expected: str) -> None:
        """Binary junk, NaN, deep nesting, oversize and empty files are skipped, never parsed into trouble."""
        put(tmp_path, PEER, None, raw=raw)
        assert reason(tmp_path) == expected

    def test_bad_peer_names(self, tmp_path: Path) -> None:
        """Names that are not plain addresses are refused before any path is built."""
        for name in ("..", "not-an-email", "a@b", "x@y.org/../../z", "a b@example.org"):
            assert reason(tmp_path, name) == "bad peer name"

    def test_symlinks_out_of_the_tree_and_to_other_peers(self, tmp_path: Path) -> None:
        """A peer folder linked outside the tree, or a release linked to another file, is refused."""
        datasites = tmp_path / "datasites"
        outside = put(tmp_path / "outside", PEER, release())
        (datasites).mkdir()
        (datasites / "mallory@example.org").symlink_to(outside.parents[2], target_is_directory=True)
        assert reason(datasites, "mallory@example.org") == "symlink"
        real = put(datasites, PEER, release())
        linked = release_path(datasites, "bob@example.org")
        linked.parent.mkdir(parents=True)
        linked.symlink_to(real)
        assert reason(datasites, "bob@example.org") == "symlink"

    def test_a_fifo_or_folder_is_not_read(self, tmp_path: Path) -> None:
        """A FIFO in place of the release would block a naive reader; it is refused."""
        path = release_path(tmp_path, PEER)
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
        assert reason(tmp_path) == "not a regular file"

    def test_missing_release(self, tmp_path: Path) -> None:
        """A peer without a release is counted as such, not as an error."""
        (tmp_path / PEER).mkdir()
        assert reason(tmp_path) == "no release"

    @pytest.mark.slow
    @settings(max_examples=300, deadline=None)
    @given(JSON_VALUES)
    def test_fuzzed_documents_never_raise_anything_else(self, doc: Any) -> None:
        """Any JSON document is either a release or NotAccepted."""
        from cpu_tracker_daemon.network import peers

        with contextlib.suppress(NotAccepted):
            peers._validate(doc, PEER, NOW, MAX_AGE)


class TestTimeZones:
    @pytest.mark.parametrize("offset_hours", [-11, -5, 0, 3, 5.5, 9, 14])
    def test_fresh_release_accepted_in_any_zone(self, tmp_path: Path, offset_hours: float) -> None:
        """Ten minutes old is fresh whatever zone the peer wrote it in (the original rejected east of UTC)."""
        zone = timezone(timedelta(hours=offset_hours))
        put(tmp_path, PEER, release(timestamp=(NOW - timedelta(minutes=10)).astimezone(zone).isoformat()))
        assert read_release(tmp_path, PEER, NOW, MAX_AGE).timestamp == NOW - timedelta(minutes=10)

    @pytest.mark.parametrize("offset_hours", [-8, -3, 4])
    def test_old_release_rejected_in_any_zone(self, tmp_path: Path, offset_hours: float) -> None:
        """Three hours old is stale whatever zone (the original accepted it west of UTC)."""
        zone = timezone(timedelta(hours=offset_hours))
        put(tmp_path, PEER, release(timestamp=(NOW - timedelta(hours=3)).astimezone(zone).isoformat()))
        assert reason(tmp_path) == "stale"

    def test_local_wall_clock_without_zone_is_refused(self, tmp_path: Path) -> None:
        """A timestamp without an offset cannot be placed in time, so it does not count."""
        put(tmp_path, PEER, release(timestamp=NOW.replace(tzinfo=None).isoformat()))
        assert reason(tmp_path) == "timestamp is not a timezone-aware time"


@pytest.mark.slow
def test_real_member_outputs_are_accepted(tmp_path: Path) -> None:
    """Releases written by the member code itself (three SyftBox members) pass validation."""
    from cpu_tracker_daemon.cli.main import main
    from tests.conftest import write_config

    sb = tmp_path / "SyftBox"
    for n, mechanism in enumerate(("laplace", "gaussian", "laplace")):
        email = f"member{n}@example.org"
        (tmp_path / email).mkdir()
        overrides = {"syftbox": {"dir": str(sb), "email": email}, "privacy": {"mechanism": mechanism}}
        config = write_config(tmp_path / email, overrides)
        assert main(["--config", str(config), "once"]) == 0
    now = datetime.now(UTC)
    accepted = [read_release(sb / "datasites", f"member{n}@example.org", now, MAX_AGE) for n in range(3)]
    assert [r.mechanism for r in accepted] == ["discrete_laplace", "discrete_gaussian", "discrete_laplace"]
    assert all(r.noise_stddev > 0 for r in accepted)


def test_schema_1_float_releases_from_older_members_still_count(tmp_path: Path) -> None:
    """A release written by an older member (schema 1, continuous Laplace or Gaussian) is read, its
    declared noise checked against what its epsilon implies."""
    old = release(schema_version=1)
    del old["cpu_units"]
    old["privacy"].update(mechanism="laplace", noise_stddev=282.842712474619)
    for key in ("grid", "sensitivity_units"):
        del old["privacy"][key]
    put(tmp_path, PEER, old)
    assert read_release(tmp_path, PEER, NOW, MAX_AGE).cpu == 41.5
    old["privacy"]["noise_stddev"] = 2828.42712474619
    put(tmp_path, PEER, old)
    assert reason(tmp_path) == "declared noise does not match its parameters"


class TestSettling:
    """A release that does not parse is worth another look only while it may be being written."""

    def test_one_just_written_may_still_be_written(self, tmp_path: Path) -> None:
        """A file cut short and written now raises StillWriting, with the usual reason."""
        put(tmp_path, PEER, None, raw=json.dumps(release()).encode()[:100])
        with pytest.raises(StillWriting, match=f"^{UNPARSEABLE}$"):
            read_release(tmp_path, PEER, NOW, MAX_AGE)

    def test_one_written_long_ago_is_settled(self, tmp_path: Path) -> None:
        """The same file last written a minute ago is skipped for good: NotAccepted, not
        StillWriting, with the same reason."""
        path = put(tmp_path, PEER, None, raw=b'{"cpu": NaN}')
        then = time.time() - 60
        os.utime(path, (then, then))
        with pytest.raises(NotAccepted) as info:
            read_release(tmp_path, PEER, NOW, MAX_AGE)
        assert not isinstance(info.value, StillWriting)
        assert str(info.value) == UNPARSEABLE

    def test_the_pass_pauses_only_for_files_just_written(self, tmp_path: Path) -> None:
        """An aggregation pass over a settled bad file skips it without its pause; one over a
        file just written pauses once and reads it again."""
        from cpu_tracker_daemon.config import load_config
        from cpu_tracker_daemon.network.aggregate import REREAD_PAUSE_SECONDS, Aggregator
        from tests.conftest import write_config

        sb = tmp_path / "SyftBox"
        path = put(sb / "datasites", PEER, None, raw=b'{"cpu": 4')
        aggregator = {"dir": str(sb), "email": "aggregator@example.org"}
        config = load_config(
            write_config(tmp_path, {"syftbox": aggregator, "aggregator": {"enabled": True}}, name="a.toml")
        )
        quiet = type("Quiet", (), {"__getattr__": lambda self, name: lambda *a, **k: None})()
        pauses: list[float] = []
        assert Aggregator(config, quiet, sleep=pauses.append).run_pass().skipped[UNPARSEABLE] == 1
        assert pauses == [REREAD_PAUSE_SECONDS]
        then = time.time() - 60
        os.utime(path, (then, then))
        assert Aggregator(config, quiet, sleep=pauses.append).run_pass().skipped[UNPARSEABLE] == 1
        assert pauses == [REREAD_PAUSE_SECONDS]


class TestHeldOpen:
    def test_a_pass_from_the_held_directory_follows_no_link(self, tmp_path: Path) -> None:
        """Read from the datasites directory held open, a release is read as before, and a peer
        folder or a release linked elsewhere is still refused as a symlink."""
        datasites = tmp_path / "datasites"
        real = put(datasites, PEER, release())
        outside = put(tmp_path / "outside", PEER, release())
        (datasites / "mallory@example.org").symlink_to(outside.parents[2], target_is_directory=True)
        linked = release_path(datasites, "bob@example.org")
        linked.parent.mkdir(parents=True)
        linked.symlink_to(real)
        with held_open(datasites) as directory:
            assert directory is not None
            assert read_release(datasites, PEER, NOW, MAX_AGE, directory).cpu == 41.5
            for peer in ("mallory@example.org", "bob@example.org"):
                with pytest.raises(NotAccepted, match=r"^symlink$"):
                    read_release(datasites, peer, NOW, MAX_AGE, directory)
            os.fstat(directory)  # still open after every refusal
        with held_open(tmp_path / "nowhere") as missing:
            assert missing is None
