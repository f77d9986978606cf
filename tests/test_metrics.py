"""Prometheus textfiles: valid exposition format, atomic, 0644, and read by a real node_exporter."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cpu_tracker_daemon.cli.main import main
from cpu_tracker_daemon.network import metrics
from tests.conftest import write_config

NARROW = {
    "mean": 41.0, "ci95": [30.0, 52.0], "peers": 7, "informative": True,
    "reading": {"mean": 41.0, "ci95": [30.0, 52.0], "clipped": False},
}  # fmt: skip


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parsed with prometheus_client's own parser: name -> {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge"
        assert family.documentation
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


class TestTextfiles:
    def test_member_file_after_a_real_release(self, tmp_path: Path) -> None:
        """A release writes cpu_tracker.prom: the noisy value, budget spent and left, last release time."""
        prom = tmp_path / "textfiles"
        config = write_config(tmp_path, {"prometheus": {"textfile_dir": str(prom)}})
        assert main(["--config", str(config), "once"]) == 0
        path = prom / metrics.MEMBER_FILE
        parsed = families(path.read_text())
        public = (tmp_path / "data" / "public" / "cpu_tracker.json").read_text()
        import json

        assert parsed["cpu_tracker_release_cpu_percent"][()] == json.loads(public)["cpu"]
        assert parsed["cpu_tracker_budget_epsilon_spent"][(("cap", "lifetime"),)] == 0.5
        assert parsed["cpu_tracker_budget_epsilon_remaining"][(("cap", "window"),)] == 99.5
        assert parsed["cpu_tracker_last_release_timestamp_seconds"][()] > 1.7e9
        assert path.stat().st_mode & 0o777 == 0o644
        assert [p.name for p in prom.iterdir()] == [metrics.MEMBER_FILE]

    def test_network_file_escapes_labels(self) -> None:
        """Skip reasons become label values, escaped so any text parses."""
        text = metrics.network_text(NARROW, {'odd "reason"\\ here\n': 2}, 1.8e9)
        parsed = families(text)
        assert parsed["cpu_tracker_network_peers_skipped"] == {(("reason", 'odd "reason"\\ here\n'),): 2.0}
        assert parsed["cpu_tracker_network_cpu_ci95_percent"][(("bound", "high"),)] == 52.0

    def test_the_network_file_says_whether_the_estimate_can_be_read(self) -> None:
        """Prometheus got the raw 155.8% with nothing to tell it apart from a real load. The file
        now says whether the estimate is informative, and gives it within 0-100% beside the raw one."""
        wide = {**NARROW, "mean": 155.8, "ci95": [30.8, 280.8], "informative": False,
                "reading": {"mean": 100.0, "ci95": [30.8, 100.0], "clipped": True}}  # fmt: skip
        parsed = families(metrics.network_text(wide, {}, 1.8e9))
        assert parsed["cpu_tracker_network_estimate_informative"][()] == 0.0
        assert parsed["cpu_tracker_network_cpu_in_range_percent"][()] == 100.0
        assert parsed["cpu_tracker_network_cpu_percent"][()] == 155.8
        assert (
            families(metrics.network_text(NARROW, {}, 1.8e9))["cpu_tracker_network_estimate_informative"][()]
            == 1.0
        )

    def test_temp_name_is_never_read_as_a_textfile(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While writing, the only new name in the directory ends in .tmp, not .prom."""
        seen: list[str] = []
        real_replace = os.replace

        def spy(src: str, dst: str, **dir_fds: int) -> None:
            seen.extend(p.name for p in tmp_path.iterdir())
            real_replace(src, dst, **dir_fds)

        monkeypatch.setattr(os, "replace", spy)
        metrics.write_textfile(tmp_path, "x.prom", "# HELP a b\n# TYPE a gauge\na 1\n")
        assert len(seen) == 1
        assert seen[0].endswith(".tmp")
        assert not seen[0].endswith(".prom")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(
    shutil.which("prometheus-node-exporter") is None,
    reason="Debian's prometheus-node-exporter is not installed",
)
def test_a_real_node_exporter_serves_the_member_file(tmp_path: Path) -> None:
    """node_exporter's textfile collector reads our file and serves the gauges on loopback."""
    prom = tmp_path / "textfiles"
    config = write_config(tmp_path, {"prometheus": {"textfile_dir": str(prom)}})
    assert main(["--config", str(config), "once"]) == 0
    port = _free_port()
    exporter = subprocess.Popen(
        [
            "prometheus-node-exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--collector.textfile.directory={prom}",
            "--collector.disable-defaults",
            "--collector.textfile",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "cpu_tracker_release_cpu_percent " in body
        assert 'cpu_tracker_budget_epsilon_spent{cap="lifetime"} 0.5' in body
        assert "node_textfile_scrape_error 0" in body
    finally:
        exporter.terminate()
        exporter.communicate(timeout=10)  # waits, and closes its stderr pipe
