"""The package's shape: no module imports, at its top level, a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cpu_tracker_daemon"


def _module_name(path: Path) -> str:
    parts = ("cpu_tracker_daemon", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts).removesuffix(".__init__")


def top_level_imports() -> dict[str, set[str]]:
    """Each module's imports of the package made when it is imported (not those inside functions
    or under ``if TYPE_CHECKING``)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("cpu_tracker_daemon")
            ):
                deps.add(node.module)
                deps.update(
                    f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules
                )
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        graph[name] = {d for d in deps if d in modules and d not in (name, "cpu_tracker_daemon")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if (found := visit(dep)) is not None:
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    assert find_cycle(top_level_imports()) is None


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_privacy_does_not_import_the_configuration() -> None:
    """privacy owns its constants and its section's type; config imports privacy, not the reverse."""
    graph = top_level_imports()
    assert "cpu_tracker_daemon.config" not in graph["cpu_tracker_daemon.privacy.mechanisms"]
    assert "cpu_tracker_daemon.privacy.mechanisms" in graph["cpu_tracker_daemon.config"]


def test_only_the_command_line_imports_the_command_line() -> None:
    """cli/ sits on top: no other module imports from it, at its top or inside a function
    (``__main__`` alone, which is the command)."""
    importers = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "cli" or relative == Path("__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(
                name == "cpu_tracker_daemon.cli" or name.startswith("cpu_tracker_daemon.cli.")
                for name in names
            ):
                importers.append(str(relative))
    assert importers == []
