"""``cpu-tracker service``: print, install or remove the systemd unit or launchd plist."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command, subcommands
from cpu_tracker_daemon.daemon.service import MANAGERS
from cpu_tracker_daemon.errors import EXIT_OK, UsageError

_ACTIONS = {
    "print": "print the unit or plist for this installation",
    "install": "write it where the service manager looks, then print the command that starts it",
    "uninstall": "remove it (state, config and logs stay)",
}


def add_parser(sub: Subcommands) -> None:
    service = subcommands(
        add_command(sub, "service", help="print, install or remove the systemd unit or launchd plist"),
        dest="service_command",
    )
    for name, text in _ACTIONS.items():
        action = add_command(service, name, help=text)
        action.set_defaults(func=manage_service, needs_config=False)
        action.add_argument(
            "manager",
            nargs="?",
            choices=MANAGERS,
            default="launchd" if sys.platform == "darwin" else "systemd",
            help="default: this platform's",
        )
        scope = action.add_mutually_exclusive_group()
        scope.add_argument(
            "--user", dest="scope", action="store_const", const="user", help="per-user service"
        )
        scope.add_argument(
            "--system", dest="scope", action="store_const", const="system", help="system-wide service"
        )
        action.add_argument(
            "--executable", metavar="PATH", help="the cpu-tracker to run (default: this installation's)"
        )
        if name != "print":
            action.add_argument(
                "--root", metavar="DIR", default="/", help="install into an image rooted at DIR"
            )
            action.add_argument("--force", action="store_true", help="replace or remove a file that differs")
        if name == "install":
            action.add_argument(
                "--dry-run", action="store_true", help="show what would be written, write nothing"
            )


def manage_service(args: argparse.Namespace, env: Env) -> int:
    """Runs before any configuration is read: the service is not the caller's configuration."""
    from cpu_tracker_daemon.daemon import service

    scope = args.scope or service.default_scope(os.geteuid(), env)
    executable = Path(args.executable) if args.executable else service.installed_executable()
    home = Path(env.get("HOME") or Path.home())
    target = service.Target(args.manager, scope, executable, home, env)
    if args.service_command == "print":
        print(service.render(target), end="")
        return EXIT_OK
    root = Path(args.root)
    if not root.is_absolute():
        raise UsageError(f"--root {root} is not absolute; give the full path")
    uid = os.getuid()
    if args.service_command == "uninstall":
        removed = service.uninstall(target, root, args.force, service.render(target))
        print(f"removed {removed}; stop the service first if it still runs: {target.undo_command(uid)}")
        return EXIT_OK
    plan = service.plan_install(target, root, uid, force=args.force)
    if args.dry_run:
        print(f"would write {plan.definition}:\n{plan.text}", end="")
        for directory, mode, owner in plan.directories:
            print(f"would create {directory} (mode {mode:o}{', owner ' + owner if owner else ''})")
        if plan.sysusers is not None:
            print(f"would write {plan.sysusers} and run systemd-sysusers")
        print(f"then: {plan.next_command}")
        return EXIT_OK
    service.install(plan, root, args.force)
    print(f"wrote {plan.definition}")
    print(f"next: {plan.next_command}")
    return EXIT_OK
