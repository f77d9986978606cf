"""One aggregation pass: read every peer's release, estimate the network mean, publish it in the
aggregator's public folder. Nothing published names a peer unless ``[aggregator] publish_peers``
is set."""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cpu_tracker_daemon import __version__, permissions, storage
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.layout import datasites_dir, engine, is_datasite_name
from cpu_tracker_daemon.network import dashboard, metrics
from cpu_tracker_daemon.network.estimate import TARGET_HALF_WIDTH, Estimate, estimate, reading
from cpu_tracker_daemon.network.peers import PeerRelease, StillWriting, held_open, peer_names, read_release
from cpu_tracker_daemon.schedule import Clock, utc_now
from cpu_tracker_daemon.secagg import published
from cpu_tracker_daemon.untrusted import NotAccepted

SCHEMA = "cpu-tracker/aggregate"
HISTORY_SCHEMA = "cpu-tracker/aggregate-history"
SCHEMA_VERSION = 1
AGGREGATE_NAME = "aggregate.json"
HISTORY_NAME = "history.json"
DASHBOARD_NAME = "index.html"

REREAD_PAUSE_SECONDS = 0.5  # once per pass, when some release did not parse and was just written
output_dir = storage.network_dir


@dataclass
class PassResult:
    record: dict[str, Any]
    estimate: Estimate | None
    skipped: Counter[str]
    duration_seconds: float

    def log_fields(self) -> dict[str, Any]:
        est = self.estimate
        return {
            "peers": est.peers if est else 0,
            "mean": round(est.mean, 3) if est else None,
            "ci95": [round(est.ci_low, 3), round(est.ci_high, 3)] if est else None,
            "skipped": dict(self.skipped),
            "duration_seconds": round(self.duration_seconds, 3),
        }


@dataclass
class Accepted:
    """What the estimate needs of the accepted releases, and no more: their values and noise as
    packed doubles (16 bytes a peer), the oldest and newest time, and the peers themselves only
    when they are published."""

    values: array[float] = field(default_factory=lambda: array("d"))
    stddevs: array[float] = field(default_factory=lambda: array("d"))
    oldest: datetime | None = None
    newest: datetime | None = None
    peers: list[PeerRelease] | None = None

    def add(self, release: PeerRelease) -> None:
        self.values.append(release.cpu)
        self.stddevs.append(release.noise_stddev)
        when = release.timestamp
        self.oldest = when if self.oldest is None or when < self.oldest else self.oldest
        self.newest = when if self.newest is None or when > self.newest else self.newest
        if self.peers is not None:
            self.peers.append(release)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Aggregator:
    """Runs passes; remembers which (peer, reason) it has logged so each is logged once."""

    config: Config
    log: Any
    clock: Clock = utc_now
    sleep: Callable[[float], None] = time.sleep
    _logged: set[tuple[str, str]] = field(default_factory=set)

    def _read(
        self,
        datasites: Path,
        peer: str,
        now: datetime,
        max_age: timedelta,
        accepted: Accepted,
        skipped: Counter[str],
        unsettled: list[str] | None,
        directory: int | None = None,
    ) -> None:
        """Read one peer into ``accepted`` or ``skipped``; one that does not parse goes to
        ``unsettled`` instead, when given, to be read again."""
        try:
            accepted.add(read_release(datasites, peer, now, max_age, directory))
        except NotAccepted as why:
            reason = str(why)
            if isinstance(why, StillWriting) and unsettled is not None:
                unsettled.append(peer)
                return
            skipped[reason] += 1
            if reason != "no release" and (peer, reason) not in self._logged:
                self._logged.add((peer, reason))
                self.log.warning("peer.skipped", peer=peer, reason=reason)

    def run_pass(self) -> PassResult:
        started = time.monotonic()
        now = self.clock()
        agg = self.config.aggregator
        sb = self.config.syftbox
        assert sb.dir is not None
        datasites, shape = datasites_dir(sb.dir), engine(sb.dir)
        max_age = timedelta(seconds=agg.max_age_seconds)
        accepted = Accepted(peers=[] if agg.publish_peers else None)
        skipped: Counter[str] = Counter()
        unsettled: list[str] = []
        with held_open(datasites) as directory:
            for peer in peer_names(datasites):
                if is_datasite_name(peer, shape):  # not syft's own folders beside the datasites
                    self._read(datasites, peer, now, max_age, accepted, skipped, unsettled, directory)
        if unsettled:  # the 0.4 client writes received files in place: give them one more look
            self.sleep(REREAD_PAUSE_SECONDS)
            for peer in unsettled:
                self._read(datasites, peer, now, max_age, accepted, skipped, None)
        est = estimate(accepted.values, accepted.stddevs, agg.max_weight_ratio) if accepted else None
        record = self._record(now, est, accepted, skipped)
        self._publish(record, now)
        return PassResult(record, est, skipped, time.monotonic() - started)

    def _record(
        self, now: datetime, est: Estimate | None, accepted: Accepted, skipped: Counter[str]
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "computed_at": now.isoformat(),
            "estimate": None,
            "skipped": dict(sorted(skipped.items())),
            "max_age_seconds": self.config.aggregator.max_age_seconds,
            "generator": f"cpu-tracker {__version__}",
        }
        # The last secure round's outcome, when this aggregator runs them: beside the local-DP one.
        if self.config.secure_aggregation.runs_rounds:
            record["secure"] = published.latest(
                self.config, now, timedelta(seconds=self.config.aggregator.max_age_seconds)
            )
        if est is not None and accepted.oldest is not None and accepted.newest is not None:
            record["estimate"] = estimate_record(est, accepted.oldest, accepted.newest)
        if accepted.peers is not None:
            record["peers"] = [
                {
                    "peer": r.peer,
                    "cpu": r.cpu,
                    "noise_stddev": r.noise_stddev,
                    "timestamp": r.timestamp.isoformat(),
                }
                for r in accepted.peers
            ]
        return record

    def _publish(self, record: dict[str, Any], now: datetime) -> None:
        directory = output_dir(self.config)
        root = self.config.syftbox.dir
        assert root is not None
        storage.ensure_dir(directory, root)  # from the SyftBox folder, following no symlink
        # Its own permission files: public/'s, which the client writes, may not exist yet.
        permissions.ensure(directory, permissions.public_folder(self.config.syftbox.email), root)
        history = self._history(directory)
        est = record["estimate"]
        if est is not None:
            history.append(
                {
                    "computed_at": record["computed_at"],
                    "kind": dashboard.LOCAL,
                    "mean": est["mean"],
                    "ci95_low": est["ci95"][0],
                    "ci95_high": est["ci95"][1],
                    "peers": est["peers"],
                }
            )
        secure = _secure_entry(record.get("secure"))
        if secure is not None and not any(
            dashboard.kind_of(e) == dashboard.SECURE and e.get("round") == secure["round"] for e in history
        ):  # a round is one point, however many passes see it
            history.append(secure)
        history = history[-self.config.aggregator.history_length :]
        storage.write_json(directory / AGGREGATE_NAME, record, storage.PUBLIC_FILE_MODE, root)
        storage.write_json(
            directory / HISTORY_NAME,
            {"schema": HISTORY_SCHEMA, "schema_version": SCHEMA_VERSION, "entries": history},
            storage.PUBLIC_FILE_MODE,
            root,
        )
        page = dashboard.render(record, history)
        storage.atomic_write(directory / DASHBOARD_NAME, page.encode(), storage.PUBLIC_FILE_MODE, root)
        textfile_dir = self.config.prometheus.textfile_dir
        if textfile_dir is not None:
            metrics.write_textfile(
                textfile_dir,
                metrics.NETWORK_FILE,
                metrics.network_text(est, record["skipped"], now.timestamp(), record.get("secure")),
            )

    def _history(self, directory: Path) -> list[dict[str, Any]]:
        """The previous entries; a damaged history file is set aside (never silently lost)."""
        path = directory / HISTORY_NAME
        if not path.exists():
            return []
        doc = storage.read_json(path)
        entries = doc.get("entries") if doc and doc.get("schema") == HISTORY_SCHEMA else None
        if not isinstance(entries, list) or not all(_entry_ok(e) for e in entries):
            aside = path.with_name(f"{HISTORY_NAME}.damaged-{int(time.time())}")
            path.replace(aside)
            self.log.warning("history.set_aside", path=str(aside), detail="unreadable history; starting anew")
            return []
        return entries


def _secure_entry(secure: dict[str, Any] | None) -> dict[str, Any] | None:
    """A secure round's estimate as a history entry, dated as the dashboard says it: at the
    start of the window it is of."""
    est = secure.get("estimate") if secure else None
    if secure is None or not est:
        return None
    return {
        "computed_at": (secure.get("window") or {}).get("start") or secure["computed_at"],
        "kind": dashboard.SECURE,
        "round": str(secure.get("round")),
        "mean": est["mean"],
        "ci95_low": est["ci95"][0],
        "ci95_high": est["ci95"][1],
        "peers": est["members"],
    }


def summary_lines(record: dict[str, Any], where: Path) -> list[str]:
    """``cpu-tracker aggregate`` for a person: first the estimate the dashboard leads with (the
    secure round's, when it gave one), then the other, then what was skipped and written."""
    lead = dashboard.lead_kind(record)
    est, secure = record.get("estimate"), record.get("secure")
    own = None
    if est is not None:
        value, detail = dashboard.headline(est)
        own = f"{value} ({detail}) from {dashboard.plural(est['peers'], 'peer')}"
    lines = []
    if lead == dashboard.SECURE:
        value, detail = dashboard.secure_lines(secure or {})
        lines.append(
            f"network CPU: {value} ({detail}), secure round of {dashboard.secure_when(secure or {})}"
        )
        lines.append(f"members' own releases: {own or 'none valid'}")
    else:
        lines.append(f"network CPU: {own}" if own else "network CPU: no estimate; no valid peer releases")
        if secure is not None:
            lines.append(f"secure aggregation: {dashboard.secure_lines(secure)[1]}")
    lines.append(f"skipped: {dashboard.skipped_words(record.get('skipped') or {}) or 'none'}; wrote {where}")
    return lines


def estimate_record(est: Estimate, oldest: datetime, newest: datetime) -> dict[str, Any]:
    """The estimate as the aggregate publishes it: unbiased, and as a person may read it."""
    seen = reading(est)
    return {
        "mean": est.mean,
        "standard_error": est.standard_error,
        "ci95": [est.ci_low, est.ci_high],
        "peers": est.peers,
        "between_peer_sd": est.between_peer_sd,
        "max_weight_share": est.max_weight_share,
        "max_influence": est.max_influence,
        "clipped": est.clipped,
        "informative": seen.informative,
        "reading": {
            "mean": seen.mean,
            "ci95": [seen.ci_low, seen.ci_high],
            "clipped": seen.clipped,
            "half_width": seen.half_width,
            "target_half_width": TARGET_HALF_WIDTH,
            "members_for_target": seen.members_for_target,
        },
        "oldest_release": oldest.astimezone(UTC).isoformat(),
        "newest_release": newest.astimezone(UTC).isoformat(),
    }


def _entry_ok(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("computed_at"), str):
        return False
    try:
        when = datetime.fromisoformat(entry["computed_at"])
    except ValueError:
        return False
    numbers = [entry.get(k) for k in ("mean", "ci95_low", "ci95_high")]
    return when.tzinfo is not None and all(
        isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) for n in numbers
    )
