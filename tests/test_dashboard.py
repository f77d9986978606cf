"""The dashboard in a real headless Chromium: the estimate a person can use first (the secure
round's when there is one, with its time), the chart with its band, a footer that says how the
figures were made, and a page that reads at a phone's width."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon.cli.main import main
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.network import dashboard
from cpu_tracker_daemon.network.aggregate import DASHBOARD_NAME, Aggregator, output_dir
from tests import browser
from tests.conftest import write_config

needs_chromium = pytest.mark.skipif(browser.chromium() is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html after six hourly passes over three real members' releases."""
    root = tmp_path_factory.mktemp("dash")
    sb = root / "SyftBox"
    for n in range(3):
        home = root / f"m{n}"
        home.mkdir()
        member = write_config(home, {"syftbox": {"dir": str(sb), "email": f"m{n}@example.org"}})
        assert main(["--config", str(member), "once"]) == 0
    config = load_config(
        write_config(
            root,
            {
                "syftbox": {"dir": str(sb), "email": "agg@example.org"},
                "aggregator": {"max_age_seconds": 86_400},
            },
            name="agg.toml",
        )
    )
    start = datetime.now(UTC)
    for hour in range(6):
        Aggregator(config, _Quiet(), clock=lambda h=hour: start + timedelta(minutes=10 * h)).run_pass()
    return output_dir(config) / DASHBOARD_NAME


class _Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


def test_page_is_self_contained(page: Path) -> None:
    """No external resource: no http(s) URL is loaded, so it works offline and from a synced folder."""
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?https?:""", text)
    assert "<script src" not in text
    assert f'content="{dashboard.REFRESH_SECONDS}"' in text


@pytest.mark.slow
@needs_chromium
def test_chromium_renders_the_value_and_the_chart(page: Path, tmp_path: Path) -> None:
    """Chromium shows the latest mean and interval, the peer count, and a chart of six points with a band."""
    dom = browser.dump_dom(page)
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', dom, re.S).group(1)
    )  # type: ignore[union-attr]
    assert data["latest"]["estimate"]["informative"] is False  # three members at the defaults' noise
    assert re.search(r'id="mean">([^<]*)<', dom).group(1) == "Too uncertain to read"  # type: ignore[union-attr]
    assert "3 members, each with a noisy release of its own" in dom
    band = re.search(r'<polygon id="band" points="([^"]+)"', dom).group(1).split()  # type: ignore[union-attr]
    assert len(band) == 2 * 6  # each pass's interval, its top and its bottom
    assert "<polyline" not in dom  # the mean is not drawn where the interval swallows it
    shot = browser.screenshot(page, tmp_path / "dashboard.png")
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
    keep(shot)


def test_empty_history_renders_a_placeholder() -> None:
    """Before any estimate the page says so, and why, instead of drawing an empty chart."""
    text = dashboard.render(
        {"estimate": None, "computed_at": "2026-01-01T00:00:00+00:00", "skipped": {"no release": 2}}, []
    )
    assert "No estimate yet" in text
    assert "no estimates yet" in text
    assert "no valid release from any member in the last pass (skipped: no release (2))" in text


def members_record(n: int, hour: int = 0) -> dict[str, Any]:
    """The aggregate record of ``n`` members at the defaults (true load 40%, the defaults' noise)
    at ``hour``, computed by the aggregator's own estimate and record."""
    import random

    from cpu_tracker_daemon.network.aggregate import estimate_record
    from cpu_tracker_daemon.network.estimate import estimate

    rng = random.Random(hour)
    sigma = 282.84
    values = [40.0 + rng.gauss(0.0, sigma) for _ in range(n)]
    est = estimate(values, [sigma] * n)
    now = datetime(2026, 12, 1, hour, 0, tzinfo=UTC)
    return {"computed_at": now.isoformat(), "estimate": estimate_record(est, now, now), "skipped": {}}


def test_an_uninformative_estimate_is_said_in_words_not_as_a_number() -> None:
    """With 20 members the page headlined "155.8%" with an interval of 30.8% to 280.8%. It now
    says the estimate is too uncertain to read, shows only figures within 0-100% and says they
    were clipped, and names the number of members that would give +-5 points."""
    record = {
        "computed_at": "2026-12-01T12:00:00+00:00",
        "estimate": {
            "mean": 155.8, "standard_error": 63.8, "ci95": [30.8, 280.8], "peers": 20,
            "informative": False,
            "reading": {"mean": 100.0, "ci95": [30.8, 100.0], "clipped": True, "half_width": 125.0,
                        "target_half_width": 5.0, "members_for_target": 12_500},
        },
    }  # fmt: skip
    page = dashboard.render(record, [])
    headline = re.search(r'id="mean">([^<]*)<', page).group(1)  # type: ignore[union-attr]
    assert "%" not in headline
    assert "too uncertain" in headline.lower()
    assert "155.8" not in page.split('<script type="application/json"')[0]
    assert "280.8" not in page.split('<script type="application/json"')[0]
    assert "12,500 members" in page
    assert "clipped" in page


def test_the_chart_stays_within_0_and_100_percent() -> None:
    """The y axis ran to 280%: the band is drawn clipped to the range, with ticks 0 to 100."""
    history = [
        {"computed_at": f"2026-12-01T{h:02d}:00:00+00:00", "mean": 155.8, "ci95_low": -40.0,
         "ci95_high": 280.8, "peers": 20}
        for h in range(3)
    ]  # fmt: skip
    svg = dashboard.chart_svg(history)
    ticks = [float(t) for t in re.findall(r">(-?[\d.]+)%</text>", svg)]
    assert (min(ticks), max(ticks)) == (0.0, 100.0)


@needs_chromium
@pytest.mark.slow
@pytest.mark.parametrize("members", [3, 20, 1000])
def test_chromium_shows_what_each_network_size_can_tell(members: int, tmp_path: Path) -> None:
    """At 3 and 20 members the defaults' noise leaves nothing to read, and the page says so with
    the figure that would; at 1,000 it shows the estimate and its interval within 0-100%."""
    records = [members_record(members, hour) for hour in range(12)]
    history = [
        {"computed_at": r["computed_at"], "mean": r["estimate"]["mean"], "ci95_low": r["estimate"]["ci95"][0],
         "ci95_high": r["estimate"]["ci95"][1], "peers": members}
        for r in records
    ]  # fmt: skip
    record = records[-1]
    path = tmp_path / "index.html"
    path.write_text(dashboard.render(record, history))
    dom = browser.dump_dom(path)
    headline = re.search(r'id="mean">([^<]*)<', dom).group(1)  # type: ignore[union-attr]
    interval = re.search(r'id="interval">([^<]*)<', dom).group(1)  # type: ignore[union-attr]
    shown = [float(x) for x in re.findall(r"(?<![\d.])(-?\d+(?:\.\d+)?)%", headline + " " + interval)]
    assert all(0.0 <= x <= 100.0 for x in shown), (headline, interval)
    if members < 1000:
        assert "too uncertain" in headline.lower()
        assert "members" in interval
    else:
        assert headline.endswith("%")
    shot = browser.screenshot(path, tmp_path / f"dashboard-{members}.png")
    assert shot.stat().st_size > 10_000
    keep(shot)


@pytest.mark.slow
@needs_chromium
def test_chromium_leads_with_the_secure_estimate_and_keeps_the_local_one(tmp_path: Path) -> None:
    """At 100 members the secure round's estimate leads, its noise added once to the sum beside
    each member's own (local epsilon 5): a number with its 95% interval a few points wide. The
    local-DP one, too uncertain to read, comes second."""
    import random
    from fractions import Fraction

    from cpu_tracker_daemon.privacy.discrete import discrete_laplace
    from cpu_tracker_daemon.privacy.mechanisms import calibrate
    from cpu_tracker_daemon.secagg import noise, published, rounds

    config = load_config(
        write_config(tmp_path, {"schedule": {"every_seconds": 3600}, "privacy": {"epsilon": 0.5}})
    )
    calibration = calibrate(config.privacy, config.sampling.samples)
    rng = random.Random(3)
    scale = published.scale_of(calibration)
    local = Fraction(rounds.local_scale_of(config, calibration))  # 2,000 units: local epsilon 5
    # 40% on average; the roster's 100 calibrated for a fifth absent and a fifth colluding: 60
    total = 4000 * 100 + sum(noise.share(scale, 60, rng) + discrete_laplace(local, rng) for _ in range(100))
    result = {"members": 100, "roster": 100, "calibrated": 60, "sum_units": total, "aborted": None}
    slot = datetime(2026, 12, 1, 11, tzinfo=UTC)
    secure = published.secure_record(config, calibration, slot, "493907", result, slot)
    record = members_record(100) | {"secure": secure}
    path = tmp_path / "index.html"
    path.write_text(dashboard.render(record, []))
    dom = browser.dump_dom(path)
    assert "too uncertain" in re.search(r'id="other-mean">([^<]*)<', dom).group(1).lower()  # type: ignore[union-attr]
    assert "100 members" in re.search(r'id="peers">([^<]*)<', dom).group(1)  # type: ignore[union-attr]
    value = re.search(r'id="mean">([\d.]+)%<', dom)
    # (the page says "exact" only of an exact interval)
    detail = re.search(r'id="interval">([a-z ]*)95% interval ([\d.]+)% to ([\d.]+)%<', dom)
    assert value is not None
    assert detail is not None
    assert ("exact" in detail.group(1)) == secure["estimate"]["ci95_exact"]
    low, high = float(detail.group(2)), float(detail.group(3))
    assert low < float(value.group(1)) < high
    assert high - low < 2 * 10  # about +-9 points at 100 members, against +-55 with local DP alone
    shot = browser.screenshot(path, tmp_path / "dashboard-secure.png", height=700)
    assert shot.stat().st_size > 10_000
    keep(shot)


# -- a network whose members all take part in secure rounds, and one whose members all publish --

SLOT = datetime(2026, 12, 1, 11, tzinfo=UTC)


def secure_network(
    root: Path,
    members: int = 100,
    rounds: int = 2,
    busy: float = 47.33,
    start: datetime = SLOT,
    aggregate: Callable[[Path, datetime], object] | None = None,
) -> Path:
    """An aggregator's config after ``rounds`` hourly secure rounds from ``start`` of ``members``
    members, none of which publishes a release of its own, with an aggregation pass after each
    (``aggregate(config, at)``; by default the aggregator's own pass at that time). Each round's
    outcome is what the aggregator's round publishes: ``secure.json``, from the members' noisy
    sum, the mean ``busy`` percent."""
    import random

    from cpu_tracker_daemon.privacy.mechanisms import calibrate
    from cpu_tracker_daemon.secagg import noise, published

    sb = root / "SyftBox"
    emails = [f"m{n}@example.org" for n in range(members)]
    for email in emails:
        (sb / "datasites" / email).mkdir(parents=True)
    path = write_config(
        root,
        {
            "syftbox": {"dir": str(sb), "email": "agg@example.org"},
            "sampling": {"samples": 10, "interval_seconds": 5},
            "schedule": {"every_seconds": 3600},
            "aggregator": {"max_age_seconds": 86_400},
            "secure_aggregation": {"members": emails},
        },
        name="agg.toml",
    )
    config = load_config(path)
    calibration = calibrate(config.privacy, config.sampling.samples)
    scale = published.scale_of(calibration)
    calibrated = int(members * (1 - config.secure_aggregation.beta_dropped))
    rng = random.Random(7)
    for hour in range(rounds):
        slot = start + timedelta(hours=hour)
        total = round(busy * 100) * members + sum(noise.share(scale, calibrated, rng) for _ in range(members))
        result = {
            "members": members,
            "roster": members,
            "calibrated": calibrated,
            "sum_units": total,
            "aborted": None,
        }
        done = slot + timedelta(seconds=config.sampling.window_seconds + 80)
        published.publish(config, published.secure_record(config, calibration, slot, str(hour), result, done))
        at = done + timedelta(minutes=1)
        if aggregate is None:
            Aggregator(config, _Quiet(), clock=lambda at=at: at).run_pass()
        else:
            aggregate(path, at)
    return path


def secure_page(root: Path) -> Path:
    """index.html of :func:`secure_network` at its defaults."""
    return output_dir(load_config(secure_network(root))) / DASHBOARD_NAME


def local_network(root: Path, members: int) -> Path:
    """index.html of ``members`` members who each publish a noisy release (local differential
    privacy), after twelve hourly passes, as the aggregator writes it."""
    records = [members_record(members, hour) for hour in range(12)]
    history = [
        {"computed_at": r["computed_at"], "mean": r["estimate"]["mean"], "ci95_low": r["estimate"]["ci95"][0],
         "ci95_high": r["estimate"]["ci95"][1], "peers": members}
        for r in records
    ]  # fmt: skip
    path = root / "index.html"
    path.write_text(dashboard.render(records[-1], history))
    return path


def shown_text(dom: str) -> str:
    """The words a person sees: the page without its data block and its tags."""
    visible = dom.split('<script type="application/json"', maxsplit=1)[0]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", visible)))


def keep(shot: Path) -> None:
    """Copy a screenshot to $CPU_TRACKER_SCREENSHOT_DIR, when set, for a person to look at."""
    where = os.environ.get("CPU_TRACKER_SCREENSHOT_DIR")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(where) / shot.name)


@pytest.mark.slow
@needs_chromium
def test_a_secure_only_network_leads_with_its_rounds_estimate(tmp_path: Path) -> None:
    """The page opened with "no data / 0 peers" while the round's answer sat second, the chart
    said "no data yet" and the footer explained local noise nobody added. It now leads with the
    round's estimate and interval and says when its window was; the chart draws the rounds; the
    footer says what happened: masked values, one noise draw on the sum."""
    page = secure_page(tmp_path)
    data = json.loads(page.with_name("aggregate.json").read_text())
    reading = data["secure"]["estimate"]["reading"]
    dom = browser.dump_dom(page)
    words = shown_text(dom)
    assert f"{reading['mean']:.1f}%" == re.search(r'id="mean">([^<]*)<', dom).group(1)  # type: ignore[union-attr]
    low, high = reading["ci95"]
    assert f"exact 95% interval {low:.1f}% to {high:.1f}%" in re.search(r'id="interval">([^<]*)<', dom).group(
        1
    )  # type: ignore[union-attr]
    assert "100 members" in words
    assert "window from 12:00 UTC on 1 Dec 2026" in words  # the last round's: when the figure is of
    assert "no data" not in words.lower()
    assert "0 peers" not in words
    assert len(re.search(r'<polyline[^>]*points="([^"]+)"', dom).group(1).split()) == 2  # type: ignore[union-attr]
    footer = re.search(r"<footer[^>]*>(.*?)</footer>", dom, re.S).group(1)  # type: ignore[union-attr]
    assert "secure aggregation" in footer.lower()
    assert "masked" in footer
    assert "publishes only a noisy mean" not in footer


def test_a_line_is_drawn_only_where_its_interval_leaves_room_to_read() -> None:
    """The 20-member page headlined "Too uncertain to read" and still drew a solid line at 77%
    inside a band that covered the chart. A point whose interval is wider than +-25 points is
    left off the line; the band still shows it."""
    halves = [60, 60, 10, 10, 10, 60, 10, 10, 60]  # half widths of the 95% interval, in points
    history = [
        {"computed_at": f"2026-12-01T{h:02d}:00:00+00:00", "mean": 50.0 + h, "ci95_low": 50.0 + h - half,
         "ci95_high": 50.0 + h + half, "peers": 20}
        for h, half in enumerate(halves)
    ]  # fmt: skip
    svg = dashboard.chart_svg(history)
    lines = [pts.split() for pts in re.findall(r'<polyline[^>]*points="([^"]+)"', svg)]
    assert [len(pts) for pts in lines] == [3, 2]  # hours 2-4 and 6-7
    uncertain = dashboard.chart_svg(history[:2])
    assert "<polyline" not in uncertain
    assert 'class="band"' in uncertain
    assert "too uncertain" in uncertain.lower()


PHONE, DESK = 390, 1280


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("network", ["local", "local-20", "secure"])
def test_the_page_reads_at_a_phones_width(network: str, tmp_path: Path) -> None:
    """At 390 px the text ran edge to edge and the chart's labels shrank to a few pixels. Now no
    line of text touches the screen's edge or runs past it, the page never scrolls sideways, the
    chart's labels are at least 9 px tall, and the whole page (footer included) is in the
    screenshots at 390 and 1280 px."""
    page = (
        secure_page(tmp_path)
        if network == "secure"
        else local_network(tmp_path, 20 if network == "local-20" else 1000)
    )
    seen = browser.layout(page, PHONE)
    assert seen["viewport"] == PHONE
    assert seen["scroll_width"] <= PHONE
    for item in seen["text"]:
        assert item["left"] >= 12, item
        assert item["right"] <= PHONE - 12, item
        if item["tag"] == "text":  # in the chart: its drawn height, as the SVG is scaled
            assert item["height"] >= 9, item
        else:
            assert item["font_px"] >= 12, item
    last = max(seen["text"], key=lambda item: item["bottom"])
    assert last["text"].startswith("On the chart")  # the footer's last line
    assert last["bottom"] <= seen["page_height"]
    for width in (PHONE, DESK):
        shot = browser.screenshot(
            page, tmp_path / f"dashboard-{network}-{width}.png", width=width, height=None
        )
        assert shot.stat().st_size > 10_000
        keep(shot)
