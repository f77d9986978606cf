"""``ledger reset``: a deliberate new start of the privacy budget, which leaves a trace. The old
ledger is renamed aside, never deleted; the daemon never resets a ledger by itself."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cpu_tracker_daemon import storage
from cpu_tracker_daemon.budget.caps import Caps
from cpu_tracker_daemon.budget.ledger import open_ledger
from cpu_tracker_daemon.errors import LedgerUnavailableError
from cpu_tracker_daemon.storage import Layout

TRACE_NAME = "ledger-resets.jsonl"


@dataclass(frozen=True)
class Reset:
    retired: Path | None  # where the old ledger now is; None when there was none
    acknowledged: tuple[str, ...]  # releases in the outputs that the new ledger did not write
    trace: Path


def reset_ledger(layout: Layout, caps: Caps, reason: str, who: str, now: datetime) -> Reset:
    """Retire the ledger at ``layout.ledger`` (if any) and start a new one, leaving a trace."""
    path = layout.ledger
    retired = None
    try:
        if path.exists():
            retired = path.with_name(f"{path.stem}.retired-{now.strftime('%Y%m%dT%H%M%S.%fZ')}{path.suffix}")
            journal = path.with_name(path.name + "-journal")
            if journal.exists():
                journal.rename(retired.with_name(retired.name + "-journal"))
            path.rename(retired)
            storage.fsync_dir(path.parent)
    except OSError as exc:
        raise LedgerUnavailableError(str(path), f"cannot retire it: {exc}") from None
    record = storage.read_json(layout.public_file) or {}
    release_id = record.get("release_id")
    acknowledged = (release_id,) if isinstance(release_id, str) else ()
    note = f"reset by {who}: {reason}" + (f"; the old ledger is {retired.name}" if retired else "")
    # The trace first: if creating the new ledger fails, the daemon still refuses (its ledger is
    # missing beside an output) and the trace says why; the owner runs the reset again.
    trace = path.parent / TRACE_NAME
    line = {
        "at": now.isoformat(),
        "by": who,
        "reason": reason,
        "retired": retired.name if retired else None,
        "acknowledged": list(acknowledged),
    }
    try:
        fd = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LedgerUnavailableError(str(trace), f"cannot append the reset's trace: {exc}") from None
    ledger = open_ledger(path, caps, now)
    assert ledger is not None  # created
    with ledger:
        ledger.acknowledge(list(acknowledged), note, now)
    return Reset(retired, acknowledged, trace)
