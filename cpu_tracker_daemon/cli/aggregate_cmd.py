"""``cpu-tracker aggregate``: one aggregation pass over the SyftBox tree's releases."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command, add_json, print_json
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import EXIT_OK, ConfigError


def add_parser(sub: Subcommands) -> None:
    aggregate = add_command(sub, "aggregate", help="one aggregation pass over the SyftBox tree's releases")
    add_json(aggregate, what="print the aggregate record")
    aggregate.set_defaults(func=aggregate_once, writes_state=True)


def aggregate_once(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon import logs, storage
    from cpu_tracker_daemon.daemon.instance import AGGREGATE_LOCK, InstanceLock
    from cpu_tracker_daemon.logs import get_logger
    from cpu_tracker_daemon.network.aggregate import Aggregator, output_dir, summary_lines

    if config.syftbox.dir is None:
        raise ConfigError(["aggregate reads the peers from [syftbox] dir; set [syftbox] dir and email"])
    # Logs to stderr, so that stdout holds only the result.
    logs.configure(config.logging.format, config.logging.level, config.logging.file, stream=sys.stderr)
    layout = storage.layout_for(config)
    storage.prepare(layout)
    with InstanceLock(layout.data_dir / AGGREGATE_LOCK):
        result = Aggregator(config, get_logger("cpu_tracker.aggregate")).run_pass()
    get_logger("cpu_tracker.aggregate").info("aggregate.finished", **result.log_fields())
    if args.json:
        print_json(result.record)
        return EXIT_OK
    print("\n".join(summary_lines(result.record, output_dir(config))))
    return EXIT_OK
