"""The README's charm-author example and its test, run as written (a README that lies fails)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"


def example(name: str) -> str:
    """The Python block that follows ``<!-- example: NAME ... -->`` in the README."""
    found = re.search(
        rf"<!-- example: {name}\b[^>]*-->\s*```python\n(.*?)```", README.read_text(), re.S
    )
    assert found, f"no '{name}' example in the README"
    return found.group(1)


def test_the_readme_author_example_and_its_test_pass_as_written():
    namespace: dict[str, Any] = {}
    exec(compile(example("charm"), "README charm", "exec"), namespace)  # noqa: S102 - our README
    exec(compile(example("test"), "README test", "exec"), namespace)  # noqa: S102 - our README
    tests = [value for key, value in namespace.items() if key.startswith("test_")]
    assert tests, "the README's test example defines no test"
    for test in tests:
        test()
