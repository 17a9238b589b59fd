"""The shape of the source that docs/architecture.md promises, checked on the source itself.

- no import circle between the project's modules (imports inside functions included);
- no function longer than ``MAX_FUNCTION_LINES`` in the installed packages, unless the line above it says why
  (``# long: <reason>``);
- the loop, checkpoints, protocols and export never compare against an objective or encoder name: they ask the
  registries (training/objectives, training/encoders, export/serving.py).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("crossclr_infer", "training", "export")
MAX_FUNCTION_LINES = 60
# the names objectives and encoder kinds are selected by (configuration values)
REGISTERED_NAMES = {"crossclr", "mamp", "transformer", "stgcn", "spatial", "flow", "adaptive"}
NAME_FREE = ["training/trainer.py", "training/checkpoint.py", "training/protocols", "export"]


def source_files(*roots: str, base: Path = ROOT) -> Iterator[Path]:
    for root in roots:
        path = base / root
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def module_name(path: Path, base: Path = ROOT) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], base: Path = ROOT) -> set[str]:
    """The project modules ``path`` imports anywhere in it (``from a import b`` counts ``a`` and ``a.b``)."""
    name = module_name(path, base)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def import_cycles(base: Path = ROOT) -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (Tarjan, iterative)."""
    paths = {module_name(p, base): p for p in source_files(*PACKAGES, "cli.py", base=base) if p.exists()}
    graph = {m: sorted(imported_modules(p, set(paths), base)) for m, p in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            for j in range(i, len(graph[node])):
                nxt = graph[node][j]
                if nxt not in index:
                    work += [(node, j + 1), (nxt, 0)]
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return cycles


def test_no_import_circle_anywhere() -> None:
    assert import_cycles() == []


def test_the_cycle_finder_sees_a_circle(tmp_path: Path) -> None:
    """The checker itself: a two-module circle through an import inside a function is found."""
    pkg = tmp_path / "crossclr_infer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from crossclr_infer import b\n")
    (pkg / "b.py").write_text("def f():\n    from crossclr_infer.a import x\n")
    assert import_cycles(tmp_path) == [["crossclr_infer.a", "crossclr_infer.b"]]


def long_functions(paths: list[Path]) -> list[str]:
    offenders = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            reason = lines[first - 2].strip() if first >= 2 else ""
            if length > MAX_FUNCTION_LINES and not reason.startswith("# long:"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return offenders


def test_no_function_over_sixty_lines_without_a_reason() -> None:
    assert long_functions(list(source_files(*PACKAGES))) == []


def name_comparisons(path: Path, base: Path = ROOT) -> list[str]:
    """Comparisons (==, !=, in, not in) of anything with a registered objective or encoder name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        literals = {c.value for o in operands for c in ast.walk(o)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        for name in sorted(literals & REGISTERED_NAMES):
            found.append(f"{path.relative_to(base)}:{node.lineno} compares with {name!r}")
    return found


@pytest.mark.parametrize("where", NAME_FREE)
def test_loop_checkpoints_protocols_and_export_never_compare_method_names(where: str) -> None:
    found = [f for p in source_files(where) for f in name_comparisons(p)]
    assert found == []


def test_the_name_check_sees_a_comparison(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f(cfg):\n    return cfg.objective == 'mamp' or 'flow' in cfg.graphs\n")
    assert name_comparisons(probe, tmp_path) == ["probe.py:2 compares with 'mamp'",
                                                 "probe.py:2 compares with 'flow'"]
