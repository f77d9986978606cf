"""Reading peers' releases for the aggregator: every file is hostile until proven otherwise.

A release counts only if it is reached through no symlink, capped in size, and strict JSON of the
member schema with sane, fresh values; anything else raises :class:`NotAccepted` with a short,
stable reason, and bad input never raises anything else."""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cpu_tracker_daemon.layout import release_parts
from cpu_tracker_daemon.privacy import accounting, discrete
from cpu_tracker_daemon.privacy.mechanisms import MECHANISM_NAMES, UNITS, PrivacyConfig, calibrate
from cpu_tracker_daemon.records import SCHEMA, SCHEMA_VERSION
from cpu_tracker_daemon.untrusted import NotAccepted, finite_number

MAX_BYTES = 64 * 1024
CLOCK_SKEW = timedelta(minutes=5)
# How far beyond [lower, upper] a noisy value may lie, in declared standard deviations. Laplace
# noise passes 30 sigma with probability below 1e-18; a larger value is a poisoning attempt.
MAX_SIGMAS = 30.0
_PEER = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$")


# What each schema version may declare. Version 1 releases came from the continuous mechanisms.
_MECHANISMS = {1: (accounting.LAPLACE, accounting.GAUSSIAN), SCHEMA_VERSION: tuple(MECHANISM_NAMES.values())}
_CONFIG_NAME = {recorded: name for name, recorded in MECHANISM_NAMES.items()}
_STDDEV_TOLERANCE = 1e-6  # relative: a declared noise this far from what its parameters imply is refused


UNPARSEABLE = "not UTF-8 JSON"  # also what a file still being written in place reads as
# A file that does not parse and was written less than this long ago may still be being written
# in place; one written before has been whole for longer than any write of 64 KiB takes.
SETTLING_SECONDS = 2.0
_WALK = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class StillWriting(NotAccepted):
    """A release that does not parse (:data:`UNPARSEABLE`) and was written moments ago: its
    writer may not be done, so it is worth one more look before it is skipped."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT = json.JSONDecoder(parse_constant=_no_constant)  # storage.strict_json's, built once


@dataclass(frozen=True)
class PeerRelease:
    peer: str
    release_id: str
    cpu: float
    noise_stddev: float
    mechanism: str
    unit: str
    epsilon: float
    delta: float
    timestamp: datetime


def release_path(datasites: Path, peer: str) -> Path:
    return datasites.joinpath(*release_parts(peer))


def peer_names(datasites: Path) -> Iterator[str]:
    """The folders (and links, which are refused per peer) of the datasites directory, in the
    directory's order, one at a time: a pass holds no list of 100,000 names.

    Files there (SyftBox's own ``_.syftignore``, say) are the tree's, not peers.
    """
    try:
        entries = os.scandir(datasites)
    except (FileNotFoundError, NotADirectoryError):
        return
    with entries:
        for entry in entries:
            if entry.is_symlink() or entry.is_dir(follow_symlinks=False):
                yield entry.name


@contextmanager
def held_open(datasites: Path) -> Iterator[int | None]:
    """The datasites directory's descriptor for one pass (None when it cannot be opened): each
    release read with it is reached from it, one open fewer a peer."""
    try:
        fd = os.open(datasites, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def read_release(
    datasites: Path, peer: str, now: datetime, max_age: timedelta, directory: int | None = None
) -> PeerRelease:
    """One peer's release, validated; raise :class:`NotAccepted` naming why it does not count.
    ``directory`` is ``datasites`` held open (:func:`held_open`), when it is."""
    if not _PEER.match(peer) or ".." in peer:
        raise NotAccepted("bad peer name")
    data, written = _read_capped(datasites, release_parts(peer), directory)
    try:
        doc = _STRICT.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        settled = written < time.time() - SETTLING_SECONDS
        raise (NotAccepted if settled else StillWriting)(UNPARSEABLE) from None
    return _validate(doc, peer, now, max_age)


def _read_capped(
    datasites: Path, parts: tuple[str, ...], directory: int | None = None
) -> tuple[bytes, float]:
    """Walk down from ``datasites`` one component at a time without following any symlink; the
    file's first ``MAX_BYTES`` and when it was last written.

    Each step opens the next name relative to the directory opened before it, with
    ``O_NOFOLLOW``: a symlinked peer folder or file is refused wherever it points, and nothing
    can swap a component for a link between the check and the read. The file is opened as
    ``storage.read_untrusted`` opens one: never a FIFO, never more than the cap.
    """
    fd = directory
    if fd is None:
        try:
            fd = os.open(datasites, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise NotAccepted("no release") from None
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, _WALK, dir_fd=fd)
            except FileNotFoundError:
                raise NotAccepted("no release") from None
            except OSError:
                raise NotAccepted(_why_not(fd, part)) from None
            if fd != directory:
                os.close(fd)
            fd = child
        return _read_file(fd, parts[-1])
    finally:
        if fd != directory:
            os.close(fd)


def _read_file(directory: int, name: str) -> tuple[bytes, float]:
    try:
        fd = os.open(name, _FILE, dir_fd=directory)
    except FileNotFoundError:
        raise NotAccepted("no release") from None
    except OSError as exc:
        raise NotAccepted("symlink" if exc.errno == errno.ELOOP else "unreadable") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotAccepted("not a regular file")
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise NotAccepted("too large")
    return data, info.st_mtime


def _why_not(directory_fd: int, name: str) -> str:
    try:
        mode = os.lstat(name, dir_fd=directory_fd).st_mode
    except OSError:
        return "unreadable"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "unreadable" if stat.S_ISDIR(mode) else "not a regular file"


def _validate(doc: Any, peer: str, now: datetime, max_age: timedelta) -> PeerRelease:
    if not isinstance(doc, dict):
        raise NotAccepted("not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise NotAccepted("not a cpu-tracker release")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in _MECHANISMS:
        raise NotAccepted("unsupported schema version")
    release_id = doc.get("release_id")
    if not (isinstance(release_id, str) and 0 < len(release_id) <= 64 and release_id.isalnum()):
        raise NotAccepted("bad release_id")
    privacy = doc.get("privacy")
    if not isinstance(privacy, dict):
        raise NotAccepted("privacy block missing")
    mechanism, unit = privacy.get("mechanism"), privacy.get("unit")
    if mechanism not in _MECHANISMS[version]:
        raise NotAccepted("unknown mechanism")
    if unit not in UNITS:
        raise NotAccepted("unknown privacy unit")
    if privacy.get("unbiased") is False:
        raise NotAccepted("biased mechanism")
    epsilon = finite_number(privacy.get("epsilon"), "bad epsilon")
    delta = finite_number(privacy.get("delta"), "bad delta")
    stddev = finite_number(privacy.get("noise_stddev"), "bad noise_stddev")
    lower = finite_number(privacy.get("lower"), "bad bounds")
    upper = finite_number(privacy.get("upper"), "bad bounds")
    if not epsilon > 0:
        raise NotAccepted("bad epsilon")
    if not 0 <= delta < 1:
        raise NotAccepted("bad delta")
    if not stddev > 0:
        raise NotAccepted("bad noise_stddev")
    if not 0 <= lower < upper <= 100:
        raise NotAccepted("bad bounds")
    if not math.isclose(
        stddev, _implied_stddev(privacy, doc.get("window"), version), rel_tol=_STDDEV_TOLERANCE
    ):
        raise NotAccepted("declared noise does not match its parameters")
    cpu = finite_number(doc.get("cpu"), "cpu is not a finite number")
    if not lower - MAX_SIGMAS * stddev <= cpu <= upper + MAX_SIGMAS * stddev:
        raise NotAccepted("cpu implausibly far out of range")
    if version >= 2 and mechanism != accounting.SNAPPING:
        _check_grid(doc.get("cpu_units"), cpu)
    when = _fresh_timestamp(doc.get("timestamp"), now, max_age)
    return PeerRelease(peer, release_id, cpu, stddev, mechanism, unit, epsilon, delta, when)


def _fresh_timestamp(stamp: Any, now: datetime, max_age: timedelta) -> datetime:
    """The release's (planned) time: timezone-aware, not in the future, not older than max_age."""
    try:
        when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or when.utcoffset() is None:
        raise NotAccepted("timestamp is not a timezone-aware time")
    if when > now + CLOCK_SKEW:
        raise NotAccepted("timestamp in the future")
    if when < now - max_age:
        raise NotAccepted("stale")
    return when


def _check_grid(units: Any, cpu: float) -> None:
    """A grid mechanism's value is its integer ``cpu_units`` over 100, and nothing else."""
    if isinstance(units, bool) or not isinstance(units, int) or discrete.to_percent(units) != cpu:
        raise NotAccepted("cpu is not on the grid")


def _implied_stddev(privacy: dict[str, Any], window: Any, version: int) -> float:
    """The noise standard deviation that the release's declared parameters imply.

    A peer cannot claim more noise than it added (which would let it place a value far out and
    still pass the range check) or less (which would buy it weight): the declaration is
    recomputed from mechanism, epsilon, delta, unit, bounds and samples. Only called once those
    fields passed their own checks. Peers mostly declare the same parameters, so each set is
    computed once (:func:`_stddev_of`).
    """
    samples = window.get("samples") if isinstance(window, dict) else None
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 100_000:
        raise NotAccepted("bad window")
    return _stddev_of(
        version,
        privacy["mechanism"],
        privacy["unit"],
        float(privacy["epsilon"]),
        float(privacy["delta"]),
        float(privacy["lower"]),
        float(privacy["upper"]),
        samples,
    )


@functools.lru_cache(maxsize=256)
def _stddev_of(
    version: int,
    mechanism: str,
    unit: str,
    epsilon: float,
    delta: float,
    lower: float,
    upper: float,
    samples: int,
) -> float:
    if not 1e-6 <= epsilon <= 1000:
        raise NotAccepted("bad epsilon")
    if version == 1:  # the continuous mechanisms of schema 1
        width = upper - lower
        sensitivity = width if unit == "window" else width / samples
        if mechanism == accounting.GAUSSIAN:
            if not (epsilon <= 1000 and 0 < delta < 1):
                raise NotAccepted("bad delta")
            return sensitivity / accounting.gaussian_mu(epsilon, delta)
        return sensitivity / epsilon * math.sqrt(2.0)
    if not (discrete.on_grid(lower) and discrete.on_grid(upper)):
        raise NotAccepted("bad bounds")
    if mechanism == accounting.DISCRETE_GAUSSIAN and not (epsilon <= 1000 and 0 < delta < 1):
        raise NotAccepted("bad delta")
    config = PrivacyConfig(
        unit=unit,
        mechanism=_CONFIG_NAME[mechanism],
        epsilon=epsilon,
        delta=delta or 1e-6,
        lower=lower,
        upper=upper,
    )
    return calibrate(config, samples).noise_stddev
