"""The daemon's side of secure aggregation: a member's part in its window's round, and the
aggregator's round (which the daemon runs in a child, ``secagg.round_child``); every machine finds
a round from the schedule alone."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from cpu_tracker_daemon import schedule
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import Interrupted
from cpu_tracker_daemon.privacy.discrete import discrete_laplace, laplace_scale, system_random
from cpu_tracker_daemon.privacy.mechanisms import Calibration, calibrate
from cpu_tracker_daemon.secagg import identity, noise, transport
from cpu_tracker_daemon.secagg.protocol import Member, Roster
from cpu_tracker_daemon.secagg.published import publish, scale_of, secure_record
from cpu_tracker_daemon.secagg.round_child import RoundOutcome
from cpu_tracker_daemon.signals import StopRequest

if TYPE_CHECKING:
    from cpu_tracker_daemon.privacy.discrete import Uniform

WRITE_FAILED = transport.WRITE_FAILED
KEEP_ROUNDS = 24  # round folders kept in a datasite; older ones are removed


def tree_of(config: Config) -> transport.Tree:
    assert config.syftbox.dir is not None
    return transport.Tree(config.syftbox.dir)


def stop_clock(stop: StopRequest) -> transport.RoundClock:
    """A round's clock: the wall clock (the machines share it), waits a stop request ends."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise Interrupted()

    return transport.RoundClock(now=time.time, sleep=sleep)


# -- a member ------------------------------------------------------------------------------------


def local_scale_of(config: Config, calibration: Calibration) -> float:
    """The discrete Laplace scale of a member's own noise: its contribution alone is then
    ``local_epsilon``-DP, whatever the roster (grid units)."""
    return float(laplace_scale(calibration.sensitivity_units, config.secure_aggregation.local_epsilon))


def member_noise(roster: Roster, rng: noise.Uniform01 | None = None, exact: Uniform | None = None) -> int:
    """A member's noise in a round: its share of the central noise, and its own discrete
    Laplace noise at the roster's local scale (at least this member's: it refused the roster
    otherwise), each from the OS CSPRNG unless a test injects a source."""
    own = discrete_laplace(Fraction(roster.local_scale), exact or system_random())
    return noise.share(roster.scale, roster.calibrated, *((rng,) if rng is not None else ())) + own


def keyring_of(
    config: Config, tree: transport.Tree, log: transport.Log
) -> tuple[identity.Identity, transport.Keyring]:
    """This datasite's identity (its did.json published) and the peers' keys as pinned."""
    me = identity.Identity.load_or_create(identity.identity_path(config))
    identity.publish(tree.root, config.syftbox.email, me)
    return me, transport.Keyring(tree, identity.Pins.load(identity.pins_path(config)), log)


def take_part(
    config: Config,
    slot: datetime,
    value_units: int,
    before_sending: Callable[[], None],
    clock: transport.RoundClock,
    log: transport.Log = transport._no_log,
) -> str:
    """This member's part in the round of ``slot``; ``before_sending`` records the spend.
    Returns ``revealed`` or why the round ended for this member."""
    sa = config.secure_aggregation
    round_id, tree, calibration, start = _round_of(config, slot)
    signer, keyring = keyring_of(config, tree, log)

    requirements = transport.Requirements(
        beta_dropped=sa.beta_dropped,
        beta_colluding=sa.beta_colluding,
        scale=scale_of(calibration),
        local_scale=local_scale_of(config, calibration),
        min_members=sa.min_members,
    )
    # The keys appear at the round's start, a point of the schedule, not when this window's
    # sampling happened to end (as the public file of a local release waits for its hold).
    if (wait := start - clock.now()) > 0:
        clock.sleep(wait)
    return transport.member_round(
        tree,
        Member(config.syftbox.email),
        signer,
        keyring,
        sa.aggregator,
        round_id,
        start,
        sa.step_seconds,
        value_units,
        member_noise,
        before_sending,
        clock,
        requirements,
    )


def _round_of(config: Config, slot: datetime) -> tuple[str, transport.Tree, Calibration, float]:
    """A slot's round as either side finds it: its id, the tree (this datasite's old rounds
    pruned), this config's calibration, and the round's start on the wall clock."""
    round_id = schedule.round_id(slot, timedelta(seconds=config.schedule.every_seconds))
    tree = tree_of(config)
    prune(tree, config.syftbox.email, round_id)
    calibration = calibrate(config.privacy, config.sampling.samples)
    return round_id, tree, calibration, schedule.round_start(slot, config).timestamp()


def prune(tree: transport.Tree, who: str, current: str, keep: int = KEEP_ROUNDS) -> None:
    """Remove this datasite's round folders more than ``keep`` rounds before ``current``. Nothing
    is removed through a symbolic link: one planted on the way would point the removal elsewhere."""
    base = tree.base(who)
    step = base
    while step not in (tree.root, step.parent):
        if step.is_symlink():
            return
        step = step.parent
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.isdigit() and int(entry.name) < int(current) - keep and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


# -- the aggregator --------------------------------------------------------------------------------


def run_round(
    config: Config,
    slot: datetime,
    clock: transport.RoundClock,
    now: schedule.Clock,
    log: transport.Log = transport._no_log,
) -> RoundOutcome:
    """Run the round of ``slot`` for the configured members and publish its outcome. The daemon
    runs it in a child process of its own (``secagg.round_child``)."""
    sa = config.secure_aggregation
    round_id, tree, calibration, start = _round_of(config, slot)
    if clock.now() > start + sa.step_seconds:  # the members have stopped waiting for a roster
        result: dict[str, Any] = {"members": 0, "sum_units": None, "aborted": "the aggregator started late"}
    else:
        signer, keyring = keyring_of(config, tree, log)
        result = transport.aggregator_round(
            tree,
            signer,
            keyring,
            config.syftbox.email,
            sa.members,
            round_id,
            start,
            sa.step_seconds,
            transport.Calibration(
                sa.beta_dropped, sa.beta_colluding, scale_of(calibration), local_scale_of(config, calibration)
            ),
            clock,
        )
    record = secure_record(config, calibration, slot, round_id, result, now())
    publish(config, record)
    return RoundOutcome(record)
