"""``cpu-tracker secagg``: this member's signing key, and pinning a peer's new one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command, add_json, print_json, subcommands
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import EXIT_OK, ConfigError, UsageError, one_line
from cpu_tracker_daemon.layout import did_path


def add_parser(sub: Subcommands) -> None:
    secagg = subcommands(
        add_command(sub, "secagg", help="secure aggregation's signing key, and the peers' keys pinned"),
        dest="secagg_command",
    )
    show = add_command(
        secagg,
        "identity",
        help="this member's signing-key fingerprint (created if missing) and where its did.json is",
    )
    add_json(show)
    show.set_defaults(func=show_identity, writes_state=True)
    accept = add_command(
        secagg,
        "accept-key",
        help="pin a peer's new signing key, once its owner has confirmed the fingerprint",
        description=(
            "Read EMAIL's did.json from the SyftBox tree, show the pinned and the new key's "
            "fingerprints, and pin the new one. Without a terminal, --fingerprint must name the new "
            "key, so that nobody accepts a key blind."
        ),
    )
    accept.add_argument("email", metavar="EMAIL", help="the peer whose did.json holds a new key")
    accept.add_argument(
        "--fingerprint",
        metavar="FP",
        help="the new key's fingerprint, as its owner's 'secagg identity' prints it (without a terminal)",
    )
    accept.set_defaults(func=accept_key, writes_state=True)


def show_identity(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon.secagg import identity

    key_file = identity.identity_path(config)
    me = identity.Identity.load_or_create(key_file)
    sb = config.syftbox
    did = did_path(sb.dir, sb.email) if sb.dir is not None else None
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
    if args.json:
        view = {"fingerprint": me.fingerprint, "public_key": me.public.hex(), "key_file": str(key_file)}
        print_json({**view, "did_json": str(did) if did else None, "did_json_state": state})
        return EXIT_OK
    print(f"signing key {me.fingerprint} ({key_file}); peers confirm it with this fingerprint")
    print(f"did.json: {did} ({state})" if did is not None else f"did.json: {state}")
    return EXIT_OK


def accept_key(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    email, given = args.email, args.fingerprint
    from cpu_tracker_daemon.secagg import identity

    if config.syftbox.dir is None:
        raise ConfigError(["secagg accept-key reads the peer's did.json from [syftbox] dir; set it"])
    offered = identity.read_identity(config.syftbox.dir, email)
    if offered is None:
        raise identity.IdentityError(
            f"{did_path(config.syftbox.dir, email)} is missing or not a valid DID document; "
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
