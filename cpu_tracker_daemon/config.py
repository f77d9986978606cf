"""The configuration: frozen values, embedded defaults, and a loader that reports every problem
at once."""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cpu_tracker_daemon import layout
from cpu_tracker_daemon.errors import ConfigError
from cpu_tracker_daemon.privacy.mechanisms import DEFAULT_EPSILON, PrivacyConfig, calibrate, check_privacy

if TYPE_CHECKING:
    from typing import Any

APP_NAME = "cpu-tracker"
LOG_FORMATS = ("auto", "json", "console")  # auto: console on a terminal, JSON elsewhere
CONFIG_ENV = "CPU_TRACKER_CONFIG"
CONFIG_FILE = "config.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_READERS = ("aggregator@openmined.org",)
# Secure aggregation: the fractions of a round that may be declared absent and that may collude,
# counted apart (a faked dropout must not eat into the colluders' margin), and together below 1.
DEFAULT_BETA_DROPPED, DEFAULT_BETA_COLLUDING, MAX_BETA = 0.2, 0.2, 0.5
DEFAULT_LOCAL_EPSILON = 5.0  # the floor a member's own noise keeps under any roster
MIN_LOCAL_EPSILON, MAX_LOCAL_EPSILON = 0.01, 50.0
DEFAULT_MIN_MEMBERS = 3
ROUND_STEPS = 14  # a secure round's steps from its start to the last reveal collected, and one spare
MAX_ROUND_MEMBERS = 100_000
_EMAIL = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"  # compiled on first use: most configs name none
MAX_EMAIL = 254  # the longest address SMTP carries; a datasite's folder is named by it
MAX_CONFIG_BYTES = 16 << 20  # a 100,000-member roster of everyday addresses is about 3 MB
MAX_PATH_BYTES, MAX_NAME_BYTES = 1024, 255  # macOS's PATH_MAX (the files below it need room); NAME_MAX
YEAR = 365 * 86_400
# The most each number may be: what a real network needs and no more, so that no arithmetic on a
# value the config accepted overflows (docs/configuration.md states each).
MAXIMA: dict[str, int] = {
    "sampling.interval_seconds": 86_400,
    "schedule.every_seconds": YEAR,
    "budget.lifetime_epsilon": 1_000_000_000,
    "budget.window_epsilon": 1_000_000_000,
    "budget.window_hours": 8_760,
    "aggregator.every_seconds": YEAR,
    "aggregator.max_age_seconds": YEAR,
    "aggregator.max_weight_ratio": 1_000,
    "secure_aggregation.step_seconds": 86_400,
}
# The most addresses each list may name.
MAX_ITEMS: dict[str, int] = {"syftbox.readers": 1_000, "secure_aggregation.members": MAX_ROUND_MEMBERS}


@dataclass(frozen=True, slots=True)
class PathsConfig:
    data_dir: Path


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    samples: int = 50
    interval_seconds: float = 1.0

    @property
    def window_seconds(self) -> float:
        return self.samples * self.interval_seconds


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    every_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    lifetime_epsilon: float = 100.0
    lifetime_delta: float = 1e-6
    window_epsilon: float = 12.0
    window_delta: float = 1e-6
    window_hours: float = 24.0


@dataclass(frozen=True, slots=True)
class SyftboxConfig:
    dir: Path | None = None
    email: str = ""
    readers: tuple[str, ...] = DEFAULT_READERS
    layout: str = layout.AUTO  # the tree's shape: the folder's own (auto), or pinned to one

    @property
    def enabled(self) -> bool:
        return self.dir is not None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str = "auto"
    level: str = "info"
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """The network view: read every peer's release in the SyftBox tree and publish the estimate."""

    enabled: bool = False
    every_seconds: float = 3600.0
    max_age_seconds: float = 7200.0
    publish_peers: bool = False
    history_length: int = 720
    max_weight_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class SecureAggregationConfig:
    """Secure aggregation (docs/secure-aggregation.md): ``enabled`` makes this member take part
    in the rounds ``aggregator`` runs, instead of publishing its own noisy release; ``members``
    makes this daemon the aggregator that runs them, for those members."""

    enabled: bool = False
    aggregator: str = ""
    beta_dropped: float = DEFAULT_BETA_DROPPED
    beta_colluding: float = DEFAULT_BETA_COLLUDING
    local_epsilon: float = DEFAULT_LOCAL_EPSILON
    min_members: int = DEFAULT_MIN_MEMBERS
    step_seconds: float = 10.0
    members: tuple[str, ...] = ()

    @property
    def runs_rounds(self) -> bool:
        return bool(self.members)


@dataclass(frozen=True, slots=True)
class PrometheusConfig:
    textfile_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    paths: PathsConfig
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    syftbox: SyftboxConfig = field(default_factory=SyftboxConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    source: Path | None = None


# The schema: section -> key -> kind (int, float, str, path, emails); defaults live in the records above.
KEYS: dict[str, dict[str, str]] = {
    "paths": {"data_dir": "path"},
    "sampling": {"samples": "int", "interval_seconds": "float"},
    "schedule": {"every_seconds": "float"},
    "privacy": {
        "unit": "str",
        "mechanism": "str",
        "epsilon": "float",
        "sigma": "float",
        "delta": "float",
        "lower": "float",
        "upper": "float",
    },
    "budget": {
        "lifetime_epsilon": "float",
        "lifetime_delta": "float",
        "window_epsilon": "float",
        "window_delta": "float",
        "window_hours": "float",
    },
    "syftbox": {"dir": "path", "email": "str", "readers": "emails", "layout": "str"},
    "logging": {"format": "str", "level": "str", "file": "path"},
    "aggregator": {
        "enabled": "bool",
        "every_seconds": "float",
        "max_age_seconds": "float",
        "publish_peers": "bool",
        "history_length": "int",
        "max_weight_ratio": "float",
    },
    "prometheus": {"textfile_dir": "path"},
    "secure_aggregation": {
        "enabled": "bool",
        "aggregator": "str",
        "beta_dropped": "float",
        "beta_colluding": "float",
        "local_epsilon": "float",
        "min_members": "int",
        "step_seconds": "float",
        "members": "emails",
    },
}
_KIND_HINT = {
    "int": "a whole number",
    "float": "a number",
    "str": "a quoted string",
    "path": "a quoted path",
    "emails": "a list of quoted email addresses",
    "bool": "true or false",
}


def default_data_dir(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    """Where state and outputs go when ``paths.data_dir`` is not set.

    systemd's ``$STATE_DIRECTORY`` first (its first entry), then the platform's per-user data
    directory: ``~/Library/Application Support`` on macOS, ``$XDG_DATA_HOME`` or
    ``~/.local/share`` elsewhere.
    """
    state = environ.get("STATE_DIRECTORY", "")
    if state:
        return Path(state.split(":")[0])
    home = Path(environ.get("HOME") or Path.home())
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    xdg = environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return base / APP_NAME


def user_config_dir(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Path:
    """The per-user configuration directory: ``$XDG_CONFIG_HOME/cpu-tracker`` or ``~/.config/...``."""
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_NAME
    return (home or Path(environ.get("HOME") or Path.home())) / ".config" / APP_NAME


def config_path_from(cli_path: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The config file to read, or None for the embedded defaults.

    ``--config``, else ``$CPU_TRACKER_CONFIG``, else ``config.toml`` in systemd's
    ``$CONFIGURATION_DIRECTORY`` (the service's) or, outside a service, in
    ``$XDG_CONFIG_HOME/cpu-tracker`` (``~/.config/cpu-tracker``) if that file exists.
    """
    if cli_path:
        return Path(cli_path)
    env = environ.get(CONFIG_ENV, "")
    if env:
        return Path(env)
    candidate = default_config_path(environ)
    return candidate if os.path.lexists(candidate) else None


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where a config file is looked for when none is named: ``config.toml`` in systemd's
    ``$CONFIGURATION_DIRECTORY``, else in the per-user configuration directory."""
    service_dir = environ.get("CONFIGURATION_DIRECTORY", "")
    directory = Path(service_dir.split(":")[0]) if service_dir else user_config_dir(environ)
    return directory / CONFIG_FILE


def load_config(
    path: Path | None,
    environ: Mapping[str, str] = os.environ,
    origin: str = "--config",
) -> Config:
    """Read ``path`` (or nothing) over the embedded defaults; raise ConfigError listing all problems.
    ``origin`` is where the path came from (see :func:`config_origin`), for the messages."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path, origin)
    return parse_config(raw, source=path, environ=environ)


def config_origin(cli_path: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """Who named the config file :func:`config_path_from` chose: ``--config``, the environment
    variable, or the default location."""
    if cli_path:
        return "--config"
    return f"${CONFIG_ENV}" if environ.get(CONFIG_ENV, "") else "the default location"


def _read_toml(path: Path, origin: str = "--config") -> dict[str, Any]:
    named = f"config file {path}" if origin == "--config" else f"config file {path} (from {origin})"
    drop = f"unset {CONFIG_ENV}" if origin.startswith("$") else "drop --config"
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError([f"{named} does not exist; create it or {drop}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{named} is a directory; name a TOML file"]) from None
    except NotADirectoryError:
        blocker = _file_above(path)
        raise ConfigError(
            [f"{named} cannot be read: {blocker} is a file, not a directory; fix the path or {drop}"]
        ) from None
    except NotRegularFileError as exc:
        if not _is_dev_null(path):  # a FIFO would wait for a writer, a device read without end
            odd = f"{named} is {exc.kind}, not a regular file"
            raise ConfigError([f"{odd}; name a TOML file or {drop}"]) from None
        data = b""  # --config /dev/null: no file, the embedded defaults
    except FileTooLargeError:
        big = f"{named} is larger than {MAX_CONFIG_BYTES >> 20} MiB, far more than any configuration"
        raise ConfigError([f"{big}; name the right file or {drop}"]) from None
    except OSError as exc:
        fix = "fix its permissions" if exc.errno in (errno.EACCES, errno.EPERM) else f"fix the path or {drop}"
        raise ConfigError([f"{named} cannot be read ({exc.strerror or exc}); {fix}"]) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{named} is not UTF-8 text; save it as UTF-8 TOML"]) from None
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, or what tomllib cannot hold:
        # an integer past Python's digit limit, tables nested past the recursion limit
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError([f"{named} is not valid TOML ({why}); fix the syntax there"]) from None


class NotRegularFileError(OSError):
    """A FIFO, a device, a socket where a file was expected; ``kind`` says which, as "a FIFO"."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"{kind}, not a regular file")


class FileTooLargeError(OSError):
    """A file larger than its reader's cap."""


def kind_of(mode: int) -> str:
    """What a file of ``mode`` is, as a message names it: "a FIFO", "a character device"..."""
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "a socket" if stat.S_ISSOCK(mode) else "not a file")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``max_bytes``.

    A FIFO, a device or a socket is refused before it is opened, so nothing waits for a writer
    or reads without end; raises OSError (:class:`NotRegularFileError`, :class:`FileTooLargeError`,
    IsADirectoryError, FileNotFoundError...)."""
    info = path.stat()
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFileError(kind_of(info.st_mode))
    if info.st_size > max_bytes:
        raise FileTooLargeError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    # Non-blocking: swapped for a FIFO since the stat, the open still returns at once.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotRegularFileError(kind_of(opened.st_mode))
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise FileTooLargeError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    return b"".join(chunks)


def _is_dev_null(path: Path) -> bool:
    try:
        return os.path.samestat(path.stat(), Path(os.devnull).stat())
    except OSError:
        return False


def _file_above(path: Path) -> Path:
    """The first parent of ``path`` that exists and is not a directory."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path.parent


SYFTBOX_CLIENT_CONFIG_ENV = "SYFTBOX_CLIENT_CONFIG_PATH"  # set by the SyftBox client for its apps
MAX_CLIENT_CONFIG_BYTES = 1 << 20  # the client's config.json is a few hundred bytes


def _with_client_datasite(table: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``[syftbox]`` as given; when it sets neither dir nor email and the SyftBox client runs us
    as an app, the datasite and email of that client's config (zero configuration)."""
    where = environ.get(SYFTBOX_CLIENT_CONFIG_ENV, "")
    if not where or "dir" in table or "email" in table:
        return table
    path = Path(where)
    fix = "fix that file, or set [syftbox] dir and email in cpu-tracker's config file"
    try:
        import json  # only when the SyftBox client runs us as an app

        client = json.loads(read_regular_file(path, MAX_CLIENT_CONFIG_BYTES).decode("utf-8"))
    except NotRegularFileError as exc:
        odd = f"the SyftBox client config {path} is {exc.kind}, not a regular file"
        raise ConfigError([f"{odd}; {fix}"]) from None
    except FileTooLargeError:
        raise ConfigError(
            [f"the SyftBox client config {path} is larger than {MAX_CLIENT_CONFIG_BYTES >> 10} KiB; {fix}"]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [f"the SyftBox client config {path} cannot be read ({exc.strerror}); {fix}"]
        ) from None
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the recursion limit
        raise ConfigError([f"the SyftBox client config {path} is not JSON; {fix}"]) from None
    data_dir = client.get("data_dir") if isinstance(client, dict) else None
    email = client.get("email") if isinstance(client, dict) else None
    if not isinstance(data_dir, str) or not data_dir or not isinstance(email, str) or not email:
        raise ConfigError([f"the SyftBox client config {path} names no data_dir and email; {fix}"])
    return {**table, "dir": Path(data_dir).expanduser(), "email": email}


def parse_config(
    raw: Mapping[str, Any], source: Path | None = None, environ: Mapping[str, str] = os.environ
) -> Config:
    """Validate a parsed TOML document and build the Config; raise ConfigError listing all problems."""
    problems: list[str] = []
    values: dict[str, dict[str, Any]] = {section: {} for section in KEYS}
    base = source.parent if source is not None else Path.cwd()
    logs_dir = environ.get("LOGS_DIRECTORY", "")

    for section, table in raw.items():
        if section not in KEYS:
            problems.append(_unknown(section, list(KEYS), "section"))
            continue
        if not isinstance(table, dict):
            problems.append(f"[{section}] must be a table; write it as a [{section}] header")
            continue
        for key, value in table.items():
            kinds = KEYS[section]
            name = f"{section}.{key}"
            if key not in kinds:
                problems.append(_unknown(name, [f"{section}.{k}" for k in kinds]))
                continue
            # Under a service manager a relative log file goes to its logs directory.
            where = Path(logs_dir.split(":")[0]) if name == "logging.file" and logs_dir else base
            converted, problem = _convert(name, kinds[key], value, where)
            if problem:
                problems.append(problem)
            else:
                values[section][key] = converted

    data_dir = values["paths"].pop("data_dir", None)
    if data_dir is None:  # from $STATE_DIRECTORY, $XDG_DATA_HOME or $HOME, none of them checked yet
        data_dir = default_data_dir(environ)
        too_long = _too_long("paths.data_dir (by default, from the environment)", data_dir)
        problems.extend([f"{too_long}; or set paths.data_dir"] if too_long else [])
    # The values that are well-formed are checked too, so one run reports every problem.
    syftbox = values["syftbox"]
    try:
        syftbox = _with_client_datasite(syftbox, environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        config = Config(
            paths=PathsConfig(data_dir=data_dir),
            sampling=SamplingConfig(**values["sampling"]),
            schedule=ScheduleConfig(**values["schedule"]),
            privacy=PrivacyConfig(**values["privacy"]),
            budget=BudgetConfig(**values["budget"]),
            syftbox=SyftboxConfig(**syftbox),
            logging=LoggingConfig(**values["logging"]),
            aggregator=AggregatorConfig(**values["aggregator"]),
            prometheus=PrometheusConfig(**values["prometheus"]),
            secure_aggregation=SecureAggregationConfig(**values["secure_aggregation"]),
            source=source,
        )
    except TypeError as exc:  # pragma: no cover - the schema and the records agree
        raise ConfigError([str(exc)]) from None
    privacy = config.privacy
    if privacy.epsilon is not None and privacy.sigma is not None:
        problems.append("set privacy.epsilon or privacy.sigma, not both; remove one of them")
        privacy = replace(privacy, sigma=None)
    if privacy.epsilon is None and privacy.sigma is None:
        privacy = replace(privacy, epsilon=DEFAULT_EPSILON)
    config = replace(config, privacy=privacy)
    problems.extend(_check(config))
    if problems:
        raise ConfigError(problems)
    return config


_RETIRED = {
    "secure_aggregation.beta": (
        "secure_aggregation.beta is now two keys; replace it with beta_dropped and beta_colluding "
        "(the fractions that may be declared absent and that may collude, counted apart)"
    ),
}


def _unknown(name: str, known: list[str], what: str = "key") -> str:
    if name in _RETIRED:
        return _RETIRED[name]
    import difflib  # only for a misspelt key

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known)
    return f"unknown {what} {name}; remove it ({hint})"


def _convert(name: str, kind: str, value: Any, base: Path) -> tuple[Any, str]:
    def wrong() -> tuple[None, str]:
        given = f"{type(value).__name__} {_show(value)}"
        return None, f"{name} must be {_KIND_HINT[kind]}, not {given}; fix its type"

    if kind == "bool":
        return (value, "") if isinstance(value, bool) else wrong()
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return wrong()
        return value, ""
    if kind == "float":
        return _convert_float(name, value) if not isinstance(value, bool) else wrong()
    if kind == "str":
        return (value, "") if isinstance(value, str) else wrong()
    if kind == "path":
        return _convert_path(name, value, base) if isinstance(value, str) else wrong()
    # emails
    if not isinstance(value, list):
        return wrong()
    most = MAX_ITEMS[name]
    if len(value) > most:
        return None, (
            f"{name} lists {len(value):,} addresses; at most {most:,} are allowed (a real network needs "
            "no more): shorten the list"
        )
    if not all(isinstance(v, str) for v in value):
        return wrong()
    bad = [v for v in value if not is_email(v)]
    if bad:
        shown = ", ".join(_show(v) for v in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return None, f"{name} has invalid email addresses ({shown}); give addresses like name@example.org"
    return tuple(value), ""


def _convert_float(name: str, value: Any) -> tuple[float | None, str]:
    if not isinstance(value, int | float):
        return None, f"{name} must be a number, not {type(value).__name__} {_show(value)}; fix its type"
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        return None, f"{name} must be a finite number, not {_show(value)}; give a finite value"
    most = MAXIMA.get(name)
    if most is not None and number > most:
        return None, f"{name} must be at most {most:,} (got {number:g}); lower it"
    return number, ""


def _convert_path(name: str, value: str, base: Path) -> tuple[Path | None, str]:
    if not value:
        return None, ""
    if "\0" in value:
        return None, f"{name} contains a NUL character ({_show(value)}); no path can: remove it"
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~name" of a user this machine does not know
        return None, f"{name} names the home of an unknown user ({_show(value)}); give an absolute path"
    path = path if path.is_absolute() else base / path
    problem = _too_long(name, path)
    return (None, problem) if problem else (path, "")


def _too_long(name: str, path: Path) -> str:
    """The problem with a path no file system takes, or ""."""
    encoded = os.fsencode(path)
    longest = max(len(part) for part in encoded.split(b"/"))
    if len(encoded) <= MAX_PATH_BYTES and longest <= MAX_NAME_BYTES:
        return ""
    return (
        f"{name} is too long ({_show(str(path))}: {len(encoded):,} bytes, the longest name in it "
        f"{longest}); give a path of at most {MAX_PATH_BYTES} bytes, each name at most {MAX_NAME_BYTES}"
    )


def is_email(text: str) -> bool:
    """Whether ``text`` is an email address a datasite may have (and name a folder by)."""
    return len(text) <= MAX_EMAIL and re.match(_EMAIL, text) is not None


def _show(value: object) -> str:
    """``value`` as a message shows it: its repr, cut short (a config may hold megabytes)."""
    import reprlib  # only for a problem to report

    shown = reprlib.Repr()
    shown.maxstring, shown.maxother, shown.maxlong, shown.maxlist, shown.maxdict = 60, 60, 40, 3, 3
    text = shown.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _positive(problems: list[str], name: str, value: float) -> None:
    if value <= 0:
        problems.append(f"{name} must be greater than 0 (got {value:g}); set a positive value")


def _check(config: Config) -> list[str]:
    """Cross-field and range checks; each problem names the key and the fix."""
    problems: list[str] = []
    s, p, b, sched = config.sampling, config.privacy, config.budget, config.schedule

    def positive(name: str, value: float) -> None:
        _positive(problems, name, value)

    if s.samples < 1:
        problems.append(f"sampling.samples must be at least 1 (got {s.samples}); set e.g. 50")
    elif s.samples > 100_000:
        problems.append(f"sampling.samples must be at most 100000 (got {s.samples}); lower it")
    positive("sampling.interval_seconds", s.interval_seconds)
    positive("schedule.every_seconds", sched.every_seconds)
    if s.samples >= 1 and s.interval_seconds > 0 and sched.every_seconds < s.window_seconds:
        problems.append(
            f"schedule.every_seconds ({sched.every_seconds:g}) is shorter than the sampling window "
            f"({s.window_seconds:g} s = samples x interval_seconds); raise every_seconds or "
            "shorten the window"
        )
    problems.extend(check_privacy(p))
    if p.mechanism != "gaussian" and not 0 <= p.delta < 1:  # the Gaussian's own check says (0, 1)
        problems.append(f"privacy.delta must be in [0, 1) (got {p.delta:g}); use e.g. 1e-6")
    positive("budget.lifetime_epsilon", b.lifetime_epsilon)
    positive("budget.window_epsilon", b.window_epsilon)
    positive("budget.window_hours", b.window_hours)
    for name in ("lifetime_delta", "window_delta"):
        if not 0 <= getattr(b, name) < 1:
            problems.append(f"budget.{name} must be in [0, 1) (got {getattr(b, name):g}); use e.g. 1e-6")
    if not problems:
        problems.extend(_one_release_fits(config))
    problems.extend(_check_aggregator(config))
    problems.extend(_check_secure_aggregation(config))
    sb = config.syftbox
    if (sb.dir is None) != (not sb.email):
        problems.append("syftbox.dir and syftbox.email go together; set both or neither")
    if sb.email and not is_email(sb.email):
        problems.append(f"syftbox.email {_show(sb.email)} is not an email address; give your datasite's")
    problems.extend(_check_layout(sb))
    log_file = config.logging.file
    if log_file is not None and log_file.is_dir():
        problems.append(
            f"logging.file {log_file} is a directory; name a file in it, e.g. {log_file / 'cpu-tracker.log'}"
        )
    if config.logging.format not in LOG_FORMATS:
        problems.append(
            f"logging.format must be one of {', '.join(LOG_FORMATS)} (got {_show(config.logging.format)})"
        )
    if config.logging.level not in LOG_LEVELS:
        problems.append(
            f"logging.level must be one of {', '.join(LOG_LEVELS)} (got {_show(config.logging.level)})"
        )
    return problems


def _check_layout(sb: SyftboxConfig) -> list[str]:
    """``syftbox.layout``: one of :data:`layout.LAYOUTS`; pinned, the folder must be of that shape,
    so a wrong ``dir`` never gets a tree of the other shape written into it."""
    if sb.layout not in layout.LAYOUTS:
        return [f"syftbox.layout must be one of {', '.join(layout.LAYOUTS)} (got {_show(sb.layout)})"]
    if sb.dir is None or sb.layout == layout.AUTO:
        return []
    found = layout.engine(sb.dir)
    if found == sb.layout:
        return []
    if sb.layout == layout.PYSYFT:
        return [
            f'syftbox.layout is "pysyft" but {sb.dir} has no {layout.PYSYFT_MARKER}, which syft '
            'writes when it logs in: log in with syft first, check syftbox.dir, or set layout = "auto"'
        ]
    return [
        f'syftbox.layout is "syftbox" but {sb.dir} is a PySyft 0.10 folder (it holds '
        f'{layout.PYSYFT_MARKER}): set layout = "pysyft" or "auto", or check syftbox.dir'
    ]


def _check_aggregator(config: Config) -> list[str]:
    agg = config.aggregator
    problems = [
        f"aggregator.{name} must be greater than 0 (got {value:g}); set a positive value"
        for name, value in (("every_seconds", agg.every_seconds), ("max_age_seconds", agg.max_age_seconds))
        if value <= 0
    ]
    if not 1 <= agg.history_length <= 100_000:
        problems.append(f"aggregator.history_length must be 1 to 100000 (got {agg.history_length}); e.g. 720")
    if agg.max_weight_ratio < 1:
        problems.append(
            f"aggregator.max_weight_ratio must be at least 1 (got {agg.max_weight_ratio:g}); e.g. 1"
        )
    if agg.enabled and config.syftbox.dir is None:
        problems.append("aggregator.enabled needs [syftbox] dir and email: the peers are read from that tree")
    return problems


def _check_secure_aggregation(config: Config) -> list[str]:
    sa = config.secure_aggregation
    problems: list[str] = []
    for name, beta in (("beta_dropped", sa.beta_dropped), ("beta_colluding", sa.beta_colluding)):
        if not 0 <= beta <= MAX_BETA:
            problems.append(
                f"secure_aggregation.{name} must be in [0, {MAX_BETA:g}] (got {beta:g}); 0.2 allows a "
                "fifth of a round's members"
            )
    betas_in_range = 0 <= sa.beta_dropped <= MAX_BETA and 0 <= sa.beta_colluding <= MAX_BETA
    if betas_in_range and sa.beta_dropped + sa.beta_colluding >= 1 - 1e-9:
        problems.append(
            "secure_aggregation.beta_dropped and beta_colluding must add up to less than 1 "
            f"(got {sa.beta_dropped:g} + {sa.beta_colluding:g}): someone honest must be left to add noise"
        )
    if not MIN_LOCAL_EPSILON <= sa.local_epsilon <= MAX_LOCAL_EPSILON:
        problems.append(
            f"secure_aggregation.local_epsilon must be in [{MIN_LOCAL_EPSILON:g}, {MAX_LOCAL_EPSILON:g}] "
            f"(got {sa.local_epsilon:g}); it is the most a cheating aggregator can learn of one window"
        )
    if not 1 <= sa.min_members <= MAX_ROUND_MEMBERS:
        problems.append(
            f"secure_aggregation.min_members must be in [1, {MAX_ROUND_MEMBERS}] (got {sa.min_members}); "
            "a member refuses a smaller roster"
        )
    if not sa.step_seconds > 0:
        problems.append(
            f"secure_aggregation.step_seconds must be greater than 0 (got {sa.step_seconds:g}); "
            "make it longer than the SyftBox sync delay, e.g. 10"
        )
    if not (sa.enabled or sa.runs_rounds):
        return problems
    if config.syftbox.dir is None:
        problems.append("[secure_aggregation] needs [syftbox] dir and email: the rounds run over that tree")
    if sa.enabled and not sa.aggregator:
        problems.append(
            "secure_aggregation.enabled needs secure_aggregation.aggregator: the email that runs the rounds"
        )
    elif sa.aggregator and not is_email(sa.aggregator):
        problems.append(f"secure_aggregation.aggregator {_show(sa.aggregator)} is not an email address")
    if sa.enabled and config.privacy.mechanism != "laplace":
        problems.append(
            'secure_aggregation.enabled needs privacy.mechanism = "laplace": the rounds add discrete '
            "Laplace noise in shares"
        )
    if sa.enabled and config.privacy.unit != "window":
        problems.append('secure_aggregation.enabled needs privacy.unit = "window"')
    if len(sa.members) > MAX_ROUND_MEMBERS:
        problems.append(
            f"secure_aggregation.members lists {len(sa.members)}; "
            f"at most {MAX_ROUND_MEMBERS} take part in a round"
        )
    window = config.sampling.window_seconds
    need = window + ROUND_STEPS * sa.step_seconds + 1
    if sa.step_seconds > 0 and config.schedule.every_seconds < need:
        problems.append(
            f"schedule.every_seconds ({config.schedule.every_seconds:g}) leaves no room for a secure round: "
            f"the window ({window:g} s) and {ROUND_STEPS} steps of {sa.step_seconds:g} s need {need:g}; "
            "lengthen the schedule or shorten secure_aggregation.step_seconds"
        )
    return problems


def _one_release_fits(config: Config) -> list[str]:
    """A cap that not even one release fits under is a config error, not a silent pause."""
    from cpu_tracker_daemon.privacy.accounting import compose

    b = config.budget
    calibration = calibrate(config.privacy, config.sampling.samples)
    problems = []
    for cap, epsilon, delta in (
        ("window", b.window_epsilon, b.window_delta),
        ("lifetime", b.lifetime_epsilon, b.lifetime_delta),
    ):
        cost = compose([calibration.event], delta).epsilon
        if cost > epsilon * (1 + 1e-9):
            problems.append(
                f"one release costs epsilon {cost:g} at delta {delta:g}, more than budget.{cap}_epsilon "
                f"({epsilon:g}), so none could ever fit; lower the cost (privacy.epsilon or a larger "
                f"privacy.sigma) or raise the cap"
                + (f" and budget.{cap}_delta" if calibration.event.delta > 0 else "")
            )
    return problems


def as_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain TOML-able values (paths as strings, unset as "")."""
    out: dict[str, dict[str, Any]] = {}
    for section in KEYS:
        obj = getattr(config, section)
        table: dict[str, Any] = {}
        for name in (f.name for f in fields(obj)):
            value = getattr(obj, name)
            if isinstance(value, Path):
                value = str(value)
            elif value is None:
                value = ""
            elif isinstance(value, tuple):
                value = list(value)
            table[name] = value
        out[section] = table
    return out


def to_toml(config: Config) -> str:
    """Render the effective configuration as TOML that ``load_config`` reads back unchanged."""
    lines: list[str] = []
    for section, table in as_dict(config).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items() if value != "")
        lines.append("")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
