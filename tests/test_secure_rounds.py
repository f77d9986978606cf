"""Secure aggregation in the daemon: the shared grid, the configuration, the exact interval, and
whole rounds between real Trackers (real ledgers, real files, the real cryptography) and the
aggregator's round in one SyftBox tree, on the wall clock."""

from __future__ import annotations

import io
import json
import math
import random
import re
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon import logs, schedule
from cpu_tracker_daemon.config import ROUND_STEPS, Config, load_config
from cpu_tracker_daemon.errors import ConfigError
from cpu_tracker_daemon.privacy.mechanisms import calibrate
from cpu_tracker_daemon.secagg import noise, published, round_child, rounds, transport
from cpu_tracker_daemon.storage import layout_for, prepare
from cpu_tracker_daemon.tracker import CycleResult, Tracker
from tests.conftest import FakeCpu, write_config

AGGREGATOR = "agg@example.org"
HOUR = timedelta(hours=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class TestGrid:
    def test_windows_start_on_the_shared_grid(self) -> None:
        assert schedule.slot_at(None, HOUR, at("2026-12-01 10:20:00"), 5) == at("2026-12-01 11:00:00")
        # a slot that began less than ``late`` ago is still the one due; later, the next one
        assert schedule.slot_at(None, HOUR, at("2026-12-01 11:00:04"), 5) == at("2026-12-01 11:00:00")
        assert schedule.slot_at(None, HOUR, at("2026-12-01 11:00:06"), 5) == at("2026-12-01 12:00:00")

    def test_the_cooldown_still_holds_on_the_grid(self) -> None:
        """A last release at 10:20 (made before joining) allows 11:20 at the earliest: 12:00."""
        anchor = at("2026-12-01 10:20:00").timestamp()
        assert schedule.slot_at(anchor, HOUR, at("2026-12-01 11:00:00"), 5) == at("2026-12-01 12:00:00")
        anchor = at("2026-12-01 11:00:00").timestamp()
        assert schedule.slot_at(anchor, HOUR, at("2026-12-01 11:00:01"), 5) == at("2026-12-01 12:00:00")

    def test_every_machine_names_a_slot_the_same(self, tmp_path: Path) -> None:
        config = load_config(write_config(tmp_path, {"schedule": {"every_seconds": 3600}}))
        slot = at("2026-12-01 11:00:00")
        assert schedule.round_id(slot, HOUR) == str(int(slot.timestamp()) // 3600)
        assert schedule.round_start(slot, config) == slot + timedelta(seconds=0.1 + 1.0)
        # the aggregator's job, a few ms late at the round's start, finds the same slot
        late = schedule.round_start(slot, config) + timedelta(milliseconds=30)
        assert round_child.current_slot(config, late) == slot


class TestConfig:
    def test_each_missing_piece_is_named(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            {
                "secure_aggregation": {"enabled": True, "beta_dropped": 0.7, "step_seconds": 10},
                "privacy": {"mechanism": "gaussian"},
                "schedule": {"every_seconds": 30},
            },
        )
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        text = "\n".join(caught.value.problems)
        for needle in (
            "secure_aggregation.beta_dropped must be in [0, 0.5]",
            "needs [syftbox] dir and email",
            "needs secure_aggregation.aggregator",
            'needs privacy.mechanism = "laplace"',
            "leaves no room for a secure round",
        ):
            assert needle in text

    def test_a_complete_member_and_aggregator_load(self, tmp_path: Path) -> None:
        """With the calibration's defaults: a fifth dropped and a fifth colluding, counted apart,
        and at least 3 members (the local epsilon is this file's)."""
        member = member_overrides(tmp_path / "box", "m0@example.org")
        sa = load_config(write_config(tmp_path, member)).secure_aggregation
        assert sa.enabled
        assert (sa.beta_dropped, sa.beta_colluding, sa.min_members, sa.local_epsilon) == (0.2, 0.2, 3, 50.0)
        agg = aggregator_overrides(tmp_path / "box", ["m0@example.org"])
        assert load_config(write_config(tmp_path, agg, "a.toml")).secure_aggregation.runs_rounds

    def test_the_retired_beta_names_its_two_successors(self, tmp_path: Path) -> None:
        """``beta`` counted dropouts and colluders as one; a config that still sets it is refused
        with the two keys that replace it, not loaded with a silent default."""
        path = write_config(tmp_path, {"secure_aggregation": {"beta": 0.2}})
        with pytest.raises(ConfigError, match="replace it with beta_dropped and beta_colluding"):
            load_config(path)


class TestExactInterval:
    def test_one_calibrated_share_each_is_discrete_laplace_exactly(self) -> None:
        """With every calibrated member present the noise is discrete Laplace, whose tail is
        known in closed form: P(X > x) = q^(x+1) / (1 + q)."""
        for scale in (3.0, 250.0, 20_000.0):
            q = math.exp(-1 / scale)
            x = noise.half_width(scale, 8, 8)
            assert 2 * q ** (x + 1) / (1 + q) <= 0.05 < 2 * q**x / (1 + q)

    def test_the_interval_covers_95_percent_of_the_noise(self) -> None:
        """r = 5/4: 4,000 draws of NB(r, q) - NB(r, q); coverage within 4 binomial deviations."""
        rng = random.Random(11)
        scale, r = 40.0, 1.25
        q = math.exp(-1 / scale)
        x = noise.half_width(scale, 4, 5)
        draws = [noise.negative_binomial(r, q, rng) - noise.negative_binomial(r, q, rng) for _ in range(4000)]
        inside = sum(abs(d) <= x for d in draws) / len(draws)
        assert abs(inside - 0.95) < 4 * math.sqrt(0.95 * 0.05 / 4000)
        assert noise.half_width(scale, 4, 5) > noise.half_width(scale, 4, 4)  # more shares, more noise

    def test_an_impossible_sum_is_not_an_estimate(self, tmp_path: Path) -> None:
        config = load_config(write_config(tmp_path, {"privacy": {"epsilon": 100}}))
        calibration = calibrate(config.privacy, config.sampling.samples)
        assert published.secure_estimate(calibration, 3, 3, 3 * 10_000 + 10_000) is None
        est = published.secure_estimate(calibration, 3, 3, 3 * 9_990)
        assert est is not None
        assert est["mean"] == pytest.approx(99.9)
        assert est["reading"]["ci95"][1] == 100.0
        assert est["reading"]["clipped"]


# -- whole rounds --------------------------------------------------------------------------------

STEP = 0.6
EVERY = math.ceil(0.1 + ROUND_STEPS * STEP + 1)  # the window, a round's steps and a second: 10 s
FAST_ROUND: dict[str, dict[str, Any]] = {
    "sampling": {"samples": 2, "interval_seconds": 0.05},
    "schedule": {"every_seconds": EVERY},
    # a large epsilon: the noise of the sum is 0.05 points of the mean, so what remains is each
    # member's own noise at the largest local epsilon (1.6 points of the mean of three)
    "privacy": {"epsilon": 1000},
    "budget": {"lifetime_epsilon": 100_000, "window_epsilon": 100_000},
}
ROUND: dict[str, Any] = {"step_seconds": STEP, "local_epsilon": 50.0}


def member_overrides(box: Path, email: str) -> dict[str, dict[str, Any]]:
    return {
        **FAST_ROUND,
        "syftbox": {"dir": str(box), "email": email, "readers": [AGGREGATOR]},
        "secure_aggregation": {"enabled": True, "aggregator": AGGREGATOR, **ROUND},
    }


def aggregator_overrides(box: Path, members: list[str]) -> dict[str, dict[str, Any]]:
    return {
        **FAST_ROUND,
        "syftbox": {"dir": str(box), "email": AGGREGATOR},
        "secure_aggregation": {"members": members, **ROUND},
    }


def member_tracker(
    tmp_path: Path,
    box: Path,
    email: str,
    busy: float,
    log: io.StringIO | None = None,
    min_members: int | None = None,
) -> Tracker:
    home = tmp_path / email
    home.mkdir()
    overrides = {**member_overrides(box, email), "paths": {"data_dir": str(home / "data")}}
    if min_members is not None:
        overrides["secure_aggregation"] = {**overrides["secure_aggregation"], "min_members": min_members}
    config: Config = load_config(write_config(home, overrides))
    layout = layout_for(config)
    prepare(layout)
    logs.configure("json", "debug", stream=log or io.StringIO())
    return Tracker(config=config, layout=layout, cpu=FakeCpu(busy), log=logs.get_logger("test"))


def run_slot(
    tmp_path: Path, busy: dict[str, float], aggregator_runs: bool = True
) -> tuple[dict[str, CycleResult], dict[str, Any] | None, dict[str, Tracker]]:
    box = tmp_path / "box"
    trackers = {email: member_tracker(tmp_path, box, email, b) for email, b in busy.items()}
    agg_config = load_config(write_config(tmp_path, aggregator_overrides(box, sorted(busy)), "agg.toml"))
    every = timedelta(seconds=agg_config.schedule.every_seconds)
    slot = schedule.slot_at(None, every, datetime.now(UTC), late=STEP / 2)
    results: dict[str, CycleResult] = {}

    def member(email: str) -> None:
        results[email] = trackers[email].cycle(max_wait=every.total_seconds() + 1)

    threads = [threading.Thread(target=member, args=(email,)) for email in busy]
    for thread in threads:
        thread.start()
    record = None
    if aggregator_runs:
        wall = transport.RoundClock(now=time.time, poll=0.05)
        record = rounds.run_round(agg_config, slot, wall, lambda: datetime.now(UTC)).record
    for thread in threads:
        thread.join(timeout=60)
    return results, record, trackers


def ledger_rows(tracker: Tracker, query: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(tracker.layout.ledger)) as conn:
        return conn.execute(query).fetchall()


@pytest.mark.slow
class TestRoundsInTheDaemon:
    def test_members_spend_once_and_the_aggregator_publishes_the_exact_mean(self, tmp_path: Path) -> None:
        busy = {"m0@example.org": 0.25, "m1@example.org": 0.5, "m2@example.org": 0.875}
        results, record, trackers = run_slot(tmp_path, busy)
        assert {r.outcome for r in results.values()} == {"released"}, results
        assert {r.secure_round for r in results.values()} == {"revealed"}
        assert record is not None
        assert record["aborted"] is None
        assert record["members"] == 3
        raw = [round(b * 10_000) for b in busy.values()]  # each window's busy share, on the grid
        # (the members share one SyftBox folder here, so one private file: the last one written)
        assert (
            json.loads(next(iter(trackers.values())).layout.private_file.read_text())["cpu_raw_units"] in raw
        )
        est = record["estimate"]
        # within 8 noise deviations (each member's own noise, mostly): the masks cancelled
        assert est["standard_error"] < 2.0
        assert abs(est["mean"] - sum(raw) / 300) < 8 * est["standard_error"]
        assert est["ci95"][0] < est["mean"] < est["ci95"][1]
        assert est["ci95_exact"]
        for tracker in trackers.values():
            spends = ledger_rows(tracker, "SELECT mechanism, epsilon FROM spends")
            assert spends == [("secagg_discrete_laplace", 1000.0)]
            ((status, payload),) = ledger_rows(tracker, "SELECT status, payload FROM outcomes")
            assert status == "published"
            assert json.loads(payload)["mode"] == "secure_aggregation"
            assert not tracker.layout.public_file.exists()  # no local release for this window
        # the published file: everyone may read it, and the aggregate pass shows it
        secure = published.latest(load_config(tmp_path / "agg.toml"), datetime.now(UTC), timedelta(hours=1))
        assert secure == record

    def test_a_member_that_waits_for_its_slot_says_until_when(self, tmp_path: Path) -> None:
        """``once`` may wait up to two intervals for the slot; a wait longer than a daemon's
        cycle would make is logged first, with the slot's time, so a person knows it is not hung."""
        while not 0.5 < time.time() % EVERY < 1.0:  # just past a slot and its half step's lateness
            time.sleep(0.05)
        log = io.StringIO()
        tracker = member_tracker(tmp_path, tmp_path / "box", "m0@example.org", 0.5, log)
        started = datetime.now(UTC)
        result = tracker.cycle(max_wait=schedule.once_wait(tracker.config))
        assert result.outcome == "round_ended"  # no aggregator here
        events = [json.loads(line) for line in log.getvalue().splitlines()]
        (waiting,) = [e for e in events if e["event"] == "cycle.waiting"]
        until = datetime.fromisoformat(waiting["until"])
        assert until.timestamp() % EVERY == 0
        assert EVERY - 2 < (until - started).total_seconds() < EVERY
        assert re.match(
            rf"waiting for the network's slot; sampling starts in ({EVERY - 2}|{EVERY - 1}|{EVERY}) s \(at ",
            waiting["summary"],
        )

    def test_no_aggregator_means_nothing_spent_and_the_next_slot(self, tmp_path: Path) -> None:
        results, _, trackers = run_slot(tmp_path, {"m0@example.org": 0.5}, aggregator_runs=False)
        result = results["m0@example.org"]
        assert result.outcome == "round_ended"
        assert "no roster" in str(result.error)
        tracker = trackers["m0@example.org"]
        assert ledger_rows(tracker, "SELECT COUNT(*) FROM spends") == [(0,)]
        assert result.next_due_at is not None
        assert result.next_due_at > datetime.now(UTC)
        assert result.next_due_at.timestamp() % EVERY == 0  # the next slot on the grid, not at once

    def test_a_roster_calibrated_for_less_noise_is_refused(self, tmp_path: Path) -> None:
        """The aggregator announces beta_dropped 0 while the member asks for 0.2: it would add less.
        (The member accepts a roster of one here, so that the calibration is what it refuses.)"""
        box = tmp_path / "box"
        tracker = member_tracker(tmp_path, box, "m0@example.org", 0.5, min_members=1)
        agg = write_config(tmp_path, aggregator_overrides(box, ["m0@example.org"]), "agg.toml")
        text = agg.read_text().replace("[secure_aggregation]", "[secure_aggregation]\nbeta_dropped = 0.0")
        agg.write_text(text)
        agg_config = load_config(agg)
        every = timedelta(seconds=EVERY)
        slot = schedule.slot_at(None, every, datetime.now(UTC), late=STEP / 2)
        out: dict[str, CycleResult] = {}
        thread = threading.Thread(target=lambda: out.update(r=tracker.cycle(max_wait=EVERY + 1)))
        thread.start()
        rounds.run_round(
            agg_config, slot, transport.RoundClock(now=time.time, poll=0.05), lambda: datetime.now(UTC)
        )
        thread.join(timeout=60)
        assert out["r"].outcome == "round_ended"
        assert "less noise" in str(out["r"].error)
        assert ledger_rows(tracker, "SELECT COUNT(*) FROM spends") == [(0,)]


@pytest.mark.slow
def test_member_daemons_and_the_aggregator_daemon_run_rounds(tmp_path: Path) -> None:
    """Three ``cpu-tracker run`` members on real psutil and an aggregator daemon that runs the
    rounds and its aggregation pass: the aggregate, the dashboard and the Prometheus textfile
    show the secure estimate, and each member's ledger holds exactly its secure spends."""
    import signal
    import subprocess

    from tests.conftest import start_cli

    box = tmp_path / "box"
    members = [f"m{i}@example.org" for i in range(3)]
    procs: list[subprocess.Popen[str]] = []
    homes = []
    try:
        for email in members:
            home = tmp_path / email
            home.mkdir()
            homes.append(home)
            overrides = {**member_overrides(box, email), "paths": {"data_dir": str(home / "data")}}
            procs.append(
                start_cli("--config", str(write_config(home, overrides)), "run", "--log-format", "json")
            )
        agg = aggregator_overrides(box, members) | {
            "paths": {"data_dir": str(tmp_path / "agg")},
            "aggregator": {"enabled": True, "every_seconds": 3600},
            "prometheus": {"textfile_dir": str(tmp_path / "prom")},
        }
        procs.append(
            start_cli("--config", str(write_config(tmp_path, agg, "agg.toml")), "run", "--log-format", "json")
        )
        aggregate = box / "datasites" / AGGREGATOR / "public" / "cpu_tracker" / "aggregate.json"
        textfile = tmp_path / "prom" / "cpu_tracker_network.prom"
        deadline = time.monotonic() + 60
        record: dict[str, Any] = {}
        # The pass writes aggregate.json, the dashboard, then the textfile: wait for the last of
        # them to show the round (reading aggregate.json alone raced the textfile's write).
        while time.monotonic() < deadline:
            if textfile.exists() and "cpu_tracker_network_secure_members 3" in textfile.read_text():
                record = json.loads(aggregate.read_text() or "{}")
                break
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.stderr]
            time.sleep(0.2)
        secure = record.get("secure") or {}
        assert secure.get("members") == 3, record
        assert secure["aborted"] is None
        assert 0 <= secure["estimate"]["reading"]["mean"] <= 100
        page = (aggregate.parent / "index.html").read_text()
        assert "from the last secure aggregation round" in page  # the page leads with it
        assert 'id="mean"' in page
        assert "exact 95% interval" in page
        prom = textfile.read_text()
        assert "cpu_tracker_network_secure_members 3" in prom
        assert "cpu_tracker_network_secure_round_aborted 0" in prom
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=30)  # waits, and closes its pipes
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    for home in homes:
        with closing(sqlite3.connect(home / "data" / "ledger.sqlite3")) as conn:
            mechanisms = {m for (m,) in conn.execute("SELECT mechanism FROM spends")}
        assert mechanisms == {"secagg_discrete_laplace"}


def test_old_rounds_are_pruned_but_never_through_a_link(tmp_path: Path) -> None:
    """A member keeps its last 24 round folders; a symlink planted at its secagg folder (or
    above it) points elsewhere, and nothing there is removed."""
    tree = transport.Tree(tmp_path / "box")
    base = tree.base("m@example.org")
    for n in (100, 120, 130):
        (base / str(n)).mkdir(parents=True)
    rounds.prune(tree, "m@example.org", "150")
    assert sorted(p.name for p in base.iterdir()) == ["130"]
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "1").mkdir(parents=True)
    other = transport.Tree(tmp_path / "box2")
    link = other.base("m@example.org")
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    rounds.prune(other, "m@example.org", "150")
    assert (elsewhere / "1").is_dir()
