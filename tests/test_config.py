"""The config loader: defaults, every bad-input case, and a fuzzed property."""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon.config import (
    KEYS,
    MAX_ITEMS,
    MAXIMA,
    FileTooLargeError,
    _convert,
    config_path_from,
    default_data_dir,
    load_config,
    parse_config,
    read_regular_file,
    to_toml,
)
from cpu_tracker_daemon.errors import ConfigError
from tests.conftest import run_cli, write_config


class TestDefaults:
    def test_no_file_gives_the_documented_defaults(self, tmp_path: Path) -> None:
        """With no config file every key has its embedded default."""
        config = load_config(None, {"HOME": str(tmp_path)})
        assert config.sampling.samples == 50
        assert config.privacy.unit == "window"
        assert config.privacy.mechanism == "laplace"
        assert (config.privacy.lower, config.privacy.upper) == (0.0, 100.0)
        assert config.syftbox.readers == ("aggregator@openmined.org",)
        assert config.paths.data_dir == tmp_path / ".local" / "share" / "cpu-tracker"

    def test_state_directory_wins_over_home(self, tmp_path: Path) -> None:
        """systemd's $STATE_DIRECTORY (first entry) is the data directory when set."""
        env = {"HOME": "/nonexistent", "STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}
        assert default_data_dir(env) == tmp_path / "a"

    def test_macos_uses_application_support(self) -> None:
        """On macOS the per-user data directory is under ~/Library/Application Support."""
        assert default_data_dir({"HOME": "/Users/x"}, platform="darwin") == Path(
            "/Users/x/Library/Application Support/cpu-tracker"
        )

    def test_xdg_data_home_is_honoured(self) -> None:
        """$XDG_DATA_HOME replaces ~/.local/share when it is absolute."""
        assert default_data_dir({"HOME": "/h", "XDG_DATA_HOME": "/x"}, platform="linux") == Path(
            "/x/cpu-tracker"
        )

    def test_relative_paths_resolve_against_the_config_file(self, tmp_path: Path) -> None:
        """A relative data_dir means relative to the config file, not to the working directory."""
        path = tmp_path / "c.toml"
        path.write_text('[paths]\ndata_dir = "state"\n')
        assert load_config(path).paths.data_dir == tmp_path / "state"

    def test_show_output_reads_back_identically(self, tmp_path: Path) -> None:
        """The TOML that 'config show' prints loads back to the same configuration."""
        path = tmp_path / "c.toml"
        path.write_text(
            '[syftbox]\ndir = "/sb"\nemail = "me@example.org"\nreaders = ["a@b.org"]\n'
            '[privacy]\nepsilon = 0.1\nunit = "sample"\n'
        )
        config = load_config(path)
        again = tmp_path / "again.toml"
        again.write_text(to_toml(config))
        assert asdict(load_config(again)) | {"source": None} == asdict(config) | {"source": None}


BAD = [
    ("[sampling]\nsample = 5\n", "unknown key sampling.sample", "did you mean sampling.samples"),
    ("[samplin]\nsamples = 5\n", "unknown section samplin", "did you mean sampling"),
    ('[sampling]\nsamples = "5"\n', "sampling.samples must be a whole number", "fix its type"),
    ("[sampling]\nsamples = 5.5\n", "sampling.samples must be a whole number", "fix its type"),
    ("[privacy]\nepsilon = true\n", "privacy.epsilon must be a number", "fix its type"),
    ("[privacy]\nepsilon = 0\n", "privacy.epsilon must be greater than 0", "set a positive value"),
    ("[privacy]\nepsilon = -1.0\n", "privacy.epsilon must be greater than 0", "set a positive value"),
    ("[privacy]\nepsilon = nan\n", "privacy.epsilon must be a finite number", "finite"),
    ("[privacy]\nlower = 50\nupper = 50\n", "privacy.upper (50) must be greater than privacy.lower", "swap"),
    ("[privacy]\nupper = 150\n", "must lie in [0, 100]", "percentage"),
    ("[privacy]\nlower = 0.005\n", "privacy.lower must be a multiple of 0.01", "two decimals"),
    ("[privacy]\nepsilon = 1e-300\n", "privacy.epsilon must be between 1e-06 and 1000", "usual range"),
    ("[privacy]\nsigma = 1e300\n", "privacy.sigma must be at most 1e+09", "lower it"),
    ('[privacy]\nunit = "person"\n', "privacy.unit must be one of window, sample", "person"),
    ('[privacy]\nmechanism = "gauss"\n', "privacy.mechanism must be one of laplace", "gauss"),
    ("[sampling]\nsamples = 0\n", "sampling.samples must be at least 1", "set e.g. 50"),
    ("[sampling]\ninterval_seconds = 0\n", "sampling.interval_seconds must be greater than 0", "positive"),
    ("[schedule]\nevery_seconds = 10\n", "shorter than the sampling window", "raise every_seconds"),
    ("[budget]\nwindow_epsilon = 0.1\n", "none could ever fit", "raise the cap"),
    ("[budget]\nwindow_hours = -1\n", "budget.window_hours must be greater than 0", "positive"),
    ("[privacy]\nepsilon = 1\nsigma = 50\n", "privacy.epsilon or privacy.sigma, not both", "remove one"),
    ("[privacy]\nsigma = 0\n", "privacy.sigma must be greater than 0", "positive"),
    ('[privacy]\nmechanism = "gaussian"\ndelta = 0\n', "privacy.delta must be in (0, 1)", "e.g. 1e-6"),
    ('[privacy]\nmechanism = "gauss"\n', "privacy.mechanism must be one of", "gaussian"),
    ("[budget]\nlifetime_delta = 1\n", "budget.lifetime_delta must be in [0, 1)", "e.g. 1e-6"),
    (
        '[privacy]\nmechanism = "gaussian"\n[budget]\nwindow_delta = 0\n',
        "none could ever fit",
        "budget.window_delta",
    ),
    ('[syftbox]\ndir = "/x"\n', "syftbox.dir and syftbox.email go together", "set both"),
    ('[syftbox]\nreaders = ["nobody"]\n', "syftbox.readers has invalid email", "name@example.org"),
    ('[syftbox]\nlayout = "box"\n', "syftbox.layout must be one of auto, syftbox, pysyft", "'box'"),
    ('[logging]\nlevel = "loud"\n', "logging.level must be one of", "loud"),
    ("sampling = 3\n", "[sampling] must be a table", "header"),
    ("[sampling\nsamples = 5\n", "is not valid TOML", "fix the syntax"),
]


class TestDiscovery:
    def test_explicit_path_then_environment(self, tmp_path: Path) -> None:
        """--config wins over $CPU_TRACKER_CONFIG, which wins over any discovered file."""
        env = {"CPU_TRACKER_CONFIG": "/env.toml", "HOME": str(tmp_path)}
        assert config_path_from("/cli.toml", env) == Path("/cli.toml")
        assert config_path_from(None, env) == Path("/env.toml")

    def test_service_configuration_directory(self, tmp_path: Path) -> None:
        """Under systemd, config.toml in $CONFIGURATION_DIRECTORY is read if it exists, never ~/.config."""
        (tmp_path / "home" / ".config" / "cpu-tracker").mkdir(parents=True)
        (tmp_path / "home" / ".config" / "cpu-tracker" / "config.toml").write_text("")
        env = {"CONFIGURATION_DIRECTORY": str(tmp_path / "etc"), "HOME": str(tmp_path / "home")}
        assert config_path_from(None, env) is None
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "config.toml").write_text("")
        assert config_path_from(None, env) == tmp_path / "etc" / "config.toml"

    def test_user_configuration_directory(self, tmp_path: Path) -> None:
        """Outside a service, ~/.config/cpu-tracker/config.toml (or under $XDG_CONFIG_HOME) is read."""
        env = {"HOME": str(tmp_path)}
        assert config_path_from(None, env) is None
        user = tmp_path / ".config" / "cpu-tracker"
        user.mkdir(parents=True)
        (user / "config.toml").write_text("")
        assert config_path_from(None, env) == user / "config.toml"
        xdg = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        assert config_path_from(None, xdg) is None

    def test_relative_log_file_goes_to_the_logs_directory(self, tmp_path: Path) -> None:
        """With $LOGS_DIRECTORY set (systemd, launchd plist), a relative logging.file lands there."""
        raw = {"logging": {"file": "cpu-tracker.log"}}
        config = parse_config(raw, source=tmp_path / "c.toml", environ={"LOGS_DIRECTORY": "/var/log/ct"})
        assert config.logging.file == Path("/var/log/ct/cpu-tracker.log")
        config = parse_config(raw, source=tmp_path / "c.toml", environ={"HOME": str(tmp_path)})
        assert config.logging.file == tmp_path / "cpu-tracker.log"


class TestSyftboxApp:
    """Run as a SyftBox app, the datasite and email come from the client's own config."""

    def client_config(self, tmp_path: Path, doc: object) -> dict[str, str]:
        path = tmp_path / "client.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return {"HOME": str(tmp_path), "SYFTBOX_CLIENT_CONFIG_PATH": str(path)}

    def test_zero_configuration_takes_the_clients_datasite(self, tmp_path: Path) -> None:
        """No [syftbox] table: dir and email are the client's data_dir and email."""
        environ = self.client_config(
            tmp_path, {"data_dir": str(tmp_path / "SyftBox"), "email": "me@example.org", "server_url": "x"}
        )
        sb = load_config(None, environ).syftbox
        assert (tmp_path / "SyftBox", "me@example.org") == (sb.dir, sb.email)

    def test_a_syftbox_table_wins_over_the_client(self, tmp_path: Path) -> None:
        """A config file that sets [syftbox] is used as written."""
        environ = self.client_config(tmp_path, {"data_dir": "/elsewhere", "email": "other@example.org"})
        raw = {"syftbox": {"dir": str(tmp_path / "mine"), "email": "me@example.org"}}
        assert parse_config(raw, environ=environ).syftbox.email == "me@example.org"

    @pytest.mark.parametrize(
        ("doc", "says"),
        [
            ("{not json", "is not JSON"),
            ({"email": "me@example.org"}, "names no data_dir and email"),
            ([], "names no"),
        ],
    )
    def test_a_bad_client_config_is_one_line(self, tmp_path: Path, doc: object, says: str) -> None:
        """A client config that is not JSON or lacks data_dir/email is a ConfigError naming it."""
        with pytest.raises(ConfigError) as err:
            load_config(None, self.client_config(tmp_path, doc))
        assert says in str(err.value)
        assert "client.json" in str(err.value)
        assert "\n" not in str(err.value)

    def test_a_missing_client_config_is_one_line(self, tmp_path: Path) -> None:
        """A client config that is not there is a ConfigError saying it cannot be read."""
        environ = {"HOME": str(tmp_path), "SYFTBOX_CLIENT_CONFIG_PATH": str(tmp_path / "gone.json")}
        with pytest.raises(ConfigError, match="cannot be read"):
            load_config(None, environ)


class TestSyftboxLayout:
    """``syftbox.layout``: the folder's own shape by default; pinned, a folder of the other is refused."""

    def syftbox(self, folder: Path, layout: str) -> dict[str, dict[str, str]]:
        return {"syftbox": {"dir": str(folder), "email": "me@example.org", "layout": layout}}

    def pysyft_folder(self, tmp_path: Path) -> Path:
        (tmp_path / "SyftBox").mkdir()
        (tmp_path / "SyftBox" / "SYFT_version.json").write_text("{}")
        return tmp_path / "SyftBox"

    def test_auto_by_default(self) -> None:
        """Unset, the layout follows the folder."""
        assert parse_config({}).syftbox.layout == "auto"

    @pytest.mark.parametrize("layout", ["auto", "pysyft"])
    def test_a_pysyft_folder_loads_auto_or_pinned(self, tmp_path: Path, layout: str) -> None:
        """A folder syft logged into loads with auto and with pysyft."""
        folder = self.pysyft_folder(tmp_path)
        assert parse_config(self.syftbox(folder, layout)).syftbox.layout == layout

    def test_pinned_to_pysyft_a_folder_syft_never_logged_into_is_refused(self, tmp_path: Path) -> None:
        """A folder without syft's version file is not PySyft's: one line says what to do."""
        with pytest.raises(ConfigError) as err:
            parse_config(self.syftbox(tmp_path / "SyftBox", "pysyft"))
        assert "has no SYFT_version.json" in str(err.value)
        assert "log in with syft first" in str(err.value)
        assert "\n" not in str(err.value)

    def test_pinned_to_syftbox_a_pysyft_folder_is_refused(self, tmp_path: Path) -> None:
        """A PySyft folder never gets SyftBox's datasites/ written into it by a pinned config."""
        with pytest.raises(ConfigError, match=r'is a PySyft 0\.10 folder .* set layout = "pysyft"'):
            parse_config(self.syftbox(self.pysyft_folder(tmp_path), "syftbox"))

    def test_the_command_says_it_in_one_line_and_exits_3(self, tmp_path: Path) -> None:
        """``config check`` on a pinned layout the folder does not have: exit 3, one line."""
        config = write_config(tmp_path, self.syftbox(tmp_path / "SyftBox", "pysyft"))
        done = run_cli("--config", str(config), "config", "check")
        assert done.returncode == 3
        assert len(done.stderr.strip().splitlines()) == 1
        assert "log in with syft first" in done.stderr


class TestBadInput:
    @pytest.mark.parametrize(("text", "problem", "fix"), BAD)
    def test_each_bad_case_names_the_key_and_the_fix(
        self, tmp_path: Path, text: str, problem: str, fix: str
    ) -> None:
        """Every bad config raises ConfigError whose message names the problem and the remedy."""
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        message = str(info.value)
        assert problem in message
        assert fix in message
        assert "\n" not in message

    def test_all_problems_are_reported_at_once(self, tmp_path: Path) -> None:
        """Two independent mistakes are both reported in one error."""
        path = tmp_path / "c.toml"
        path.write_text("[privacy]\nepsilon = 0\n[sampling]\nsamples = 0\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert len(info.value.problems) == 2

    def test_hostile_names_are_escaped_onto_one_line(self, tmp_path: Path) -> None:
        """A key or section name with a newline or a bell is shown escaped, never raw."""
        path = tmp_path / "c.toml"
        path.write_text('[paths]\n"a\\nb\\u0007" = 1\n["x\\ty"]\n')
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert all(problem.isprintable() for problem in info.value.problems)
        assert "unknown key paths.a\\nb\\x07;" in str(info.value)
        assert "unknown section x\\ty;" in str(info.value)

    def test_home_of_an_unknown_user_is_a_config_error(self, tmp_path: Path) -> None:
        """``~nosuchuser/x`` cannot be expanded: a ConfigError, not a crash (atheris found it)."""
        path = tmp_path / "c.toml"
        path.write_text('[syftbox]\ndir = "~no-such-user-here/SyftBox"\n')
        with pytest.raises(ConfigError, match=r"syftbox\.dir names the home of an unknown user"):
            load_config(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is an error, not silently the defaults."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(tmp_path / "nope.toml")

    def test_binary_file(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is reported as such."""
        path = tmp_path / "c.toml"
        path.write_bytes(b"\xff\xfe\x00garbage")
        with pytest.raises(ConfigError, match="not UTF-8"):
            load_config(path)


_values = st.one_of(
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
    st.lists(st.text(max_size=10), max_size=3),
)
_sections = st.dictionaries(
    st.sampled_from(["sampling", "schedule", "privacy", "budget", "syftbox", "logging", "bogus"]),
    st.dictionaries(
        st.sampled_from(
            [
                "samples",
                "interval_seconds",
                "every_seconds",
                "epsilon",
                "lower",
                "upper",
                "unit",
                "lifetime_epsilon",
                "window_epsilon",
                "window_hours",
                "email",
                "readers",
                "format",
                "level",
                "extra",
            ]
        ),
        _values,
        max_size=5,
    ),
    max_size=4,
)


class TestProperties:
    @pytest.mark.slow
    @settings(max_examples=300, deadline=None)
    @given(raw=_sections)
    def test_any_document_loads_or_raises_config_error(self, raw: dict[str, dict[str, object]]) -> None:
        """Whatever the document holds, the loader returns a Config or raises ConfigError, nothing else."""
        try:
            config = parse_config(raw, environ={"HOME": "/h"})
        except ConfigError as exc:
            assert exc.problems
            assert all(isinstance(p, str) and p and p.isprintable() for p in exc.problems)
        else:
            assert config.privacy.epsilon > 0
            assert config.privacy.upper > config.privacy.lower
            assert config.sampling.samples >= 1

    @settings(max_examples=200, deadline=None)
    @given(text=st.text(max_size=200))
    def test_any_text_loads_or_raises_config_error(self, text: str) -> None:
        """Arbitrary file contents never escape as anything but ConfigError."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return
        with contextlib.suppress(ConfigError):
            parse_config(raw, environ={"HOME": "/h"})


class TestEveryProblemAtOnce:
    """What a newcomer's first bad config got: one problem at a time, joined on one line."""

    def test_an_unknown_key_no_longer_hides_the_value_errors(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unknown key hid every value error behind it. Now every problem is reported in one
        run, one per line under a header line, and the exit code is 3."""
        from cpu_tracker_daemon.cli.main import main
        from cpu_tracker_daemon.errors import EXIT_CONFIG

        path = tmp_path / "c.toml"
        path.write_text('[sampling]\nsamples = -3\ncolour = "red"\n[schedule]\nevery_seconds = "x"\n')
        assert main(["--config", str(path), "status"]) == EXIT_CONFIG
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "cpu-tracker: invalid configuration (3 problems):"
        assert any("sampling.colour" in line for line in err[1:])
        assert any("schedule.every_seconds" in line for line in err[1:])
        assert any("sampling.samples must be at least 1" in line for line in err[1:])
        assert len(err) == 4

    def test_a_file_in_the_path_is_named(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """data_dir under a regular file said "not writable (Not a directory)" three times, once
        per directory. It now names the file in the way, once."""
        from cpu_tracker_daemon.cli.main import main
        from cpu_tracker_daemon.errors import EXIT_CONFIG

        blocker = tmp_path / "notes.txt"
        blocker.write_text("mine\n")
        path = tmp_path / "c.toml"
        path.write_text(f'[paths]\ndata_dir = "{blocker / "state"}"\n')
        for command in (["once"], ["config", "check"]):
            assert main(["--config", str(path), *command]) == EXIT_CONFIG
            err = capsys.readouterr().err
            assert err.count("\n") == 1, err
            assert f"{blocker} is a file, not a directory" in err
        assert blocker.read_text() == "mine\n"

    def test_a_path_from_the_environment_says_so(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing file named by $CPU_TRACKER_CONFIG said "drop --config", which was not given."""
        from cpu_tracker_daemon.cli.main import main
        from cpu_tracker_daemon.errors import EXIT_CONFIG

        missing = tmp_path / "nowhere.toml"
        assert main(["status"], {"CPU_TRACKER_CONFIG": str(missing), "HOME": str(tmp_path)}) == EXIT_CONFIG
        err = capsys.readouterr().err
        assert "$CPU_TRACKER_CONFIG" in err
        assert "unset CPU_TRACKER_CONFIG" in err
        assert "--config" not in err


class TestStarter:
    def test_config_init_writes_a_commented_file_that_changes_nothing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """There was no documented way to start a config. `config init` writes one where the
        next command looks, with every key commented out at its default: loaded, it is the defaults."""
        from cpu_tracker_daemon.cli.main import main
        from cpu_tracker_daemon.config import KEYS, as_dict, load_config, parse_config
        from cpu_tracker_daemon.errors import EXIT_CONFIG

        env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        assert main(["config", "init"], env) == 0
        written = tmp_path / "xdg" / "cpu-tracker" / "config.toml"
        assert str(written) in capsys.readouterr().out
        text = written.read_text()
        for section, keys in KEYS.items():
            assert f"[{section}]" in text
            assert all(f"# {key} = " in text for key in keys)
        assert as_dict(load_config(written, env)) == as_dict(parse_config({}, environ=env))
        assert main(["config", "check"], env) == 0  # found there, and sound
        assert str(written) in capsys.readouterr().out
        written.write_text("[sampling]\nsamples = 7\n")
        assert main(["config", "init"], env) == EXIT_CONFIG
        assert "--force" in capsys.readouterr().err
        assert written.read_text() == "[sampling]\nsamples = 7\n"
        assert main(["config", "init", "--force"], env) == 0
        assert "# samples = 50" in written.read_text()

    @pytest.mark.parametrize("skip", ["sigma", "epsilon"])
    def test_uncommenting_the_values_gives_a_valid_config(self, tmp_path: Path, skip: str) -> None:
        """Every commented value is one the config accepts, the examples too (all of them at
        once but one of epsilon and sigma, which exclude each other)."""
        from cpu_tracker_daemon.cli.starter import starter_toml
        from cpu_tracker_daemon.config import parse_config

        lines = [
            line[2:]
            if line.startswith("# ") and " = " in line and not line.startswith(f"# {skip} =")
            else line
            for line in starter_toml({}).splitlines()
        ]
        parse_config(tomllib.loads("\n".join(lines)), source=tmp_path / "c.toml", environ={})


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian", "snapping"])
@pytest.mark.parametrize("sigma", [1e-300, 1e-6, 0.001])
def test_a_sigma_below_the_grid_is_a_config_error_not_a_crash(mechanism: str, sigma: float) -> None:
    """CI's fuzzer found `[privacy] sigma = 1e-6` exiting 1 ("internal error: math domain
    error"): the noise scale's formula cancelled to log(0). Noise finer than the 0.01-point grid
    is no noise: such a sigma is one config problem naming the key."""
    with pytest.raises(ConfigError) as info:
        parse_config({"privacy": {"sigma": sigma, "mechanism": mechanism}}, environ={})
    assert any("privacy.sigma must be at least 0.01" in p for p in info.value.problems)


def keys_of(kind: str) -> list[str]:
    return [f"{section}.{key}" for section, keys in KEYS.items() for key, of in keys.items() if of == kind]


def _raw(name: str, value: object) -> dict[str, dict[str, object]]:
    section, key = name.split(".")
    return {section: {key: value}}


class TestBounds:
    """Issue 33: every number has a finite range, every path a length and no NUL, every list a
    bound, so no value the loader accepts overflows, fails to open or takes minutes later."""

    @pytest.mark.parametrize("value", [1.7976931348623157e308, -1.7976931348623157e308, 10**400])
    @pytest.mark.parametrize("name", keys_of("float"))
    def test_every_number_at_the_float_limits_is_one_problem_naming_it(self, name: str, value: float) -> None:
        """Each float key at +-1.8e308 (or an integer no float holds): a ConfigError naming the key."""
        with pytest.raises(ConfigError) as info:
            parse_config(_raw(name, value), environ={"HOME": "/h"})
        assert any(name in p for p in info.value.problems), info.value.problems

    @pytest.mark.parametrize("name", sorted(MAXIMA))
    def test_each_maximum_is_enforced_and_stated(self, name: str) -> None:
        """Just past its maximum, a key is refused with the maximum in the message."""
        with pytest.raises(ConfigError, match=f"{name} must be at most {MAXIMA[name]:,}"):
            parse_config(_raw(name, MAXIMA[name] * 1.5), environ={"HOME": "/h"})

    def test_a_year_long_schedule_loads(self) -> None:
        """The bounds leave room: a release once a year, a peer a year old, a year-long window."""
        config = parse_config(
            {
                "schedule": {"every_seconds": MAXIMA["schedule.every_seconds"]},
                "budget": {"window_hours": MAXIMA["budget.window_hours"]},
                "aggregator": {"max_age_seconds": MAXIMA["aggregator.max_age_seconds"]},
            },
            environ={"HOME": "/h"},
        )
        assert config.schedule.every_seconds == 365 * 86_400

    @pytest.mark.parametrize(
        ("value", "says"),
        [
            ("/var/lib/x\x00y", "contains a NUL character"),
            ("/" + "a" * 256, "is too long"),
            ("/" + "/".join(["b" * 200] * 6), "is too long"),
        ],
        ids=["NUL", "a name past 255 bytes", "a path past 1024 bytes"],
    )
    @pytest.mark.parametrize("name", keys_of("path"))
    def test_a_path_no_file_system_takes_is_refused(self, name: str, value: str, says: str) -> None:
        """A NUL, a name longer than 255 bytes, a path longer than 1024 bytes: one problem each."""
        with pytest.raises(ConfigError) as info:
            parse_config(_raw(name, value), environ={"HOME": "/h"})
        assert any(name in p and says in p for p in info.value.problems), info.value.problems

    @pytest.mark.parametrize("variable", ["STATE_DIRECTORY", "XDG_DATA_HOME", "HOME"])
    def test_a_default_data_dir_too_long_is_refused_too(self, variable: str) -> None:
        """The data directory the environment gives, when the file names none, is checked alike."""
        environ = {"HOME": "/h", variable: "/" + "s" * 300}
        with pytest.raises(
            ConfigError, match=r"paths\.data_dir \(by default, from the environment\) is too long"
        ):
            parse_config({}, environ=environ)

    def test_a_log_file_that_is_a_directory_is_refused(self, tmp_path: Path) -> None:
        """`logging.file` naming a directory names a file to use in it instead."""
        with pytest.raises(ConfigError, match=r"logging\.file .* is a directory; name a file in it"):
            parse_config({"logging": {"file": str(tmp_path)}}, environ={"HOME": "/h"})

    @pytest.mark.parametrize("name", sorted(MAX_ITEMS))
    def test_each_list_takes_its_bound_and_not_one_more(self, name: str) -> None:
        """Exactly the bound is accepted by the conversion; one more is one problem naming both."""
        most = MAX_ITEMS[name]
        emails = [f"m{i}@example.org" for i in range(most + 1)]
        converted, problem = _convert(name, "emails", emails[:most], Path("/"))
        assert (len(converted), problem) == (most, "")
        with pytest.raises(ConfigError, match=f"{name} lists {most + 1:,} addresses; at most {most:,}"):
            parse_config(_raw(name, emails), environ={"HOME": "/h"})

    def test_an_address_too_long_to_name_a_folder_is_refused(self) -> None:
        """A 255-character address (longer than SMTP carries) would name a folder no file system takes."""
        long = "a" * 243 + "@example.org"
        with pytest.raises(ConfigError, match=r"syftbox\.readers has invalid email addresses"):
            parse_config({"syftbox": {"readers": [long]}}, environ={"HOME": "/h"})

    def test_a_huge_bad_value_is_shown_cut_short(self) -> None:
        """A wrong-typed value of megabytes is quoted in a few dozen characters."""
        with pytest.raises(ConfigError) as info:
            parse_config({"sampling": {"samples": ["x" * 1_000_000] * 100}}, environ={"HOME": "/h"})
        assert len(str(info.value)) < 300

    def test_a_file_of_junk_lists_its_first_problems(self) -> None:
        """Thousands of unknown keys: the count, the first twenty, and how many more."""
        with pytest.raises(ConfigError) as info:
            parse_config({"sampling": {f"junk{i}": 1 for i in range(5000)}}, environ={"HOME": "/h"})
        lines = info.value.lines()
        assert lines[0] == "invalid configuration (5000 problems):"
        assert lines[-1] == "  and 4980 more problems"
        assert len(lines) == 22


class TestOddFiles:
    """Issue 33: the config is read capped, from a regular file only."""

    def test_a_fifo_is_refused_before_it_is_opened(self, tmp_path: Path) -> None:
        """A FIFO nobody writes to: a ConfigError saying what it is, not a wait."""
        fifo = tmp_path / "c.toml"
        os.mkfifo(fifo)
        with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
            load_config(fifo)

    def test_a_device_is_refused(self) -> None:
        """/dev/zero is never read (it has no end)."""
        with pytest.raises(ConfigError, match="/dev/zero is a character device, not a regular file"):
            load_config(Path("/dev/zero"))

    def test_dev_null_is_still_an_empty_config(self) -> None:
        """``--config /dev/null`` keeps meaning what it meant: no file, the embedded defaults."""
        config = load_config(Path(os.devnull), environ={"HOME": "/h"})
        assert config.sampling.samples == 50

    def test_the_size_cap_holds_whatever_the_file_says_its_size_is(self, tmp_path: Path) -> None:
        """The read stops one byte past the cap, so a file that grows after its stat is refused too."""
        path = tmp_path / "c.toml"
        path.write_bytes(b"#" * 101)
        assert read_regular_file(path, 101) == b"#" * 101
        with pytest.raises(FileTooLargeError):
            read_regular_file(path, 100)

    @pytest.mark.parametrize(
        "text", ["a = " + "9" * 5000, "a = " + "[" * 5000 + "]" * 5000], ids=["digits", "nesting"]
    )
    def test_toml_python_cannot_hold_is_invalid_toml(self, tmp_path: Path, text: str) -> None:
        """An integer past Python's digit limit, nesting past the recursion limit: invalid TOML."""
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match="is not valid TOML"):
            load_config(path)
