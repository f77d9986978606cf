"""The docs keep their promises: two set-up commands, the CI runs the test one, tables match code,
links lead somewhere, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

from cpu_tracker_daemon.config import KEYS, MAX_ITEMS, MAXIMA
from cpu_tracker_daemon.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
MEASURED = (ROOT / "docs" / "measured.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def anchors(page: Path) -> set[str]:
    """The fragment GitHub gives each heading of a page: lower case, punctuation dropped, spaces
    as hyphens, and -1, -2 ... after a repeat."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        heading = re.match(r"#{1,6} (.*)", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """Every link target of a page that is not a URL, outside code."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


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

    def test_is_under_250_lines(self) -> None:
        """The README is a front page; the rest lives in docs/."""
        assert len(README.splitlines()) < 250

    def test_states_no_suite_size(self) -> None:
        """The suite's size and time rot, so they live only in docs/measured.md."""
        assert re.search(r"\d[\d,]* tests\b", README) is None


class TestConfigurationPage:
    def test_every_config_key_is_documented(self) -> None:
        """Each key the loader accepts has a row in the configuration reference."""
        for section, keys in KEYS.items():
            for key in keys:
                assert f"`{section}.{key}`" in CONFIGURATION, f"{section}.{key}"

    def test_every_bound_is_in_its_keys_row(self) -> None:
        """Each number's maximum and each list's bound is stated in that key's row."""
        lines = CONFIGURATION.splitlines()
        rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| `")}
        for name, most in {**MAXIMA, **MAX_ITEMS}.items():
            assert f"{most:,}" in rows[f"`{name}`"], name


class TestLinks:
    def test_every_relative_link_resolves(self) -> None:
        """Each relative link in README.md and docs/*.md names a file that exists and, when it
        names a heading, a heading that exists."""
        broken = []
        for page in PAGES:
            for target in relative_links(page):
                path, _, fragment = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                if not linked.is_file():
                    broken.append(f"{page.relative_to(ROOT)}: {target}")
                elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
        assert not broken, broken

    def test_every_docs_page_is_linked_from_the_readme_or_another_page(self) -> None:
        """No page under docs/ is an orphan a reader cannot navigate to."""
        linked = {
            (page.parent / target.partition("#")[0]).resolve()
            for page in PAGES
            for target in relative_links(page)
            if target.partition("#")[0]
        }
        orphans = [page.name for page in PAGES[1:] if page.resolve() not in linked]
        assert not orphans, orphans


class TestMeasuredPage:
    def test_every_section_says_when_and_how(self) -> None:
        """Each section of docs/measured.md names a date and a command (or says it was not kept)."""
        sections = re.split(r"^## ", FENCE.sub("", MEASURED), flags=re.M)[1:]
        assert sections
        for section in sections:
            title = section.splitlines()[0]
            assert re.search(r"\d{4}-\d{2}-\d{2}", section), title
            assert "`" in section or "not recorded" in section or "not kept" in section, title
