"""Prometheus node_exporter textfiles: the member's and the aggregator's published figures as
gauges, never a raw mean."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cpu_tracker_daemon import storage
from cpu_tracker_daemon.errors import OutputError

MEMBER_FILE = "cpu_tracker.prom"
NETWORK_FILE = "cpu_tracker_network.prom"

Sample = tuple[Mapping[str, str], float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def gauge(name: str, help_text: str, samples: Iterable[Sample]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        lines.append(
            f"{name}{{{label_text}}} {_sample_value(value)}"
            if label_text
            else f"{name} {_sample_value(value)}"
        )
    return "\n".join(lines) + "\n"


def member_text(
    cpu: float,
    noise_stddev: float,
    spent: Mapping[str, float],
    remaining: Mapping[str, float],
    released_at: float,
) -> str:
    return "".join(
        [
            gauge(
                "cpu_tracker_release_cpu_percent", "The last published (noisy) CPU busy mean.", [({}, cpu)]
            ),
            gauge(
                "cpu_tracker_release_noise_stddev_percent",
                "Standard deviation of the noise in the last release, percentage points.",
                [({}, noise_stddev)],
            ),
            gauge(
                "cpu_tracker_budget_epsilon_spent",
                "What the releases add up to under each cap.",
                [({"cap": cap}, value) for cap, value in spent.items()],
            ),
            gauge(
                "cpu_tracker_budget_epsilon_remaining",
                "Epsilon left under each cap.",
                [({"cap": cap}, value) for cap, value in remaining.items()],
            ),
            gauge(
                "cpu_tracker_last_release_timestamp_seconds",
                "Unix time of the last release.",
                [({}, released_at)],
            ),
        ]
    )


def network_text(
    estimate: Mapping[str, Any] | None,
    skipped: Mapping[str, int],
    computed_at: float,
    secure: Mapping[str, Any] | None = None,
) -> str:
    """The aggregate record's ``estimate`` (None: no peers) as Prometheus gauges, and its last
    ``secure`` round's (None: no recent round) beside them."""
    parts = [] if secure is None else [secure_text(secure)]
    peers = 0
    if estimate is not None:
        peers = estimate["peers"]
        low, high = estimate["ci95"]
        seen = estimate["reading"]
        parts += [
            gauge(
                "cpu_tracker_network_cpu_percent",
                "Estimated network mean CPU busy (unbiased: noise may take it outside 0-100).",
                [({}, estimate["mean"])],
            ),
            gauge(
                "cpu_tracker_network_cpu_ci95_percent",
                "95% interval of the network mean.",
                [({"bound": "low"}, low), ({"bound": "high"}, high)],
            ),
            gauge(
                "cpu_tracker_network_cpu_in_range_percent",
                "The network mean clipped to 0-100, as a dashboard shows it.",
                [({}, seen["mean"])],
            ),
            gauge(
                "cpu_tracker_network_estimate_informative",
                "1 if the 95% interval is within +-25 points, narrow enough to read; 0 if not.",
                [({}, 1.0 if estimate["informative"] else 0.0)],
            ),
        ]
    parts += [
        gauge("cpu_tracker_network_peers", "Peers whose release counted in the last pass.", [({}, peers)]),
        gauge(
            "cpu_tracker_network_peers_skipped",
            "Peer files skipped in the last pass, by reason.",
            [({"reason": reason}, count) for reason, count in sorted(skipped.items())],
        ),
        gauge(
            "cpu_tracker_network_last_pass_timestamp_seconds",
            "Unix time of the last aggregation pass.",
            [({}, computed_at)],
        ),
    ]
    return "".join(parts)


def secure_text(secure: Mapping[str, Any]) -> str:
    """One secure round's outcome as gauges: the mean and its 95% interval when it gave one."""
    est = secure.get("estimate")
    parts = [
        gauge(
            "cpu_tracker_network_secure_members",
            "Members whose masked value counted in the last secure round (0 if it aborted).",
            [({}, secure["members"] if est else 0)],
        ),
        gauge(
            "cpu_tracker_network_secure_round_aborted",
            "1 if the last secure round published no estimate, 0 if it did.",
            [({}, 0.0 if est else 1.0)],
        ),
    ]
    if est:
        low, high = est["ci95"]
        parts += [
            gauge(
                "cpu_tracker_network_secure_cpu_percent",
                "Network mean CPU busy from the last secure round (noise added once, to the sum).",
                [({}, est["mean"])],
            ),
            gauge(
                "cpu_tracker_network_secure_cpu_ci95_percent",
                "The 95% interval of the noise around the secure mean (exact, or a bound: see secure.json).",
                [({"bound": "low"}, low), ({"bound": "high"}, high)],
            ),
        ]
    return "".join(parts)


def write_textfile(directory: Path, name: str, text: str) -> Path:
    """Write ``text`` as ``directory/name`` atomically, readable by node_exporter (0644); raise
    OutputError (a file, a loop of symlinks or no rights where the directory should be, too)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(str(directory), exc.strerror or str(exc)) from None
    target = directory / name
    storage.atomic_write(target, text.encode(), storage.PUBLIC_FILE_MODE)
    return target
