"""The dashboard in a real headless Chromium: the latest value, the peers, the chart with its band."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


@needs_chromium
def test_chromium_renders_the_value_and_the_chart(page: Path, tmp_path: Path) -> None:
    """Chromium shows the latest mean and interval, the peer count, and a chart of six points with a band."""
    dom = browser.dump_dom(page)
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', dom, re.S).group(1)
    )  # type: ignore[union-attr]
    latest = data["latest"]["estimate"]
    assert f"{latest['mean']:.1f}%" in re.search(r'id="mean">([^<]*)<', dom).group(1)  # type: ignore[union-attr]
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
