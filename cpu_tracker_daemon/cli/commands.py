"""What each ``cpu-tracker`` subcommand does, one function per command: :mod:`cli` parses the
arguments, finds the function its parser named (``set_defaults(handler=...)``) and maps any
error to its exit code. Imported only once the arguments are parsed, so ``--help`` and a bad
argument never pay for the configuration, the ledger or the report.

Every handler takes ``(args, config, path, env)`` and returns an exit code; heavy imports
(APScheduler, psutil, the cryptography, diffprivlib) stay inside the handlers that need them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.config import MAXIMA, Config, as_dict, config_path_from, to_toml
from cpu_tracker_daemon.errors import EXIT_OK, ConfigError, UsageError, one_line

if TYPE_CHECKING:
    import argparse

    Args = argparse.Namespace  # or cli's plain reading of the command line, read the same way
Env = Mapping[str, str]


# -- the handlers, as the parsers name them ------------------------------------------------------


def run(args: Args, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon.daemon.loop import run_daemon

    run_daemon(config, path, env, log_format=args.log_format)
    return EXIT_OK


def once(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _once(config, force=args.force)


def aggregate(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _aggregate(config, as_json=args.json)


def status(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _status(config, path, as_json=args.json, system=args.system_service)


def ledger_verify(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _ledger_verify(config)


def ledger_reset(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _ledger_reset(config, args.reason, args.yes)


def budget_show(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _budget_show(config, path, as_json=args.json)


def budget_plan(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _budget_plan(config, as_json=args.json)


def budget_grant(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _grant(config, args.epsilon, args.reason, args.cap, args.delta, args.yes)


def budget_requests(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _budget_requests(config, as_json=args.json)


def budget_approve(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _budget_decide(config, args.request_id, "approved", args.reason)


def budget_deny(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _budget_decide(config, args.request_id, "denied", args.reason)


def config_check(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _config_check(config, path)


def config_show(args: Args, config: Config, path: Path | None, env: Env) -> int:
    if args.json:
        print(json.dumps(as_dict(config), indent=2))
    else:
        print(to_toml(config), end="")
    return EXIT_OK


def secagg_identity(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _secagg_identity(config, as_json=args.json)


def secagg_accept_key(args: Args, config: Config, path: Path | None, env: Env) -> int:
    return _secagg_accept_key(config, args.email, args.fingerprint)


# These two run before any configuration is loaded: there may be none yet, or it is not theirs.


def config_init(args: Args, env: Env) -> int:
    return _config_init(args, env)


def service(args: Args, env: Env) -> int:
    return _service(args, env)


# -- how they do it ------------------------------------------------------------------------------


def become_state_owner(data_dir: Path) -> None:
    """Run as root against a service's state directory: switch to its owner before writing.

    Files root made there (the ledger's journal, outputs) would lock the service out of its
    own state. A process not running as root, or a root-owned directory, is left alone.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = data_dir.stat()
    except OSError:
        return
    if owner.st_uid == 0:
        return
    _owner_can_run_this_python(data_dir, owner.st_uid, owner.st_gid)
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


def _owner_can_run_this_python(data_dir: Path, uid: int, gid: int) -> None:
    """The switch is for good: if the owner may not read this Python's own files (one built
    under root's home, say), every import after it fails. Look first, as that user, and raise
    ConfigError naming what it cannot read."""
    import sysconfig

    from cpu_tracker_daemon.storage import user_name

    paths = sysconfig.get_paths()
    imported_from = (paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths)
    candidates = {Path(os.__file__).parent, Path(__file__).parents[1], *map(Path, imported_from)}
    places = sorted(p for p in candidates if p.exists())  # a venv has no include/ of its own, say
    os.setegid(gid)
    os.seteuid(uid)
    try:
        unreadable = [p for p in places if not os.access(p, os.R_OK | os.X_OK, effective_ids=True)]
    finally:
        os.seteuid(0)
        os.setegid(0)
    if unreadable:
        name = user_name(uid)
        raise ConfigError(
            [
                f"paths.data_dir {data_dir} belongs to {name}, and this command writes there as {name}, "
                f"who may not read this Python's files ({unreadable[0]}); run it as {name} with a Python "
                f"{name} can read"
            ]
        )


def _once(config: Config, force: bool) -> int:
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
        result = tracker.cycle(force=force, max_wait=once_wait(config))
    CycleLog(log, lands_after(config))(result)
    if result.error is not None:
        print(f"cpu-tracker: {one_line(str(result.error))}", file=sys.stderr)
        return result.error.exit_code
    return EXIT_OK


def _status(config: Config, path: Path | None, as_json: bool, system: bool = False) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.cli import report
    from cpu_tracker_daemon.daemon.instance import holder

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
    print(report.status_text(view, snap, now, __version__, system))
    return EXIT_OK


def _budget_show(config: Config, path: Path | None, as_json: bool) -> int:
    from cpu_tracker_daemon.cli import report

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
    from cpu_tracker_daemon.cli import report

    planned = report.plan(report.snapshot(config, datetime.now(UTC)))
    if as_json:
        print(json.dumps(planned, indent=2))
        return EXIT_OK
    print(report.plan_text(planned))
    return EXIT_OK


def _grant(config: Config, epsilon: float, reason: str, cap: str, delta: float, yes: bool = False) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import open_ledger
    from cpu_tracker_daemon.cli.report import amount

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
        most = MAXIMA[f"budget.{cap}_epsilon"]  # a cap past it is no cap, and its sums overflow
        if limit + epsilon > most:
            raise UsageError(
                f"that grant would raise the {cap} cap to epsilon {limit + epsilon:g}, past the most a cap "
                f"may be ({most:,}); grant at most {max(most - limit, 0):g}"
            )
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
        f"now epsilon {chosen.limit:g} at delta {chosen.delta:g}, {amount(chosen.remaining)} left"
    )
    return EXIT_OK


def _confirm(what: str, act: str = "grant it", declined: str = "not granted") -> None:
    """Ask on a terminal; refuse elsewhere (a script says --yes). Declining is a usage error."""
    if not sys.stdin.isatty():
        raise UsageError(f"{what}; pass --yes to confirm it")
    print(f"{what}. Type yes to {act}: ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise UsageError(f"{declined}; nothing was changed")


def _ledger_verify(config: Config) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import open_ledger

    layout = storage.layout_for(config)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=False, full=True)
    if ledger is None:
        print(f"no ledger at {layout.ledger} yet; the first release creates it")
        return EXIT_OK
    with ledger:
        releases = ledger.status(caps_for(config), now).releases
        print(
            f"ledger {layout.ledger} is sound: schema {ledger.version}, "
            f"{releases} release{'' if releases == 1 else 's'}"
        )
    return EXIT_OK


def _ledger_reset(config: Config, reason: str, yes: bool = False) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.reset import reset_ledger
    from cpu_tracker_daemon.daemon.instance import claim_state

    if not reason.strip():
        raise UsageError("--reason must say why the budget starts over; it is kept with the new ledger")
    layout = storage.layout_for(config)
    if not yes:
        _confirm(
            f"this retires the privacy ledger {layout.ledger} (kept, renamed) and starts the budget over",
            act="start over",
            declined="not reset",
        )
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
        import getpass  # only to name who granted

        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _config_init(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cpu_tracker_daemon.cli.starter import starter_toml, write_starter
    from cpu_tracker_daemon.config import default_config_path

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
    print(f"configuration OK ({path or 'embedded defaults'}); data in {layout.data_dir}")
    return EXIT_OK


def _service(args: argparse.Namespace, env: Mapping[str, str]) -> int:
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


def _budget_requests(config: Config, as_json: bool) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import requests as budget_requests
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import Decision, open_ledger

    layout = storage.layout_for(config)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=False)
    decided: dict[str, Decision] = {}
    if ledger is not None:
        with ledger:
            decided = ledger.decisions()
    found = budget_requests.scan(
        layout.requests_dir, config.syftbox.readers, decided, now, budget_requests.endpoint_url(layout)
    )
    budget_requests.remember_listed(layout, found.pending, now)
    if as_json:
        print(
            json.dumps(
                {
                    "directory": str(layout.requests_dir),
                    "pending": [r.__dict__ for r in found.pending],
                    "already_decided": [r.request_id for r in found.decided],
                    "skipped": dict(found.skipped),
                    "skipped_from": dict(found.skipped_from),
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
    for sender, count in sorted(found.skipped_from.items()):
        lines.append(f"  skipped from {sender}: {count} files")
    if found.pending:
        lines.append("approve: cpu-tracker budget approve ID; deny: cpu-tracker budget deny ID --reason TEXT")
    print("\n".join(lines))
    return EXIT_OK


def _budget_decide(config: Config, request_id: str, decision: str, note: str) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import requests as budget_requests
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import open_ledger

    layout = storage.layout_for(config)
    storage.prepare(layout)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=True)
    assert ledger is not None
    with ledger:
        final = budget_requests.decide(
            ledger, layout, config.syftbox.readers, request_id, decision, note, _who(), now
        )
    path = budget_requests.write_response(layout, final)
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
    if as_json:
        print(json.dumps(result.record, indent=2))
        return EXIT_OK
    print("\n".join(summary_lines(result.record, output_dir(config))))
    return EXIT_OK


def _secagg_identity(config: Config, as_json: bool) -> int:
    from cpu_tracker_daemon.secagg import identity

    key_file = identity.identity_path(config)
    me = identity.Identity.load_or_create(key_file)
    sb = config.syftbox
    did = identity.did_path(sb.dir, sb.email) if sb.dir is not None else None
    published = identity.read_identity(sb.dir, sb.email) if sb.dir is not None else None
    state = (
        "no [syftbox] dir: nothing to publish"
        if did is None
        else "published"
        if published == me.public
        else "not published yet"
        if published is None
        else f"holds another key, {identity.fingerprint(published)}"
    )
    if as_json:
        view = {"fingerprint": me.fingerprint, "public_key": me.public.hex(), "key_file": str(key_file)}
        print(json.dumps({**view, "did_json": str(did) if did else None, "did_json_state": state}, indent=2))
        return EXIT_OK
    print(f"signing key {me.fingerprint} ({key_file}); peers confirm it with this fingerprint")
    print(f"did.json: {did} ({state})" if did is not None else f"did.json: {state}")
    return EXIT_OK


def _secagg_accept_key(config: Config, email: str, given: str | None) -> int:
    from cpu_tracker_daemon.secagg import identity

    if config.syftbox.dir is None:
        raise ConfigError(["secagg accept-key reads the peer's did.json from [syftbox] dir; set it"])
    offered = identity.read_identity(config.syftbox.dir, email)
    if offered is None:
        raise identity.IdentityError(
            f"{identity.did_path(config.syftbox.dir, email)} is missing or not a valid DID document; "
            "nothing was changed",
            "ask its owner to publish one ('cpu-tracker secagg identity' says where), then try again",
        )
    pins = identity.Pins.load(identity.pins_path(config))
    old, new = pins.get(email), identity.fingerprint(offered)
    if old == offered:
        print(f"{email} is already pinned to {new}; nothing to accept")
        return EXIT_OK
    print(f"{email}: pinned {identity.fingerprint(old) if old else 'nothing yet'}, its did.json holds {new}")
    if given is not None and not identity.fingerprint_matches(offered, given):
        raise identity.IdentityError(
            f"--fingerprint {one_line(given)} is not the key {email}'s did.json holds ({new}); nothing "
            "was changed",
            "confirm the fingerprint with its owner ('cpu-tracker secagg identity' on their machine)",
        )
    if given is None and not sys.stdin.isatty():
        raise UsageError(f"pass --fingerprint {new} once {email}'s owner confirmed it; no key is taken blind")
    if given is None:
        print(f"Has {email}'s owner confirmed {new}? Type yes to accept it: ", end="", file=sys.stderr)
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip().lower() != "yes":
            raise UsageError("not accepted; nothing was changed")
    pins.accept(email, offered)
    print(f"accepted: {email} is pinned to {new}")
    return EXIT_OK
