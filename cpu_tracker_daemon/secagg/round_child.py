"""Where the aggregator's round runs: in a short-lived child process, so the daemon never holds
the round's memory, the cryptography or numpy; its resident size stays what it was at start.

The daemon gives the child its configuration and the slot on stdin; the child runs
:func:`secagg.rounds.run_round` and writes one JSON object a line on stdout: the round's log
events as they happen, then its record (or why there is none)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpu_tracker_daemon import schedule, signals
from cpu_tracker_daemon.config import ROUND_STEPS, Config, parse_config, to_toml
from cpu_tracker_daemon.errors import CpuTrackerError, Interrupted, SecureRoundError, one_line
from cpu_tracker_daemon.privacy.drawing import CHILD_CWD, child_env

if TYPE_CHECKING:
    from cpu_tracker_daemon.signals import StopRequest

# As privacy.drawing starts Snapping's child: -I (no working directory, user site or PYTHON*
# variables on the way to the imports), from /, with none of the caller's environment but the
# numeric libraries' tuning (numpy computes the round's interval).
CHILD: Sequence[str] = (sys.executable, "-I", "-m", "cpu_tracker_daemon.secagg.round_child")
POLL_SECONDS = 0.25  # how often the wait looks at the stop request
GRACE_SECONDS = 2.0  # from SIGTERM to SIGKILL: the child stops at its next wait, or is killed
MAX_LINE_BYTES = 1 << 20  # a record is about 1 KB; a log event less
KEPT_LINES = 3  # lines that are not JSON (an interpreter's own error) kept for the message
CHILD_ERROR, CHILD_CRASHED, CHILD_INTERRUPTED = 1, 70, 75  # the child's exit codes

Log = Callable[..., None]


@dataclass(frozen=True)
class RoundOutcome:
    """A round's published record (``secure.json``), and the figures its log line shows."""

    record: dict[str, Any]

    def log_fields(self) -> dict[str, Any]:
        est = self.record.get("estimate")
        return {
            "round": self.record["round"],
            "members": self.record["members"],
            "roster": self.record["roster"],
            "aborted": self.record["aborted"],
            "mean": round(est["mean"], 3) if est else None,
            "ci95": [round(v, 3) for v in est["ci95"]] if est else None,
        }


def current_slot(config: Config, now: datetime) -> datetime:
    """The slot whose round starts nearest ``now``: the aggregator's job runs at round starts."""
    every = config.schedule.every_seconds
    offset = schedule.first_round_start(config).timestamp()
    return datetime.fromtimestamp(round((now.timestamp() - offset) / every) * every, UTC)


def time_limit(config: Config) -> float:
    """How long a round's child may run: the round's steps, and a whole interval for its
    arithmetic; the next round's start is no limit, a round at many members may reach past it."""
    return ROUND_STEPS * config.secure_aggregation.step_seconds + config.schedule.every_seconds


# -- the daemon's side ---------------------------------------------------------------------------


def run(
    config: Config,
    now: datetime,
    stop: StopRequest,
    log: Log,
    child: Sequence[str] | None = None,
    limit: float | None = None,
) -> RoundOutcome:
    """Run the round whose start is nearest ``now`` in a child process and return its outcome;
    ``log`` gets the round's events as they happen. A stop request kills the child and is
    :class:`Interrupted`; a child that fails is :class:`SecureRoundError`, naming why."""
    request = {
        "config": to_toml(config),
        "source": None if config.source is None else str(config.source),
        "slot": current_slot(config, now).isoformat(),
    }
    try:
        proc = subprocess.Popen(
            list(CHILD if child is None else child),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # an interpreter that fails before our code says why here
            cwd=CHILD_CWD,
            env=child_env(),
            close_fds=True,
        )
    except OSError as exc:
        raise SecureRoundError(f"the secure round's child process could not start ({exc.strerror})") from None
    waiting = _Waiting(stop, time_limit(config) if limit is None else limit)
    with proc:  # closes the pipes, however this ends
        try:
            _send(proc, json.dumps(request).encode(), waiting)
            answer, stray = _read(proc, log, waiting)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(GRACE_SECONDS)  # it closed its stdout: it is exiting
        finally:
            _end(proc)
    if proc.returncode != 0 and stop.is_set():  # systemd stops the child with the daemon
        raise Interrupted()
    return _outcome(answer, stray, proc.returncode)


class _Waiting:
    """A stop request and a time limit, looked at every :data:`POLL_SECONDS` of a wait."""

    def __init__(self, stop: StopRequest, limit: float) -> None:
        self.stop = stop
        self.limit = limit
        self.deadline = time.monotonic() + limit

    def poll(self) -> float:
        """How long the next wait may be; :class:`Interrupted` or the time limit's error when
        the wait is over."""
        if self.stop.is_set():
            raise Interrupted()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SecureRoundError(
                f"the secure round's child process took longer than {self.limit:g} s and was killed"
            )
        return min(POLL_SECONDS, left)


def _send(proc: subprocess.Popen[bytes], request: bytes, waiting: _Waiting) -> None:
    """Write the request as the child reads it (without blocking: a child that never reads
    would hold the daemon's stop), then close its stdin."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    left = memoryview(request)
    try:
        while left:
            if select.select([], [fd], [], waiting.poll())[1]:
                with contextlib.suppress(BlockingIOError):
                    left = left[os.write(fd, left) :]
    except OSError:  # it exited before reading all of it: what it wrote says why
        pass
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _read(
    proc: subprocess.Popen[bytes], log: Log, waiting: _Waiting
) -> tuple[dict[str, Any] | None, collections.deque[str]]:
    """The child's lines until it closes its stdout, its events passed to ``log`` as they come:
    its last answer (record, error or crash), and its last lines that were not JSON."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    answer: dict[str, Any] | None = None
    stray: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
    pending = b""
    while True:
        if not select.select([fd], [], [], waiting.poll())[0]:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return answer, stray
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) > MAX_LINE_BYTES:
            raise SecureRoundError("the secure round's child process wrote a line past 1 MiB and was killed")
        for line in lines:
            doc = _parse(line)
            if doc is None:
                if line.strip():
                    stray.append(one_line(line.decode("utf-8", "replace").strip())[:300])
            elif "log" in doc:
                fields = doc.get("fields")
                fields = {k: v for k, v in fields.items() if k != "event"} if isinstance(fields, dict) else {}
                log(str(doc["log"]), **fields)
            else:
                answer = doc


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child if it still runs (SIGTERM, then SIGKILL after a grace) and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _outcome(answer: dict[str, Any] | None, stray: Sequence[str], code: int) -> RoundOutcome:
    what = "the secure round's child process"
    if answer is not None and code == 0 and isinstance(answer.get("record"), dict):
        return RoundOutcome(answer["record"])
    if answer is not None and isinstance(answer.get("error"), str):
        raise SecureRoundError(f"{what} stopped: {answer['error']}")
    if answer is not None and isinstance(answer.get("crash"), str):
        raise SecureRoundError(f"{what} crashed: {answer['crash']}", str(answer.get("traceback", "")))
    said = f": {' / '.join(stray)}" if stray else ""
    if code < 0:
        raise SecureRoundError(f"{what} was killed by signal {-code}{said}")
    if code == CHILD_INTERRUPTED:
        raise SecureRoundError(f"{what} was stopped by a signal before the round ended")
    raise SecureRoundError(f"{what} exited with code {code} and no record{said}")


# -- the child's side ----------------------------------------------------------------------------


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(doc, default=str).encode() + b"\n")
    sys.stdout.buffer.flush()


def config_of(request: dict[str, Any]) -> Config:
    """The daemon's configuration as it sent it (``config.to_toml``), read back with no
    environment: every path in it is already absolute."""
    source = request.get("source")
    return parse_config(
        tomllib.loads(request["config"]), source=None if source is None else Path(source), environ={}
    )


def _child(now: Callable[[], datetime] = schedule.utc_now) -> int:
    """The child's whole life: the request in, the round's events and its record out."""
    stop = signals.stop_on((signal.SIGTERM, signal.SIGINT))  # the daemon's stop, or systemd's
    try:
        request = json.loads(sys.stdin.buffer.read())
        config = config_of(request)
        from cpu_tracker_daemon.secagg import rounds

        def log(event: str, **fields: Any) -> None:
            _emit({"log": event, "fields": fields})

        outcome = rounds.run_round(
            config, datetime.fromisoformat(request["slot"]), rounds.stop_clock(stop), now, log
        )
        _emit({"record": outcome.record})
    except Interrupted:
        return CHILD_INTERRUPTED
    except CpuTrackerError as exc:
        _emit({"error": str(exc)})
        return CHILD_ERROR
    except BaseException as exc:  # noqa: BLE001 - the daemon logs it; nothing else would
        import traceback

        _emit({"crash": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return CHILD_CRASHED
    return 0


if __name__ == "__main__":
    os._exit(_child())  # its output is flushed line by line; no atexit handlers
