"""Layout checks anyone can run: ``python -m tests.layout`` (also part of ``make test``).

- no module in ``flows/`` or ``tasks/`` is over ``MAX_LINES`` lines;
- no import cycle among the project's modules (imports anywhere in a file count, lazy
  ones inside functions included: a cycle broken by a lazy import is still a cycle);
- every source module has a test module at the mirrored path
  (``tasks/a/b.py`` -> ``tests/tasks/a/test_b.py``; a leading ``_`` is dropped; a package
  ``__init__.py`` with code of its own -> ``tests/tasks/a/test_a.py``, one that only
  exports names needs none).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks")
MAX_LINES = 500


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def too_long(found: dict[str, Path]) -> list[str]:
    out = []
    for path in found.values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            out.append(f"{path.relative_to(ROOT)}: {lines} lines (max {MAX_LINES})")
    return out


def imports(path: Path, name: str, found: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports (anywhere in the file)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule when there is one
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in found else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in found:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def cycles(found: dict[str, Path]) -> list[list[str]]:
    """Every strongly connected group of modules larger than one (Tarjan)."""
    graph = {name: imports(path, name, found) for name, path in found.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return groups


def _only_exports(path: Path) -> bool:
    """A package ``__init__`` with nothing but a docstring, imports and ``__all__``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            continue
        return False
    return True


def missing_tests(found: dict[str, Path]) -> list[str]:
    out = []
    for path in found.values():
        if path.name == "__init__.py" and _only_exports(path):
            continue
        rel = path.relative_to(ROOT)
        # a package's own code is tested in test_<package>.py inside its test folder
        stem = rel.parent.name if path.name == "__init__.py" else path.stem.lstrip("_")
        test = ROOT / "tests" / rel.parent / f"test_{stem}.py"
        if not test.exists():
            out.append(f"{rel}: no {test.relative_to(ROOT)}")
    return out


def problems() -> list[str]:
    found = modules()
    out = too_long(found)
    out += [f"import cycle: {' -> '.join(group)}" for group in cycles(found)]
    out += missing_tests(found)
    return out


if __name__ == "__main__":
    found_problems = problems()
    for line in found_problems:
        print(line)
    print(f"layout: {len(modules())} modules, {len(found_problems)} problems")
    sys.exit(1 if found_problems else 0)
