"""What the benchmark scripts share: the config they run the daemon with, and the reader of its log.

Imported by the scripts as ``common`` (their own directory is on ``sys.path`` when run as
``python benchmarks/NAME.py``, and ``tests/bench.py`` puts it there when a test loads one).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def write_config(
    path: Path,
    data: Path,
    *,
    samples: int,
    interval: float,
    every: float,
    budget: float = 1e9,
    extra: str = "",
) -> Path:
    """A config at ``path`` keeping its state in ``data``: ``samples`` x ``interval`` s windows
    every ``every`` s, both caps at ``budget`` (roomy, so a benchmark measures the cycle, not the
    pause), and ``extra`` TOML tables appended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[paths]\ndata_dir = {json.dumps(str(data))}\n"
        f"[sampling]\nsamples = {samples}\ninterval_seconds = {interval!r}\n"
        f"[schedule]\nevery_seconds = {every!r}\n"
        f"[budget]\nlifetime_epsilon = {budget!r}\nwindow_epsilon = {budget!r}\n" + extra
    )
    return path


def log_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON events in a daemon's log lines; other lines, and a last line cut by a kill, skipped."""
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def wait_for_event(proc: subprocess.Popen[str], event: str, count: int = 1) -> None:
    """Read the daemon's stdout until ``count`` events named ``event``; raise if it exits first."""
    assert proc.stdout is not None
    seen = 0
    for record in log_events(proc.stdout):
        if record.get("event") == event:
            seen += 1
            if seen >= count:
                return
    raise RuntimeError(f"daemon exited before {count} x {event}")
