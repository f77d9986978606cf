"""What the aggregator publishes for each secure round (``secure.json``), and how the aggregate,
the dashboard and the Prometheus export read it back without importing the protocol."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from cpu_tracker_daemon import __version__, permissions, storage
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.network.estimate import INFORMATIVE_FRACTION, TARGET_HALF_WIDTH
from cpu_tracker_daemon.privacy.accounting import SECURE_DISCRETE_LAPLACE
from cpu_tracker_daemon.privacy.discrete import laplace_scale
from cpu_tracker_daemon.privacy.mechanisms import Calibration
from cpu_tracker_daemon.secagg import noise

SCHEMA = "cpu-tracker/secure-aggregate"
SCHEMA_VERSION = 2
SECURE_NAME = "secure.json"
INVALID_SIGMAS = 8  # a sum this many noise deviations outside the values' range is not an estimate


def scale_of(calibration: Calibration) -> float:
    """The discrete Laplace scale of the whole sum, in grid units: sensitivity / epsilon."""
    return float(calibration.noise_param)


def secure_record(
    config: Config,
    calibration: Calibration,
    slot: datetime,
    round_id: str,
    result: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """What the aggregator publishes for one round: the noisy mean and the noise's exact
    interval, or why there is none."""
    sa = config.secure_aggregation
    present = int(result.get("members") or 0)
    roster = int(result.get("roster") or 0)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "round": round_id,
        "window": {
            "start": slot.isoformat(),
            "end": (slot + timedelta(seconds=config.sampling.window_seconds)).isoformat(),
        },
        "computed_at": now.isoformat(),
        "members": present,
        "roster": roster,
        "beta_dropped": sa.beta_dropped,
        "beta_colluding": sa.beta_colluding,
        "epsilon": calibration.epsilon,
        "local_epsilon": sa.local_epsilon,
        "mechanism": SECURE_DISCRETE_LAPLACE,
        "aborted": result.get("aborted"),
        "estimate": None,
        "generator": f"cpu-tracker {__version__}",
    }
    total = result.get("sum_units")
    if record["aborted"] is None and isinstance(total, int):
        local = float(laplace_scale(calibration.sensitivity_units, sa.local_epsilon))
        estimate = secure_estimate(calibration, int(result["calibrated"]), present, total, local)
        if estimate is None:
            record["aborted"] = (
                "the sum lies outside what the members' values allow: a member sent a bad value"
            )
        record["estimate"] = estimate
    return record


def secure_estimate(
    calibration: Calibration, calibrated: int, present: int, total: int, local_scale: float | None = None
) -> dict[str, Any] | None:
    """The mean of ``present`` members' values from their noisy sum ``total`` (grid units),
    with the 95% interval of the noise (the members' shares and, with ``local_scale``, each
    one's own noise); None when the sum is impossible."""
    scale = scale_of(calibration)
    q = math.exp(-1.0 / scale)
    r = present / calibrated
    variance = 2 * r * q / (1 - q) ** 2
    if local_scale is not None:
        ql = math.exp(-1.0 / local_scale)
        variance += present * 2 * ql / (1 - ql) ** 2
    sd_units = math.sqrt(variance)
    low_units, high_units = calibration.lower_units * present, calibration.upper_units * present
    if not low_units - INVALID_SIGMAS * sd_units <= total <= high_units + INVALID_SIGMAS * sd_units:
        return None
    half_units, exact = noise.interval(scale, calibrated, present, local_scale)
    per_point = present * 100  # grid units of the sum per percentage point of the mean
    mean, half = total / per_point, half_units / per_point
    lower, upper = calibration.lower, calibration.upper

    def clip(v: float) -> float:
        return min(max(v, lower), upper)

    shown = (clip(mean), clip(mean - half), clip(mean + half))
    return {
        "mean": mean,
        "standard_error": sd_units / per_point,
        "ci95": [mean - half, mean + half],
        "ci95_exact": exact,
        "members": present,
        "informative": half <= INFORMATIVE_FRACTION * (upper - lower),
        "reading": {
            "mean": shown[0],
            "ci95": [shown[1], shown[2]],
            "clipped": shown != (mean, mean - half, mean + half),
            "half_width": half,
            "target_half_width": TARGET_HALF_WIDTH,
            # the half width falls as 1 / N here, not 1 / sqrt(N) as with local noise
            "members_for_target": max(present, math.ceil(present * half / TARGET_HALF_WIDTH)),
        },
    }


def publish(config: Config, record: dict[str, Any]) -> None:
    directory = storage.network_dir(config)
    root = config.syftbox.dir
    assert root is not None
    storage.ensure_dir(directory, root)
    permissions.ensure(directory, permissions.public_folder(config.syftbox.email), root)
    storage.write_json(directory / SECURE_NAME, record, storage.PUBLIC_FILE_MODE, root)


def latest(config: Config, now: datetime, max_age: timedelta) -> dict[str, Any] | None:
    """The last round's record this aggregator published, if it is recent: for the aggregate,
    the dashboard and the Prometheus export."""
    doc = storage.read_json(storage.network_dir(config) / SECURE_NAME)
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != SCHEMA
        or not isinstance(doc.get("computed_at"), str)
    ):
        return None
    try:
        when = datetime.fromisoformat(doc["computed_at"])
    except ValueError:
        return None
    if when.tzinfo is None or now - when > max_age:
        return None
    return doc
