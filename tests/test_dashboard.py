"""The dashboard in a real headless Chromium: the latest value, the peers, the chart with its band."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon import dashboard
from cpu_tracker_daemon.aggregate import DASHBOARD_NAME, Aggregator, output_dir
from cpu_tracker_daemon.cli import main
from cpu_tracker_daemon.config import load_config
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
    assert "3 peers" in dom
    points = re.search(r'<polyline id="line" points="([^"]+)"', dom).group(1).split()  # type: ignore[union-attr]
    assert len(points) == 6
    assert re.search(r'<polygon id="band" points="[^"]+"', dom)
    shot = browser.screenshot(page, tmp_path / "dashboard.png")
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
    keep = os.environ.get("CPU_TRACKER_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "dashboard.png")


def test_empty_history_renders_a_placeholder() -> None:
    """Before any estimate the page says so instead of drawing an empty chart."""
    text = dashboard.render({"estimate": None, "computed_at": "2026-01-01T00:00:00+00:00"}, [])
    assert "no data yet" in text
    assert "no valid peer releases yet" in text


def members_record(n: int, hour: int = 0) -> dict[str, Any]:
    """The aggregate record of ``n`` members at the defaults (true load 40%, the defaults' noise)
    at ``hour``, computed by the aggregator's own estimate and record."""
    import random

    from cpu_tracker_daemon.aggregate import estimate_record
    from cpu_tracker_daemon.estimate import estimate

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
    keep = os.environ.get("CPU_TRACKER_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


@pytest.mark.slow
@needs_chromium
def test_chromium_shows_the_secure_estimate_beside_the_local_one(tmp_path: Path) -> None:
    """At 100 members the local-DP estimate is too uncertain to read; the secure round's, its
    noise added once to the sum beside each member's own (local epsilon 5), is a number with its
    95% interval a few points wide."""
    import random
    from fractions import Fraction

    from cpu_tracker_daemon.discrete import discrete_laplace
    from cpu_tracker_daemon.privacy import calibrate
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
    assert "too uncertain" in re.search(r'id="mean">([^<]*)<', dom).group(1).lower()  # type: ignore[union-attr]
    value = re.search(r'id="secure-mean">([\d.]+)%<', dom)
    # (the page says "exact" for every interval; at 100 members this one is a normal approximation)
    detail = re.search(r'id="secure-interval">[a-z ]*95% interval ([\d.]+)% to ([\d.]+)%, 100 members', dom)
    assert value is not None
    assert detail is not None
    low, high = float(detail.group(1)), float(detail.group(2))
    assert low < float(value.group(1)) < high
    assert high - low < 2 * 10  # about +-9 points at 100 members, against +-55 with local DP alone
    shot = browser.screenshot(path, tmp_path / "dashboard-secure.png", height=700)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CPU_TRACKER_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)
