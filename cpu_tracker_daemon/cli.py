"""The ``cpu-tracker`` command: argparse subcommands, and the one place errors are printed and
turned into exit codes (the table is :mod:`exit_codes`').

Heavy imports (diffprivlib, numpy, APScheduler, psutil) happen inside the commands that need
them, so ``--help``, ``status`` and ``budget`` start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.config import (
    LOG_FORMATS,
    Config,
    as_dict,
    config_origin,
    config_path_from,
    load_config,
    to_toml,
)
from cpu_tracker_daemon.errors import ConfigError, CpuTrackerError, UsageError, one_line
from cpu_tracker_daemon.exit_codes import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    exit_code_for,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = _Parser(
        prog="cpu-tracker",
        description="Measure this machine's CPU use and publish only a differentially private mean.",
        epilog=(
            "config: --config PATH, else $CPU_TRACKER_CONFIG, else config.toml in\n"
            "$CONFIGURATION_DIRECTORY (set by systemd) or ~/.config/cpu-tracker/, else embedded\n"
            "defaults. --system reads the system service's config and state instead.\n\n"
            f"exit codes:\n{codes}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cpu-tracker {__version__}")
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file")
    parser.add_argument(
        "--system",
        dest="system_service",
        action="store_true",
        help="use the system service's configuration and state (as root: acts as the service's user)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
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
    once = sub.add_parser("once", help="run one release cycle now")
    once.add_argument("--force", action="store_true", help="skip the cooldown (never the budget)")
    status = sub.add_parser("status", help="last release, next due time, budget, paths")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    budget = sub.add_parser("budget", help="inspect or raise the privacy budget")
    bsub = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION", parser_class=_Parser)
    show = bsub.add_parser("show", help="the privacy report: what is hidden, what is spent, when it pauses")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    plan = bsub.add_parser("plan", help="cost of one release, releases left under each cap, and when")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    pending = bsub.add_parser("requests", help="budget requests that readers sent to rpc/budget/")
    pending.add_argument("--json", action="store_true", help="machine-readable output")
    approve = bsub.add_parser("approve", help="grant a pending request; the requester can read the answer")
    approve.add_argument("request_id", metavar="ID", help="the request's id, as 'budget requests' lists it")
    approve.add_argument("--reason", default="", help="a note for the requester")
    deny = bsub.add_parser("deny", help="refuse a pending request; the requester can read the answer")
    deny.add_argument("request_id", metavar="ID", help="the request's id, as 'budget requests' lists it")
    deny.add_argument("--reason", required=True, help="why (sent to the requester)")
    grant = bsub.add_parser("grant", help="raise a cap; recorded in the ledger with the reason")
    grant.add_argument("epsilon", type=_positive_float, metavar="EPSILON", help="how much to add to the cap")
    grant.add_argument("--reason", required=True, help="why (kept in the ledger's history)")
    grant.add_argument(
        "--cap",
        choices=("lifetime", "window"),
        default="lifetime",
        help="the cap to raise: all history (default) or the rolling period",
    )
    grant.add_argument("--delta", type=_probability, default=0.0, help="also raise the cap's delta by this")
    grant.add_argument(
        "--yes", action="store_true", help="do not ask before a grant that more than doubles the cap"
    )

    ledger = sub.add_parser("ledger", help="the privacy ledger itself")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION", parser_class=_Parser)
    reset = lsub.add_parser(
        "reset",
        help="retire the ledger (kept, renamed) and start a new budget; leaves a trace",
        description=(
            "Start the privacy budget over, deliberately: the old ledger is renamed (never "
            "deleted), the new one records the release already published as acknowledged, and "
            "ledger-resets.jsonl keeps who, when and why. Releases made under the old ledger "
            "still happened: whoever saw them may combine them with the new ones."
        ),
    )
    reset.add_argument("--reason", required=True, help="why (kept in the new ledger and the trace)")
    lsub.add_parser(
        "verify",
        help="check the whole ledger now (every page, schema, triggers, running counts); exit 4 if unsound",
        description=(
            "The full verification the daemon runs when it starts: SQLite's quick_check over every "
            "page, the schema, the append-only triggers, and the running release counts against "
            "the spends. Read-only; it never repairs anything."
        ),
    )

    config = sub.add_parser("config", help="check or show the effective configuration")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION", parser_class=_Parser)
    csub.add_parser("check", help="validate the configuration and the directories it names")
    init = csub.add_parser(
        "init",
        help="write a commented starter config (every key at its default, commented out)",
        description=(
            "Write a starter config.toml where cpu-tracker looks for it (--config PATH, else "
            "$CPU_TRACKER_CONFIG, else ~/.config/cpu-tracker/config.toml, or /etc/cpu-tracker/ with "
            "--system): every key, commented out at its default, with a line on what it does."
        ),
    )
    init.add_argument("--force", action="store_true", help="replace a config file that exists")
    init.add_argument("--stdout", action="store_true", help="print it instead of writing a file")
    cshow = csub.add_parser("show", help="the effective configuration, defaults filled in")
    cshow.add_argument("--json", action="store_true", help="JSON instead of TOML")
    aggregate = sub.add_parser("aggregate", help="one aggregation pass over the SyftBox tree's releases")
    aggregate.add_argument("--json", action="store_true", help="print the aggregate record")
    _add_service_parser(sub)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """A subcommand's --help opens with what it does: its line in the parent's list, unless it
    has a longer description of its own."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and lines.get(name):
                    text = str(lines[name])
                    child.description = text[0].upper() + text[1:] + "."
                _describe(child)


def _add_service_parser(sub: Any) -> None:
    from cpu_tracker_daemon.service import MANAGERS

    service = sub.add_parser("service", help="print, install or remove the systemd unit or launchd plist")
    ssub = service.add_subparsers(
        dest="service_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    actions = {
        "print": "print the unit or plist for this installation",
        "install": "write it where the service manager looks, then print the command that starts it",
        "uninstall": "remove it (state, config and logs stay)",
    }
    for name, text in actions.items():
        action = ssub.add_parser(name, help=text)
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
        if args.system_service:
            from cpu_tracker_daemon.service import system_dirs

            env = {**env, **{name: str(path) for name, path in system_dirs().items()}}
        if args.command == "service":
            return _service(args, env)
        if args.command == "config" and args.config_command == "init":  # before a config exists
            return _config_init(args, env)
        path = config_path_from(args.config, env)
        config = load_config(path, env, config_origin(args.config, env))
        return _dispatch(args, config, path, env)
    except CpuTrackerError as exc:
        first, *rest = (one_line(line) for line in exc.lines())
        print("\n".join([f"cpu-tracker: {first}", *rest]), file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): a quiet success, as for any filter
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush does not fail
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line, never a traceback with data
        print(
            f"cpu-tracker: internal error ({type(exc).__name__}: {one_line(str(exc))}); please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _dispatch(args: argparse.Namespace, config: Config, path: Path | None, env: Mapping[str, str]) -> int:
    if args.command in ("run", "once", "ledger", "aggregate") or getattr(args, "budget_command", None) in (
        "grant",
        "approve",
        "deny",
    ):
        _become_state_owner(config.paths.data_dir)
    if args.command == "run":
        from cpu_tracker_daemon.daemon import run_daemon

        run_daemon(config, path, env, log_format=args.log_format)
        return EXIT_OK
    if args.command == "once":
        return _once(config, force=args.force)
    if args.command == "aggregate":
        return _aggregate(config, as_json=args.json)
    if args.command == "status":
        return _status(config, path, as_json=args.json)
    if args.command == "ledger":
        if args.ledger_command == "verify":
            return _ledger_verify(config)
        return _ledger_reset(config, args.reason)
    if args.command == "budget":
        if args.budget_command == "grant":
            return _grant(config, args.epsilon, args.reason, args.cap, args.delta, args.yes)
        if args.budget_command == "plan":
            return _budget_plan(config, as_json=args.json)
        if args.budget_command == "requests":
            return _budget_requests(config, as_json=args.json)
        if args.budget_command in ("approve", "deny"):
            decision = "approved" if args.budget_command == "approve" else "denied"
            return _budget_decide(config, args.request_id, decision, args.reason)
        return _budget_show(config, path, as_json=args.json)
    if args.config_command == "check":
        return _config_check(config, path)
    if args.json:
        print(json.dumps(as_dict(config), indent=2))
    else:
        print(to_toml(config), end="")
    return EXIT_OK


def _become_state_owner(state_dir: Path) -> None:
    """Run as root against a service's state directory: switch to its owner before writing.

    Files root made there (the ledger's journal, outputs) would lock the service out of its
    own state. A process not running as root, or a root-owned directory, is left alone.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = state_dir.stat()
    except OSError:
        return
    if owner.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


def _once(config: Config, force: bool) -> int:
    import signal

    from cpu_tracker_daemon import signals, storage
    from cpu_tracker_daemon.daemon import configure_logging, lands_after
    from cpu_tracker_daemon.instance import claim_state
    from cpu_tracker_daemon.logs import get_logger
    from cpu_tracker_daemon.sampling import PsutilCpuSource
    from cpu_tracker_daemon.tracker import CycleLog, Tracker

    configure_logging(config)
    log = get_logger("cpu_tracker.once")
    layout = storage.layout_for(config)
    stop = signals.stop_on((signal.SIGTERM, signal.SIGINT))
    with claim_state(layout):
        tracker = Tracker(config=config, layout=layout, cpu=PsutilCpuSource(), log=log, stop=stop)
        # A member of secure aggregation waits for the network's next slot and its round.
        wait = config.schedule.every_seconds + 1 if config.secure_aggregation.enabled else 0.0
        result = tracker.cycle(force=force, max_wait=wait)
    CycleLog(log, lands_after(config))(result)
    if result.error is not None:
        print(f"cpu-tracker: {one_line(str(result.error))}", file=sys.stderr)
        return exit_code_for(result.error)
    return EXIT_OK


def _status(config: Config, path: Path | None, as_json: bool) -> int:
    from cpu_tracker_daemon import report, storage, timewords
    from cpu_tracker_daemon.instance import holder

    now = datetime.now(UTC)
    snap = report.snapshot(config, now)
    view = report.budget_view(snap)
    view["config"] = str(path) if path else "embedded defaults"
    try:
        pid = holder(storage.layout_for(config).lock)
        running: bool | None = pid is not None
    except PermissionError:  # another user's state (the system service's, without sudo)
        pid, running = None, None
    view["daemon"] = {"running": running, "pid": pid}
    if as_json:
        print(json.dumps(view, indent=2))
        return EXIT_OK
    b = view["budget"]
    life, win = b["caps"]["lifetime"], b["caps"]["window"]
    c = snap.calibration
    last = view["last_release_at"]
    lines = [
        f"cpu-tracker {__version__} (config: {view['config']})",
        "daemon:        "
        + (
            f"running (pid {pid})"
            if running
            else "unknown (its lock file is another user's; use sudo)"
            if running is None
            else "not running (start it: 'cpu-tracker run', or as a service: 'cpu-tracker service install')"
        ),
        f"last release:  {timewords.moment(datetime.fromisoformat(last), now) if last else 'never'}",
        f"next due:      {timewords.moment(snap.next_due, now)}",
        f"releases:      {view['releases']}, each {c.mechanism} epsilon {c.epsilon:.3g}"
        + (f" delta {c.delta:g}" if c.delta else "")
        + f" (privacy unit: {c.unit})",
        f"budget:        lifetime {_num(life['spent'])} of {life['limit']:g} spent, "
        f"{life['remaining']:.3g} left",
        f"               last {win['hours']:g} h {_num(win['spent'])} of {win['limit']:g} spent, "
        f"{win['remaining']:.3g} left",
    ]
    if not b["releases_possible_now"] and view["ledger_exists"]:
        lines.append(
            "               PAUSED: the next release does not fit; "
            "'cpu-tracker budget grant EPSILON --reason TEXT' resumes releases"
        )
    mode = view["mode"]
    secure = mode["name"] == "secure_aggregation"
    if secure:
        lines.append(
            f"mode:          secure aggregation: each window goes, masked, to {mode['aggregator']}'s round "
            f"(beta {mode['beta']:g}); no release of its own"
        )
    lines += [
        f"public:        {mode['rounds'] if secure else view['paths']['public']}",
        f"private:       {view['paths']['private']}",
        f"ledger:        {view['paths']['ledger']}"
        + ("" if view["ledger_exists"] else " (not created yet: the first cycle creates it)"),
    ]
    print("\n".join(lines))
    return EXIT_OK


def _num(value: float | None) -> str:
    return "unprovable" if value is None else f"{value:.3g}"


def _budget_show(config: Config, path: Path | None, as_json: bool) -> int:
    from cpu_tracker_daemon import report

    snap = report.snapshot(config, datetime.now(UTC))
    planned = report.plan(snap)
    if as_json:
        view = report.budget_view(snap)
        view["config"] = str(path) if path else "embedded defaults"
        view["plan"] = planned
        print(json.dumps(view, indent=2))
    else:
        print(report.privacy_report(snap, planned))
    return EXIT_OK


def _budget_plan(config: Config, as_json: bool) -> int:
    from cpu_tracker_daemon import report

    planned = report.plan(report.snapshot(config, datetime.now(UTC)))
    if as_json:
        print(json.dumps(planned, indent=2))
        return EXIT_OK
    p = planned["per_release"]
    lines = [
        f"one release:   {p['mechanism']}, epsilon {p['epsilon']:.4g}, delta {p['delta']:g}, "
        f"noise stddev {p['noise_stddev']:.4g} percentage points ({p['unit']} unit)",
        f"schedule:      every {planned['every_seconds']:g} s from {planned['next_due_at']}",
    ]
    for name, cap in planned["caps"].items():
        left = (
            "no limit at this schedule"
            if cap["releases_remaining"] is None
            else (f"{cap['releases_remaining']} more, then paused from {cap['exhausted_at']}")
        )
        lines.append(f"{name + ' cap:':<15}{left}")
    lines.append(
        f"overall:       {planned['releases_remaining']} more releases, until {planned['exhausted_at']}"
    )
    print("\n".join(lines))
    return EXIT_OK


def _grant(config: Config, epsilon: float, reason: str, cap: str, delta: float, yes: bool = False) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import caps_for
    from cpu_tracker_daemon.ledger import open_ledger

    if not reason.strip():
        raise UsageError("--reason must say why the budget is raised; it is kept in the ledger")
    layout = storage.layout_for(config)
    storage.prepare(layout)  # a directory that cannot be written is a config error (3), as elsewhere
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=True)
    assert ledger is not None
    with ledger:
        before = ledger.status(caps_for(config), now)
        limit = (before.lifetime if cap == "lifetime" else before.window).limit
        if epsilon > limit and not yes:
            _confirm(
                f"a grant of epsilon {epsilon:g} more than doubles the {cap} cap "
                f"(epsilon {limit:g} now, {limit + epsilon:g} after)"
            )
        ledger.grant(cap, epsilon, reason.strip(), _who(), now, delta)
        status = ledger.status(caps_for(config), now)
    chosen = status.lifetime if cap == "lifetime" else status.window
    print(
        f"granted epsilon {epsilon:g}{f' and delta {delta:g}' if delta else ''} to the {cap} cap: "
        f"now epsilon {chosen.limit:g} at delta {chosen.delta:g}, {chosen.remaining:.3g} left"
    )
    return EXIT_OK


def _confirm(what: str) -> None:
    """Ask on a terminal; refuse elsewhere (a script says --yes). Declining is a usage error."""
    if not sys.stdin.isatty():
        raise UsageError(f"{what}; pass --yes to confirm it")
    print(f"{what}. Type yes to grant it: ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise UsageError("not granted; nothing was changed")


def _ledger_verify(config: Config) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import caps_for
    from cpu_tracker_daemon.ledger import open_ledger

    layout = storage.layout_for(config)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=False, full=True)
    if ledger is None:
        print(f"no ledger at {layout.ledger} yet; the first release creates it")
        return EXIT_OK
    with ledger:
        releases = ledger.status(caps_for(config), now).releases
        print(f"ledger {layout.ledger} is sound: schema {ledger.version}, {releases} releases")
    return EXIT_OK


def _ledger_reset(config: Config, reason: str) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import caps_for
    from cpu_tracker_daemon.instance import claim_state
    from cpu_tracker_daemon.reset import reset_ledger

    if not reason.strip():
        raise UsageError("--reason must say why the budget starts over; it is kept with the new ledger")
    layout = storage.layout_for(config)
    with claim_state(layout):
        done = reset_ledger(layout, caps_for(config), reason.strip(), _who(), datetime.now(UTC))
    retired = f"the old ledger is kept as {done.retired}" if done.retired else "there was no ledger"
    acknowledged = (
        f"; release {', '.join(done.acknowledged)} in the public output is acknowledged"
        if done.acknowledged
        else ""
    )
    print(f"a new privacy ledger starts at {layout.ledger}; {retired}{acknowledged}; trace: {done.trace}")
    return EXIT_OK


def _who() -> str:
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _config_init(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cpu_tracker_daemon.config import default_config_path
    from cpu_tracker_daemon.starter import starter_toml, write_starter

    if args.stdout:
        print(starter_toml(env), end="")
        return EXIT_OK
    # Nothing there yet: where the next command will look.
    path = config_path_from(args.config, env) or default_config_path(env)
    try:
        write_starter(path, args.force, env)
    except FileExistsError:
        raise ConfigError(
            [f"config file {path} already exists; edit it, or pass --force to replace it with the starter"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"cannot write {path} ({exc.strerror or exc}); choose another --config"]) from None
    print(f"wrote {path}: every key at its default, commented out; edit it, then 'cpu-tracker config check'")
    return EXIT_OK


def _config_check(config: Config, path: Path | None) -> int:
    from cpu_tracker_daemon import storage

    layout = storage.layout_for(config)
    storage.check_creatable(layout)
    print(f"configuration OK ({path or 'embedded defaults'}); data in {layout.state_dir}")
    return EXIT_OK


def _service(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cpu_tracker_daemon import service

    scope = args.scope or ("system" if os.geteuid() == 0 else "user")
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


def _budget_requests(config: Config, as_json: bool) -> int:
    from cpu_tracker_daemon import requests, storage
    from cpu_tracker_daemon.budget import caps_for
    from cpu_tracker_daemon.ledger import Decision, open_ledger

    layout = storage.layout_for(config)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=False)
    decided: dict[str, Decision] = {}
    if ledger is not None:
        with ledger:
            decided = ledger.decisions()
    found = requests.scan(
        layout.requests_dir, config.syftbox.readers, decided, now, requests.endpoint_url(layout)
    )
    requests.remember_listed(layout, found.pending, now)
    if as_json:
        print(
            json.dumps(
                {
                    "directory": str(layout.requests_dir),
                    "pending": [r.__dict__ for r in found.pending],
                    "already_decided": [r.request_id for r in found.decided],
                    "skipped": dict(found.skipped),
                },
                indent=2,
            )
        )
        return EXIT_OK
    lines = [f"requests in {layout.requests_dir}:"]
    if not found.pending:
        lines.append("  none pending")
    for r in found.pending:
        delta = f" delta {r.delta:g}" if r.delta else ""
        lines.append(
            f"  {r.request_id}  {r.requester} asks epsilon {r.epsilon:g}{delta} for the {r.cap} cap "
            f"(file sha256 {r.digest[:12]})"
        )
        lines.append(f"      {r.created_at}: {r.reason}")
    if found.decided:
        lines.append(f"  already decided (ignored): {len(found.decided)}")
    for why, count in sorted(found.skipped.items()):
        lines.append(f"  skipped, {why}: {count}")
    if found.pending:
        lines.append("approve: cpu-tracker budget approve ID; deny: cpu-tracker budget deny ID --reason TEXT")
    print("\n".join(lines))
    return EXIT_OK


def _budget_decide(config: Config, request_id: str, decision: str, note: str) -> int:
    from cpu_tracker_daemon import requests, storage
    from cpu_tracker_daemon.budget import caps_for
    from cpu_tracker_daemon.ledger import open_ledger

    layout = storage.layout_for(config)
    storage.prepare(layout)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=True)
    assert ledger is not None
    with ledger:
        final = requests.decide(
            ledger, layout, config.syftbox.readers, request_id, decision, note, _who(), now
        )
    path = requests.write_response(layout, final)
    what = (
        f"granted epsilon {final.epsilon:g}"
        + (f" and delta {final.delta:g}" if final.delta else "")
        + f" to the {final.cap} cap"
        if decision == "approved"
        else "denied"
    )
    print(f"request {request_id} from {final.requester}: {what}; answer written to {path}")
    return EXIT_OK


def _aggregate(config: Config, as_json: bool) -> int:
    from cpu_tracker_daemon import logs, storage
    from cpu_tracker_daemon.aggregate import Aggregator, output_dir
    from cpu_tracker_daemon.dashboard import headline, secure_lines
    from cpu_tracker_daemon.instance import AGGREGATE_LOCK, InstanceLock
    from cpu_tracker_daemon.logs import get_logger

    if config.syftbox.dir is None:
        raise ConfigError(["aggregate reads the peers from [syftbox] dir; set [syftbox] dir and email"])
    # Logs to stderr, so that stdout holds only the result.
    logs.configure(config.logging.format, config.logging.level, config.logging.file, stream=sys.stderr)
    layout = storage.layout_for(config)
    storage.prepare(layout)
    with InstanceLock(layout.state_dir / AGGREGATE_LOCK):
        result = Aggregator(config, get_logger("cpu_tracker.aggregate")).run_pass()
    get_logger("cpu_tracker.aggregate").info("aggregate.finished", **result.log_fields())
    if as_json:
        print(json.dumps(result.record, indent=2))
        return EXIT_OK
    est = result.record["estimate"]
    where = output_dir(config)
    if est is None:
        print(f"no valid peer releases; skipped: {dict(result.skipped) or 'none'}; wrote {where}")
    else:
        value, detail = headline(est)
        print(f"network CPU: {value} ({detail}) from {est['peers']} peers")
        print(f"skipped: {dict(result.skipped) or 'none'}; wrote {where}")
    if result.record.get("secure") is not None:
        value, detail = secure_lines(result.record["secure"])
        print(f"secure aggregation: {value} ({detail})")
    return EXIT_OK
