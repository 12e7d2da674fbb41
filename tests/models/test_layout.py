"""Dependencies run one way: pipeline <- models <- stages <- apps (DESIGN.md, "Filters").

Read from the source (every import statement, module level or inside a function), so a lazy
import that breaks the rule is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each package must never import (top-level module names).
FORBIDDEN = {
    "pipeline": {"models", "stages", "apps", "tensorflow", "larq", "ultralytics", "torch", "faster_whisper"},
    "models": {"stages", "apps"},
    "stages": {"apps"},
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    broken = {str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package]) for path in files}
    assert {name: bad for name, bad in broken.items() if bad} == {}


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def load():\n    import tensorflow as tf\n    from stages.results import Decision\n")
    assert imported_modules(module) == {"tensorflow", "stages"}
