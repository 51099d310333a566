"""The charm's modules import each other without a cycle (``charm.py`` was once the service
locator of ``actions.py``, which imported it back)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "charm" / "rollingops_charm"


def local_imports(source: Path) -> set[str]:
    """Sibling modules ``source`` imports (``from .x import`` and ``from . import x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found |= {alias.name for alias in node.names}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph``, if there is any (depth-first search)."""

    def visit(module: str, path: list[str]) -> list[str] | None:
        for dependency in sorted(graph.get(module, set())):
            if dependency in path:
                return [*path[path.index(dependency) :], dependency]
            found = visit(dependency, [*path, dependency])
            if found:
                return found
        return None

    return next((c for m in sorted(graph) if (c := visit(m, [m]))), None)


def test_no_module_of_the_charm_imports_another_in_a_cycle():
    graph = {f.stem: local_imports(f) for f in PACKAGE.glob("*.py")}
    assert "backends" in graph["charm"], "the graph is read"
    assert cycle(graph) is None


def test_the_cycle_finder_finds_the_old_charm_actions_circle():
    assert cycle({"charm": {"actions"}, "actions": {"charm"}}) == ["actions", "charm", "actions"]
