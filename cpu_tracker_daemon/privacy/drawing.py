"""Where a release's noise is drawn: in this process for the discrete mechanisms, and in a
short-lived child process for Snapping, so the daemon never holds diffprivlib's stack.

The pre-noise value reaches the child on a pipe alone, and the child logs nothing and has no
stderr, so not even a traceback can carry it out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from cpu_tracker_daemon.errors import Interrupted, MechanismUnavailableError, NoiseUnavailableError
from cpu_tracker_daemon.privacy.accounting import SNAPPING
from cpu_tracker_daemon.privacy.mechanisms import (
    Calibration,
    Noisy,
    Statistic,
    add_noise,
    load_snapping,
    snap,
    snapping_seed,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from cpu_tracker_daemon.privacy.mechanisms import RandomLike
    from cpu_tracker_daemon.signals import StopRequest

# -I: no working directory or script directory on sys.path, no user site, no PYTHON* variables.
CHILD: Sequence[str] = (sys.executable, "-I", "-m", "cpu_tracker_daemon.privacy.drawing")
CHILD_CWD = "/"  # nothing of the caller's directory, and nothing there to keep busy or unmounted
CHILD_ENV: Mapping[str, str] = {"PATH": os.defpath}  # none of the caller's variables, but:
# the numeric libraries' tuning, which some processors need for numpy to compute right or at all
# (OPENBLAS_CORETYPE on a CPU an old OpenBLAS misdetects); none of it chooses what is imported.
PASSED_ON = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
TIMEOUT_SECONDS = 120.0  # importing diffprivlib takes about 1 s here; a slow board, far more
POLL_SECONDS = 0.25  # how often a wait on the child looks at the stop request
MAX_ANSWER_BYTES = 4096
NOT_A_VALUE = "the Snapping child process answered with something other than a value"
CHILD_FAILED = 70  # the child's exit code for anything that went wrong (EX_SOFTWARE)

_ready: set[str] = set()


def child_env() -> dict[str, str]:
    """The environment of an isolated child: :data:`CHILD_ENV` and the caller's :data:`PASSED_ON`."""
    return {**CHILD_ENV, **{k: v for k in PASSED_ON if (v := os.environ.get(k)) is not None}}


def ready(
    mechanism: str,
    child: Sequence[str] | None = None,
    timeout: float | None = None,
    stop: StopRequest | None = None,
) -> None:
    """Check, before anything is reserved, that ``mechanism`` can draw: for Snapping, that a
    child imports diffprivlib (once a process, the first time). ``stop`` set while it runs is
    :class:`Interrupted`."""
    if mechanism != SNAPPING or mechanism in _ready:
        return
    try:
        answer = _ask({"check": True}, child, timeout, stop)
    except NoiseUnavailableError as exc:
        raise MechanismUnavailableError("snapping", exc.reason) from None
    if answer != {"ready": True}:
        raise MechanismUnavailableError("snapping", "its child process gave no answer")
    _ready.add(mechanism)


def draw(
    value: Statistic,
    calibration: Calibration,
    random_state: RandomLike = None,
    child: Sequence[str] | None = None,
    timeout: float | None = None,
    stop: StopRequest | None = None,
) -> Noisy:
    """``value`` plus its calibrated noise, as :func:`privacy.add_noise` draws it: Snapping's in a
    child process, the others here. ``stop`` set while the child runs kills it and is
    :class:`Interrupted`: that window's noise is never drawn."""
    if calibration.mechanism != SNAPPING:
        return add_noise(value, calibration, random_state)
    seed = snapping_seed(random_state)
    request = {"percent": value.percent, "calibration": asdict(calibration), "seed": seed}
    answer = _ask(request, child, timeout, stop)
    cpu = answer.get("cpu")
    if not (isinstance(cpu, float) and math.isfinite(cpu) and calibration.lower <= cpu <= calibration.upper):
        raise NoiseUnavailableError(NOT_A_VALUE)
    return Noisy(cpu, None)


def _ask(
    request: dict[str, Any], child: Sequence[str] | None, timeout: float | None, stop: StopRequest | None
) -> dict[str, Any]:
    try:
        proc = subprocess.Popen(
            list(CHILD if child is None else child),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=CHILD_CWD,
            env=child_env(),
            close_fds=True,
        )
    except OSError as exc:
        raise NoiseUnavailableError(f"the Snapping child process could not start: {exc.strerror}") from None
    with proc:  # closes the pipes and reaps the child, however this ends
        out = _wait(proc, json.dumps(request).encode(), TIMEOUT_SECONDS if timeout is None else timeout, stop)
    if proc.returncode < 0:
        raise NoiseUnavailableError(f"the Snapping child process was killed by signal {-proc.returncode}")
    if proc.returncode != 0:
        raise NoiseUnavailableError(f"the Snapping child process exited with code {proc.returncode}")
    try:
        answer = json.loads(out[:MAX_ANSWER_BYTES])
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise NoiseUnavailableError(NOT_A_VALUE)
    return answer


def _wait(proc: subprocess.Popen[bytes], request: bytes, limit: float, stop: StopRequest | None) -> bytes:
    """Give ``proc`` the request and return its stdout once it exits, looking at ``stop`` every
    :data:`POLL_SECONDS`; a stop request or ``limit`` seconds kill and reap it."""
    deadline = time.monotonic() + limit
    given: bytes | None = request
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                out, _ = proc.communicate(given, timeout=max(0.0, min(POLL_SECONDS, left)))
            except subprocess.TimeoutExpired:  # it keeps what it has read and written so far
                given = None
            else:
                return out
            if stop is not None and stop.is_set():
                raise Interrupted()
            if time.monotonic() >= deadline:
                raise NoiseUnavailableError(f"the Snapping child process took longer than {limit:g} s")
    finally:
        if proc.poll() is None:  # stopped, out of time, or anything else: it goes now
            proc.kill()
            proc.wait()


def _child() -> int:
    """The child's whole life: one request in, one answer out, nothing else anywhere."""
    try:
        request = json.loads(sys.stdin.buffer.read(MAX_ANSWER_BYTES))
        if request.get("check"):
            load_snapping()  # the check is that it imports
            answer: dict[str, Any] = {"ready": True}
        else:
            calibration = Calibration(**request["calibration"])
            answer = {"cpu": snap(float(request["percent"]), calibration, request["seed"])}
        os.write(sys.stdout.fileno(), json.dumps(answer).encode())
    except BaseException:  # noqa: BLE001 - nothing may leave this process but the answer
        return CHILD_FAILED
    return 0


if __name__ == "__main__":
    os._exit(_child())  # no atexit handlers, no flush of anything else
