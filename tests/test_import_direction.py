"""The house rules of docs/architecture.md, checked on the source: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> top-level modules its code must never import (anywhere, not only at the top of a file)
FORBIDDEN = {
    "crossclr_infer": {"torch", "training", "export", "cli"},
    "training": {"export", "cli"},
    "export": {"cli"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file (relative imports stay inside the package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package: str) -> None:
    offenders = {f"{p.relative_to(ROOT)} imports {sorted(imported_roots(p) & FORBIDDEN[package])}"
                 for p in sorted((ROOT / package).rglob("*.py")) if imported_roots(p) & FORBIDDEN[package]}
    assert not offenders, "\n".join(sorted(offenders))
