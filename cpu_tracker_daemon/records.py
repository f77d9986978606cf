"""The JSON records the member writes: the public release and the private raw result.

The public record is the contract with aggregators; bump ``SCHEMA_VERSION`` on any change that
an older reader would misread.
"""

from __future__ import annotations

from typing import Any

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.config import PrivacyConfig
from cpu_tracker_daemon.privacy import Calibration
from cpu_tracker_daemon.sampling import Window

SCHEMA = "cpu-tracker/release"
PRIVATE_SCHEMA = "cpu-tracker/private-result"
SCHEMA_VERSION = 1


def _window(window: Window) -> dict[str, Any]:
    return {
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "samples": len(window.readings),
        "interval_seconds": window.interval_seconds,
    }


def public_record(
    release_id: str,
    noisy: float,
    window: Window,
    calibration: Calibration,
    privacy: PrivacyConfig,
    timestamp: str,
) -> dict[str, Any]:
    """The published release: only the noisy value and how it was made."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "release_id": release_id,
        "cpu": noisy,
        "cpu_clamped": min(max(noisy, 0.0), 100.0),
        "timestamp": timestamp,
        "window": _window(window),
        "privacy": calibration.as_record(),
        "generator": f"cpu-tracker {__version__}",
    }


def private_record(release_id: str, raw_mean: float, window: Window, timestamp: str) -> dict[str, Any]:
    """The owner's own result, never published: the value before noise (see ``clamped_statistic``)."""
    return {
        "schema": PRIVATE_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "release_id": release_id,
        "cpu_raw_mean": raw_mean,
        "timestamp": timestamp,
        "window": _window(window),
    }
