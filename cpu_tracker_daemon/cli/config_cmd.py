"""``cpu-tracker config``: check the configuration, write a starter file, or show what is in effect."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command, add_json, print_json, subcommands
from cpu_tracker_daemon.config import Config, as_dict, config_path_from, to_toml
from cpu_tracker_daemon.errors import EXIT_OK, ConfigError


def add_parser(sub: Subcommands) -> None:
    config = subcommands(
        add_command(sub, "config", help="check or show the effective configuration"), dest="config_command"
    )
    check = add_command(config, "check", help="validate the configuration and the directories it names")
    check.set_defaults(func=check_config)
    init = add_command(
        config,
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
    init.set_defaults(func=init_config, needs_config=False)
    show = add_command(config, "show", help="the effective configuration, defaults filled in")
    add_json(show, what="JSON instead of TOML")
    show.set_defaults(func=show_config)


def check_config(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon import storage

    layout = storage.layout_for(config)
    storage.check_creatable(layout)
    print(f"configuration OK ({path or 'embedded defaults'}); data in {layout.data_dir}")
    return EXIT_OK


def show_config(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    if args.json:
        print_json(as_dict(config))
    else:
        print(to_toml(config), end="")
    return EXIT_OK


def init_config(args: argparse.Namespace, env: Env) -> int:
    """Runs before any configuration is read: there may be none yet."""
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
