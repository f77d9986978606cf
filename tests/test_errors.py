"""The error types themselves: each crosses a process boundary intact."""

from __future__ import annotations

import inspect
import pickle

import pytest

from cpu_tracker_daemon import errors


def every_error() -> list[errors.CpuTrackerError]:
    made = []
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if not issubclass(cls, errors.CpuTrackerError):
            continue
        params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
        samples = {"float": 1.5, "Sequence[str]": ["a bad key", "another"]}
        args = [samples.get(str(p.annotation), f"<{p.name}>") for p in params if p.default is p.empty]
        made.append(cls(*args))
    return made


@pytest.mark.parametrize("error", every_error(), ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_message_and_fields(error: errors.CpuTrackerError) -> None:
    """A worker process's LedgerUnavailableError (path, reason) could not be unpickled by the
    parent, so multiprocessing's result thread died and the pool hung forever (the stall of
    TestConcurrency): every error now round-trips with its message, type and fields."""
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), vars(back)) == (type(error), str(error), vars(error))
