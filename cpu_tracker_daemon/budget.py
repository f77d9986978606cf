"""The configuration's budget and privacy promise, in the ledger's terms."""

from __future__ import annotations

from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.ledger import Caps, Promise


def caps_for(config: Config) -> Caps:
    b = config.budget
    return Caps(b.lifetime_epsilon, b.window_epsilon, b.window_hours, b.lifetime_delta, b.window_delta)


def promise_for(config: Config) -> Promise:
    s, p = config.sampling, config.privacy
    return Promise(p.unit, s.samples, s.interval_seconds, p.lower, p.upper)
