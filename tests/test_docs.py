"""The README keeps its promises: two set-up commands, the CI runs the test one, tables match code."""

from __future__ import annotations

import re
from pathlib import Path

from cpu_tracker_daemon.config import KEYS, MAX_ITEMS, MAXIMA
from cpu_tracker_daemon.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


class TestReadme:
    def test_exactly_two_commands_run_and_test(self) -> None:
        """The quick start holds exactly two commands: the daemon on defaults, then the tests."""
        run, test = quick_start_commands()
        assert run.endswith("cpu-tracker run")
        assert "--config" not in run
        assert "pytest" in test

    def test_ci_runs_the_readme_test_command(self) -> None:
        """.ci/run contains the README's test command verbatim."""
        _, test = quick_start_commands()
        assert test in (ROOT / ".ci" / "run").read_text().splitlines()

    def test_exit_code_table_matches_the_cli(self) -> None:
        """Every exit code the CLI defines is in the README with the same meaning."""
        for code, meaning in EXIT_CODES.items():
            assert f"| {code} | {meaning} |" in README

    def test_every_config_key_is_documented(self) -> None:
        """Each key the loader accepts has a row in the configuration reference."""
        for section, keys in KEYS.items():
            for key in keys:
                assert f"`{section}.{key}`" in README, f"{section}.{key}"

    def test_every_bound_is_in_its_keys_row(self) -> None:
        """Each number's maximum and each list's bound is stated in that key's row."""
        rows = {line.split("|")[1].strip(): line for line in README.splitlines() if line.startswith("| `")}
        for name, most in {**MAXIMA, **MAX_ITEMS}.items():
            assert f"{most:,}" in rows[f"`{name}`"], name
