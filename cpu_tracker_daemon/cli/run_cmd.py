"""``cpu-tracker run``: the daemon in the foreground, as a service manager starts it."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command
from cpu_tracker_daemon.config import LOG_FORMATS, Config
from cpu_tracker_daemon.errors import EXIT_OK


def add_parser(sub: Subcommands) -> None:
    run = add_command(
        sub,
        "run",
        help="run the daemon in the foreground (for systemd and launchd)",
        description=(
            "Run the daemon in the foreground until SIGTERM or Ctrl-C (exit 0); SIGHUP reloads the "
            "configuration. It samples for the configured window, publishes one noisy mean, and "
            "repeats every schedule.every_seconds while the privacy budget lasts."
        ),
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines for people (console) or machines (json); default: the config's "
        "logging.format, auto: console on a terminal, JSON under systemd, launchd and pipes",
    )
    run.set_defaults(func=run_daemon, writes_state=True)


def run_daemon(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon.daemon.loop import run_daemon

    run_daemon(config, path, env, log_format=args.log_format)
    return EXIT_OK
