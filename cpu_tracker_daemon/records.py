"""The JSON records the member writes: the public release, the contract with aggregators (bump
``SCHEMA_VERSION`` on any change an older reader would misread), and the private raw result.

Nothing public depends on the raw value except through the noise: its times are the planned
window's, never clock readings taken after a busy or an idle window."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.config import SamplingConfig
from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.privacy.mechanisms import Calibration, Noisy, Statistic
from cpu_tracker_daemon.sampling import Window

SCHEMA = "cpu-tracker/release"
PRIVATE_SCHEMA = "cpu-tracker/private-result"
SCHEMA_VERSION = 2  # 2: integer grid values (cpu_units), discrete mechanisms, planned times
PRIVATE_SCHEMA_VERSION = 1


def public_record(
    release_id: str,
    noisy: Noisy,
    start: datetime,
    end: datetime,
    sampling: SamplingConfig,
    calibration: Calibration,
) -> dict[str, Any]:
    """The published release: only the noisy value, how it was made, and the planned window."""
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "release_id": release_id,
        "cpu": noisy.cpu,
        "cpu_clamped": min(max(noisy.cpu, 0.0), 100.0),
        "timestamp": end.isoformat(),
        "window": {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "samples": sampling.samples,
            "interval_seconds": sampling.interval_seconds,
        },
        "privacy": calibration.as_record(),
        "generator": f"cpu-tracker {__version__}",
    }
    if noisy.units is not None:
        record["cpu_units"] = noisy.units
        clamped = discrete.clamp(noisy.units, 0, 100 * discrete.UNITS_PER_POINT)
        record["cpu_clamped"] = discrete.to_percent(clamped)
    return record


def private_record(release_id: str, raw: Statistic, window: Window, timestamp: str) -> dict[str, Any]:
    """The owner's own result, never published: the value before noise, and the window as it ran."""
    return {
        "schema": PRIVATE_SCHEMA,
        "schema_version": PRIVATE_SCHEMA_VERSION,
        "release_id": release_id,
        "cpu_raw_mean": raw.percent,
        "cpu_raw_units": raw.units,
        "timestamp": timestamp,
        "window": {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "samples": len(window.readings),
            "interval_seconds": window.interval_seconds,
        },
    }
