"""``cpu-tracker config init``: a commented starter configuration.

Every key is there, commented out at its default with one line on what it does, so the file
changes nothing until a line is uncommented; docs/configuration.md says more.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cpu_tracker_daemon.config import KEYS, NotRegularFileError, as_dict, kind_of, parse_config, toml_value

HELP: dict[str, str] = {
    "paths.data_dir": "ledger, lock and outputs; default: $STATE_DIRECTORY or ~/.local/share/cpu-tracker",
    "sampling.samples": "readings per window (1 to 100000)",
    "sampling.interval_seconds": "seconds per reading; the window is samples x interval",
    "schedule.every_seconds": "never release more often than this; at least the window length",
    "privacy.unit": '"window" hides the whole window; "sample" only one reading (much weaker)',
    "privacy.mechanism": '"laplace" (pure epsilon-DP), "gaussian" ((epsilon, delta)), "snapping"',
    "privacy.epsilon": "epsilon of one release (1e-6 to 1000); set this or sigma, not both",
    "privacy.sigma": "instead of epsilon: the noise standard deviation in percentage points",
    "privacy.delta": "delta of one Gaussian release (ignored by the pure mechanisms)",
    "privacy.lower": "each reading is clamped to [lower, upper]; the range sets the sensitivity",
    "privacy.upper": "see lower",
    "budget.lifetime_epsilon": "cap on what all releases ever add up to; only 'budget grant' raises it",
    "budget.lifetime_delta": "the delta the lifetime cap is measured at (0: pure epsilon-DP)",
    "budget.window_epsilon": "cap on what the releases in the rolling period add up to",
    "budget.window_delta": "the delta the rolling cap is measured at",
    "budget.window_hours": "the rolling period's length",
    "syftbox.dir": "a SyftBox folder, to publish there; set together with email",
    "syftbox.email": "this datasite's address",
    "syftbox.readers": "who may read the public release",
    "syftbox.layout": '"auto" (the folder says), "syftbox" (datasites/<email>/) or "pysyft" (<email>/)',
    "logging.format": '"auto" (console on a terminal, JSON elsewhere), "json" or "console"',
    "logging.level": '"debug", "info", "warning" or "error"',
    "logging.file": "also log (JSON) to this file; reopened after logrotate moves it",
    "aggregator.enabled": "also run the aggregator in this daemon (needs [syftbox])",
    "aggregator.every_seconds": "how often the aggregator reads the peers",
    "aggregator.max_age_seconds": "a peer release older than this does not count",
    "aggregator.publish_peers": "name the peers and their values in the public aggregate",
    "aggregator.history_length": "passes kept in history.json and the dashboard's chart",
    "aggregator.max_weight_ratio": "no peer weighs more than this multiple of the median peer",
    "prometheus.textfile_dir": "write node_exporter textfiles here",
    "secure_aggregation.enabled": "take part in the aggregator's secure rounds instead of a local release",
    "secure_aggregation.aggregator": "the email that runs the rounds",
    "secure_aggregation.beta_dropped": "the fraction of a round that may be declared absent (0 to 0.5)",
    "secure_aggregation.beta_colluding": "the fraction of a round that may collude with the aggregator",
    "secure_aggregation.local_epsilon": "a member's own noise: the most a cheating aggregator learns",
    "secure_aggregation.min_members": "a member refuses a roster smaller than this",
    "secure_aggregation.step_seconds": "one phase of a round; longer than the SyftBox sync delay",
    "secure_aggregation.members": "on the aggregator: run rounds for these members",
}

_EXAMPLES = {  # keys with no default: an example value to uncomment
    "paths.data_dir": '"/var/lib/cpu-tracker"',
    "privacy.sigma": "283.0",
    "syftbox.dir": '"~/SyftBox"',
    "syftbox.email": '"you@example.org"',
    "logging.file": '"cpu-tracker.log"',
    "prometheus.textfile_dir": '"/var/lib/prometheus/node-exporter"',
    "secure_aggregation.aggregator": '"aggregator@openmined.org"',
}


def starter_toml(environ: Mapping[str, str] = os.environ) -> str:
    """The starter file: valid TOML that loads to exactly the embedded defaults."""
    defaults = as_dict(parse_config({}, environ={}))
    lines = [
        "# cpu-tracker configuration. Every line below is a default, commented out: uncomment and",
        "# edit what you want to change, then 'cpu-tracker config check'. A running daemon reads",
        "# it again on SIGHUP (systemctl reload cpu-tracker). docs/configuration.md explains each key.",
        "",
    ]
    for section, keys in KEYS.items():
        lines.append(f"[{section}]")
        for key in keys:
            name = f"{section}.{key}"
            value = defaults.get(section, {}).get(key)
            shown = _EXAMPLES.get(name) if value in (None, "") or name == "paths.data_dir" else None
            lines.append(f"# {HELP[name]}")
            lines.append(f"# {key} = {shown or toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def write_starter(path: Path, force: bool, environ: Mapping[str, str] = os.environ) -> None:
    """Write the starter file at ``path`` (mode 0644, its directory made); never over a file
    that exists unless ``force``, and never into a FIFO or a device (the open does not wait for
    a reader). Raises FileExistsError or OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags | (0 if force else os.O_EXCL), 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(kind_of(mode))
        os.ftruncate(fd, 0)  # only now: a device or a FIFO is never truncated
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(starter_toml(environ))
