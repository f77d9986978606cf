"""The schedule rule, at unit speed: the cooldown's end, the planned start, the daemon's next run.

The real check of the same rule, a daemon under libfaketime whose wall clock is stepped, is
``tests/test_faults.py::test_wall_clock_stepped_hours_forward_and_back``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cpu_tracker_daemon import schedule
from cpu_tracker_daemon.config import ROUND_STEPS, Config, parse_config

T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
# The shortest schedule a secure member with 4 s steps may have: its 5 s window, the round's
# steps and a second (62 s at 14 steps).
SHORTEST_SECURE = 5.0 + ROUND_STEPS * 4.0 + 1


def config(every: float = 3600.0, **secure: Any) -> Config:
    raw: dict[str, dict[str, Any]] = {
        "schedule": {"every_seconds": every},
        "sampling": {"samples": 5, "interval_seconds": 1.0},
    }
    if secure:
        raw["syftbox"] = {"email": "me@example.org", "dir": "/tmp/none"}
        raw["secure_aggregation"] = {"enabled": True, "aggregator": "agg@example.org", **secure}
        raw["privacy"] = {"mechanism": "laplace", "unit": "window"}
    return parse_config(raw, environ={"HOME": "/tmp/none"})


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


class TestCooldown:
    def test_the_cooldown_ends_one_interval_after_the_anchor(self) -> None:
        assert schedule.earliest_start(None, 60) is None
        assert schedule.earliest_start(1000.0, 60) == 1060.0

    def test_due_is_the_cooldowns_end_or_now_whichever_is_later(self) -> None:
        anchor = T0.timestamp()
        assert schedule.due_at(None, s(60), T0) == T0
        assert schedule.due_at(anchor, s(60), T0 + s(10)) == T0 + s(60)
        assert schedule.due_at(anchor, s(60), T0 + s(90)) == T0 + s(90)

    def test_the_planned_start_is_a_point_of_the_schedule_not_of_the_delay(self) -> None:
        anchor = T0.timestamp()
        # on time, a few ms late, or a second late: the same published start
        for late in (0.0, 0.004, 0.9):
            now = T0 + s(60 + late)
            assert schedule.planned_start(anchor, s(60), now, None, force=False) == T0 + s(60)
        # a cycle far behind the schedule starts now, floored to the second
        assert schedule.planned_start(anchor, s(60), T0 + s(200.7), None, force=False) == T0 + s(200)
        # forced: now, floored, whatever the cooldown says
        assert schedule.planned_start(anchor, s(60), T0 + s(5.5), None, force=True) == T0 + s(5)

    def test_the_next_start_seen_from_the_cooldown(self) -> None:
        anchor = T0.timestamp()
        assert schedule.next_start(anchor, s(60), T0 + s(10)) == T0 + s(60)
        assert schedule.next_start(None, s(60), T0 + s(10.5)) == T0 + s(10)

    def test_the_boot_clock_at_the_plan_is_at_most_a_second_back(self) -> None:
        assert schedule.planned_boot(500.0, T0 + s(0.25), T0) == pytest.approx(499.75)
        assert schedule.planned_boot(500.0, T0 + s(3600), T0) == 499.0  # a stepped clock: at most 1 s
        assert schedule.planned_boot(500.0, T0 - s(2), T0) == 500.0  # a plan after now: never ahead

    def test_the_file_is_written_a_fixed_hold_after_the_planned_end(self) -> None:
        c = config(every=60)  # a 5 s window: a hold of 1 s fits in the 55 s of slack
        assert schedule.planned_end(T0, c) == T0 + s(5)
        assert schedule.publish_time(T0, c) == T0 + s(6)
        assert schedule.publish_time(T0, c, hold=0) == T0 + s(5)
        assert schedule.round_start(T0, c) == schedule.publish_time(T0, c)
        tight = config(every=5.5)  # half the slack when that is less than a second
        assert schedule.publish_time(T0, tight) == T0 + s(5.25)

    def test_the_monotonic_spacing_ignores_the_wall_clock(self) -> None:
        spacing = schedule.Spacing()
        assert spacing.seconds_left(60, 100.0) == 0.0
        spacing.last_window_start = 100.0
        assert spacing.seconds_left(60, 130.0) == 30.0
        assert spacing.seconds_left(60, 500.0) == 0.0


class TestWaits:
    def test_a_daemons_cycle_waits_a_tenth_of_the_interval_up_to_a_minute(self) -> None:
        assert schedule.max_wait(config(every=10)) == 1.0
        assert schedule.max_wait(config(every=3600)) == schedule.MAX_WAIT_SECONDS

    def test_once_waits_only_for_a_secure_slot(self) -> None:
        assert schedule.once_wait(config(every=3600)) == 0.0
        assert schedule.once_wait(config(every=3600, members=[])) > 0

    @pytest.mark.parametrize("every", [SHORTEST_SECURE, 3600.0])
    def test_a_secure_once_waits_long_enough_for_the_slot_its_cooldown_allows(self, every: float) -> None:
        """CI: a member whose last window was off the grid (an earlier test's 1 s schedule) was
        refused as in cooldown: the first slot its cooldown allowed was more than the interval
        and a second away, the most ``once`` waited. The cooldown ends at most one interval away,
        and the slot after it at most one more."""
        c = config(every=every, members=[], step_seconds=4.0)
        rng = random.Random(5)
        for _ in range(2000):
            now = T0 + s(rng.uniform(0, 10 * every))
            anchor = now.timestamp() - rng.uniform(0, 2 * every)
            due = schedule.due_at(anchor, s(every), now, schedule.grid_late(c))
            assert (due - now).total_seconds() <= schedule.once_wait(c), (anchor, now)

    def test_a_step_of_the_wall_clock_is_a_jump_a_slew_is_not(self) -> None:
        assert not schedule.clock_jumped(schedule.CLOCK_JUMP_SECONDS)
        assert schedule.clock_jumped(-schedule.CLOCK_JUMP_SECONDS - 0.1)
        assert schedule.clock_jumped(5 * 3600)


class TestPlanNextRun:
    def test_the_run_is_moved_half_the_wait_before_due(self) -> None:
        c = config(every=60)  # max wait 6 s
        due = T0 + s(60)
        planned = T0 + s(60.2)  # the interval trigger's run, after a cycle that started late
        assert schedule.plan_next_run(due, T0 + s(1), planned, c, may_advance=True) == T0 + s(57)

    def test_a_run_already_at_its_target_stays(self) -> None:
        c = config(every=60)
        target = T0 + s(57)
        assert schedule.plan_next_run(T0 + s(60), T0 + s(1), target, c, may_advance=True) is None
        assert schedule.plan_next_run(T0 + s(60), T0 + s(1), target + s(0.0005), c, True) is None

    def test_a_run_planned_too_early_is_always_moved_later(self) -> None:
        c = config(every=60)
        moved = schedule.plan_next_run(T0 + s(60), T0 + s(1), T0 + s(30), c, may_advance=False)
        assert moved == T0 + s(57)

    def test_after_a_budget_refusal_the_run_is_not_moved_earlier(self) -> None:
        c = config(every=60)
        assert schedule.plan_next_run(T0 + s(60), T0 + s(1), T0 + s(120), c, may_advance=False) is None

    def test_a_due_time_in_the_past_runs_now(self) -> None:
        c = config(every=60)
        now = T0 + s(100)
        assert schedule.plan_next_run(T0 + s(60), now, T0 + s(160), c, may_advance=True) == now

    def test_a_due_reckoned_before_the_clock_went_back_is_left_to_the_replan(self) -> None:
        """A cycle whose window was open when the clock was set back hours reports a due time
        hours ahead of the new clock: moving the run there would stall releases for hours. (A
        daemon under libfaketime checked this end to end; the rule is this function's.)"""
        c = config(every=60)
        # more than one interval (plus the wait) ahead: the cycle straddled a step back
        assert schedule.plan_next_run(T0 + s(67), T0, T0 + s(60), c, may_advance=True) is None
        assert schedule.plan_next_run(T0 + s(65), T0, T0 + s(70), c, may_advance=True) == T0 + s(62)

    def test_a_simulated_daemon_keeps_every_window_one_interval_apart(self) -> None:
        """1,000 cycles of the daemon's loop at unit speed: an interval trigger, a start-up latency
        of up to half the allowed wait, an occasional stall past the next run (the scheduler skips
        the missed run, as coalesce does), and the re-plan after each cycle. A window starts one
        interval after the last, or, after a stall, within the next cycle's latency of the
        stall's end, not at the trigger's next run; no cycle is refused."""
        c = config(every=60)
        every = s(60)
        rng = random.Random(7)
        wait = schedule.max_wait(c)
        next_run = T0
        anchor: float | None = None
        ended: datetime | None = None
        on_time = after_stall = 0
        for i in range(1000):
            now = next_run + s(rng.uniform(0, wait / 2))  # the job thread wakes, opens the ledger
            due = schedule.due_at(anchor, every, now)
            assert (due - now).total_seconds() <= wait, f"cycle {i} refused in cooldown"
            now = max(now, due)  # the cycle waits for the cooldown's end
            planned = schedule.planned_start(anchor, every, now, None, force=False)
            if anchor is not None and ended is not None:
                gap = planned.timestamp() - anchor
                if ended.timestamp() <= anchor + 60:
                    assert gap == 60.0, f"cycle {i}"
                    on_time += 1
                else:
                    assert planned - ended <= s(wait / 2 + 1), f"cycle {i} waited past the stall"
                    after_stall += 1
            anchor = planned.timestamp()
            ended = now + s(rng.choice([0.1] * 19 + [70.0]))  # a window, or a stall past the grid
            # the interval trigger's next run after the one that fired, skipping runs already missed
            next_run = next_run + every
            while next_run < ended:
                next_run += every
            moved = schedule.plan_next_run(schedule.due_at(anchor, every, ended), ended, next_run, c, True)
            next_run = moved or next_run
        assert on_time > 800
        assert after_stall > 20
