"""The mappers stay pure: stdlib, ``drivers.models`` and themselves, nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import mappers

ALLOWED_FIRST_PARTY = {"drivers.models", "mappers"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_mappers_import_only_stdlib_and_models() -> None:
    files = sorted(Path(mappers.__file__).parent.glob("*.py"))
    assert files
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            assert module in ALLOWED_FIRST_PARTY or module.startswith("mappers."), (
                f"{path.name} imports {module}"
            )
