"""The configuration: frozen values, embedded defaults, and a loader that reports every problem.

``load_config`` reads one TOML file (or none: the defaults are complete) and returns a
:class:`Config`, or raises :class:`ConfigError` listing every problem, each naming the key and
the fix. It reads; it never writes or logs.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from cpu_tracker_daemon import parsecache
from cpu_tracker_daemon.errors import ConfigError
from cpu_tracker_daemon.frozen import Frozen
from cpu_tracker_daemon.names import APP_NAME, LOG_FORMATS
from cpu_tracker_daemon.privacy import DEFAULT_EPSILON, PrivacyConfig, calibrate, check_privacy

TYPE_CHECKING = False  # not typing's: a command need not import typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

CONFIG_ENV = "CPU_TRACKER_CONFIG"
CONFIG_FILE = "config.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_READERS = ("aggregator@openmined.org",)
DEFAULT_BETA, MAX_BETA = 0.2, 0.5  # secure aggregation: the fraction that may drop out or collude
ROUND_STEPS = 8  # a secure round's steps from its start to the last reveal collected, and one spare
MAX_ROUND_MEMBERS = 100_000
_EMAIL = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"  # compiled on first use: most configs name none


class PathsConfig(Frozen):
    data_dir: Path


class SamplingConfig(Frozen):
    samples: int = 50
    interval_seconds: float = 1.0

    @property
    def window_seconds(self) -> float:
        return self.samples * self.interval_seconds


class ScheduleConfig(Frozen):
    every_seconds: float = 3600.0


class BudgetConfig(Frozen):
    lifetime_epsilon: float = 100.0
    lifetime_delta: float = 1e-6
    window_epsilon: float = 12.0
    window_delta: float = 1e-6
    window_hours: float = 24.0


class SyftboxConfig(Frozen):
    dir: Path | None = None
    email: str = ""
    readers: tuple[str, ...] = DEFAULT_READERS

    @property
    def enabled(self) -> bool:
        return self.dir is not None


class LoggingConfig(Frozen):
    format: str = "auto"
    level: str = "info"
    file: Path | None = None


class AggregatorConfig(Frozen):
    """The network view: read every peer's release in the SyftBox tree and publish the estimate."""

    enabled: bool = False
    every_seconds: float = 3600.0
    max_age_seconds: float = 7200.0
    publish_peers: bool = False
    history_length: int = 720
    max_weight_ratio: float = 1.0


class SecureAggregationConfig(Frozen):
    """Secure aggregation (docs/secure-aggregation.md): ``enabled`` makes this member take part
    in the rounds ``aggregator`` runs, instead of publishing its own noisy release; ``members``
    makes this daemon the aggregator that runs them, for those members."""

    enabled: bool = False
    aggregator: str = ""
    beta: float = DEFAULT_BETA
    step_seconds: float = 10.0
    members: tuple[str, ...] = ()

    @property
    def runs_rounds(self) -> bool:
        return bool(self.members)


class PrometheusConfig(Frozen):
    textfile_dir: Path | None = None


class Config(Frozen):
    paths: PathsConfig
    sampling: SamplingConfig = SamplingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    budget: BudgetConfig = BudgetConfig()
    syftbox: SyftboxConfig = SyftboxConfig()
    logging: LoggingConfig = LoggingConfig()
    aggregator: AggregatorConfig = AggregatorConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
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
    "syftbox": {"dir": "path", "email": "str", "readers": "emails"},
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
        "beta": "float",
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
    cache: Path | None = None,
) -> Config:
    """Read ``path`` (or nothing) over the embedded defaults; raise ConfigError listing all problems.
    ``origin`` is where the path came from (see :func:`config_origin`), for the messages; ``cache``
    is where the parsed file may be kept for the next command (:func:`cache_file`, :mod:`parsecache`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path, origin, cache)
    return parse_config(raw, source=path, environ=environ)


def cache_file(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path | None:
    """Where a command keeps the parsed config file: the per-user cache directory
    (``~/Library/Caches`` on macOS, ``$XDG_CACHE_HOME`` or ``~/.cache`` elsewhere); None without a
    home directory."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute() and platform != "darwin":
        base = Path(xdg)
    else:
        home = environ.get("HOME", "")
        if not home or not Path(home).is_absolute():
            return None
        base = Path(home) / ("Library/Caches" if platform == "darwin" else ".cache")
    return base / APP_NAME / "config.marshal"


def config_origin(cli_path: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """Who named the config file :func:`config_path_from` chose: ``--config``, the environment
    variable, or the default location."""
    if cli_path:
        return "--config"
    return f"${CONFIG_ENV}" if environ.get(CONFIG_ENV, "") else "the default location"


def _read_toml(path: Path, origin: str = "--config", cache: Path | None = None) -> dict[str, Any]:
    named = f"config file {path}" if origin == "--config" else f"config file {path} (from {origin})"
    drop = f"unset {CONFIG_ENV}" if origin.startswith("$") else "drop --config"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{named} does not exist; create it or {drop}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{named} is a directory; name a TOML file"]) from None
    except NotADirectoryError:
        blocker = _file_above(path)
        raise ConfigError(
            [f"{named} cannot be read: {blocker} is a file, not a directory; fix the path or {drop}"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{named} cannot be read ({exc.strerror}); fix its permissions"]) from None

    def parse(data: bytes) -> dict[str, Any]:
        import tomllib  # only for a file no command has read before (parsecache)

        try:
            return tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError([f"{named} is not UTF-8 text; save it as UTF-8 TOML"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{named} is not valid TOML ({exc}); fix the syntax there"]) from None

    return parsecache.parsed(data, cache, parse)


def _file_above(path: Path) -> Path:
    """The first parent of ``path`` that exists and is not a directory."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path.parent


SYFTBOX_CLIENT_CONFIG_ENV = "SYFTBOX_CLIENT_CONFIG_PATH"  # set by the SyftBox client for its apps


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

        client = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            [f"the SyftBox client config {path} cannot be read ({exc.strerror}); {fix}"]
        ) from None
    except ValueError:
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

    # The values that are well-formed are checked too, so one run reports every problem.
    syftbox = values["syftbox"]
    try:
        syftbox = _with_client_datasite(syftbox, environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        config = Config(
            paths=PathsConfig(data_dir=values["paths"].pop("data_dir", None) or default_data_dir(environ)),
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
        privacy = privacy._replace(sigma=None)
    if privacy.epsilon is None and privacy.sigma is None:
        privacy = privacy._replace(epsilon=DEFAULT_EPSILON)
    config = config._replace(privacy=privacy)
    problems.extend(_check(config))
    if problems:
        raise ConfigError(problems)
    return config


def _unknown(name: str, known: list[str], what: str = "key") -> str:
    import difflib  # only for a misspelt key

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known)
    return f"unknown {what} {name}; remove it ({hint})"


def _convert(name: str, kind: str, value: Any, base: Path) -> tuple[Any, str]:
    wrong = f"{name} must be {_KIND_HINT[kind]}, not {type(value).__name__} {value!r}; fix its type"
    if kind == "bool":
        return (value, "") if isinstance(value, bool) else (None, wrong)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, wrong
        return value, ""
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, wrong
        if not math.isfinite(value):
            return None, f"{name} must be a finite number, not {value!r}; give a finite value"
        return float(value), ""
    if kind == "str":
        return (value, "") if isinstance(value, str) else (None, wrong)
    if kind == "path":
        if not isinstance(value, str):
            return None, wrong
        if not value:
            return None, ""
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # "~name" of a user this machine does not know
            return None, f"{name} names the home of an unknown user ({value!r}); give an absolute path"
        return (path if path.is_absolute() else base / path), ""
    # emails
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None, wrong
    bad = [v for v in value if not re.match(_EMAIL, v)]
    if bad:
        return None, f"{name} has invalid email addresses {bad}; give addresses like name@example.org"
    return tuple(value), ""


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
    if sb.email and not re.match(_EMAIL, sb.email):
        problems.append(f"syftbox.email {sb.email!r} is not an email address; give your datasite's")
    if config.logging.format not in LOG_FORMATS:
        problems.append(
            f"logging.format must be one of {', '.join(LOG_FORMATS)} (got {config.logging.format!r})"
        )
    if config.logging.level not in LOG_LEVELS:
        problems.append(
            f"logging.level must be one of {', '.join(LOG_LEVELS)} (got {config.logging.level!r})"
        )
    return problems


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
    if not 0 <= sa.beta <= MAX_BETA:
        problems.append(
            f"secure_aggregation.beta must be in [0, {MAX_BETA:g}] (got {sa.beta:g}); 0.2 allows a fifth "
            "of the members to drop out or collude"
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
    elif sa.aggregator and not re.match(_EMAIL, sa.aggregator):
        problems.append(f"secure_aggregation.aggregator {sa.aggregator!r} is not an email address")
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
    from cpu_tracker_daemon.accounting import compose

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
        for name in obj._fields:
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
