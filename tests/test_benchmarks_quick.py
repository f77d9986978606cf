"""Fast subsets of the benchmarks' own checks (benchmarks/run_all.py runs them in full).

Nothing here is timed: the accuracy check compares two readings of the same window, the soak
check compares counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import benchmark

pytestmark = pytest.mark.slow


def test_raw_value_matches_proc_stat_under_a_calibrated_load() -> None:
    """Half a core busy: the raw value and /proc/stat over the same window agree within 0.5 points."""
    accuracy = benchmark("accuracy")
    result = accuracy.measure(0.5, samples=20, interval=0.1)
    assert abs(result["ours"] - result["truth"]) < 0.5, result


def test_raw_value_matches_proc_stat_with_the_sampler_stalled() -> None:
    """Stopped by real SIGSTOPs mid-window, the sampler's raw value still agrees with /proc/stat."""
    accuracy = benchmark("accuracy")
    result = accuracy.measure(0.5, samples=20, interval=0.1, stalled=True)
    assert result["shortest"] < 0.6, result  # the stalls made the sub-intervals unequal
    assert abs(result["ours"] - result["truth"]) < 0.5, result


def test_short_soak_is_flat() -> None:
    """Twenty seconds of the real daemon at a 1 s cadence: it releases, every cycle released or
    waited out its cooldown, no window started within half an interval of the one before, and
    SIGTERM stops it cleanly. Whether a window started late or a slot was missed depends on how
    loaded the machine is: benchmarks/soak.py judges that, not this test."""
    soak = benchmark("soak")
    seen = soak.soak(minutes=0.35, every=1.0)
    assert seen.code == 0
    assert seen.starts, "no release in twenty seconds"
    assert seen.doubled() == 0, seen.starts
    assert set(seen.log.outcomes()) <= {"released", "cooldown", "interrupted"}, seen.log.outcomes()


@pytest.mark.parametrize("target", ["config", "peer", "request"])
def test_atheris_finds_no_crash_in_a_short_run(target: str, tmp_path: Path) -> None:
    """3,000 coverage-guided inputs per parser, from the seed corpus: none escapes its contract."""
    pytest.importorskip("atheris", reason="atheris ships wheels for x86_64 Linux only")
    fuzz = benchmark("fuzz")
    result = fuzz.run(target, tmp_path, seconds=None, runs=3000)
    assert result["crashes"] == [], result["tail"]
    assert result["exit"] == 0, result["tail"]
    assert result["runs"] == 3000
    assert (tmp_path / target / "corpus" / "seed-0").exists()
