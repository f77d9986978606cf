"""``cpu-tracker once``: one release cycle now, then exit with its outcome's code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import EXIT_OK, one_line


def add_parser(sub: Subcommands) -> None:
    once = add_command(sub, "once", help="run one release cycle now")
    once.add_argument("--force", action="store_true", help="skip the cooldown (never the budget)")
    once.set_defaults(func=once_cycle, writes_state=True)


def once_cycle(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    import signal

    from cpu_tracker_daemon import signals, storage
    from cpu_tracker_daemon.daemon.instance import claim_state
    from cpu_tracker_daemon.daemon.loop import configure_logging, readers_note
    from cpu_tracker_daemon.logs import get_logger
    from cpu_tracker_daemon.sampling import PsutilCpuSource
    from cpu_tracker_daemon.schedule import lands_after, once_wait
    from cpu_tracker_daemon.tracker import CycleLog, Tracker

    configure_logging(config)
    log = get_logger("cpu_tracker.once")
    layout = storage.layout_for(config)
    stop = signals.stop_on((signal.SIGTERM, signal.SIGINT))
    if (note := readers_note(config)) is not None:
        log.info("release.readers", summary=note, readers=list(config.syftbox.readers))
    with claim_state(layout):
        cpu = PsutilCpuSource()
        tracker = Tracker(config=config, layout=layout, cpu=cpu, log=log, stop=stop, announce=True)
        result = tracker.cycle(force=args.force, max_wait=once_wait(config))
    CycleLog(log, lands_after(config))(result)
    if result.error is not None:
        print(f"cpu-tracker: {one_line(str(result.error))}", file=sys.stderr)
        return result.error.exit_code
    return EXIT_OK
