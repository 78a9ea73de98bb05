"""The package's shape, checked from its source: layers import downwards only, no import cycle,
modules small enough to read in one pass (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"
REMOTE = PACKAGE / "hosts" / "remote"

#: Each layer may import its own modules and those of lower rank, never a higher one. The
#: testbed (simulated GPU hosts for tests, the demo and `orchestrator testbed`) stands alone.
RANK = {"errors": 0, "xdg": 0, "core": 1, "hosts": 2, "deploy": 3, "reverify": 4, "daemon": 5,
        "cli": 6, "testbed": 1, "demo": 8, "demo_image": 8, "bench": 8, "__main__": 8}
MAX_LINES = 400


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if REMOTE in path.parents:
            continue  # shipped host scripts: a separate program (stdlib only, tested apart)
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def top_level_imports(path: Path) -> Iterator[str]:
    """Imports run when the module is imported: the module body, not functions, not
    `if TYPE_CHECKING:` blocks (a lazy import inside a function cannot form a load cycle)."""
    tree = ast.parse(path.read_text("utf-8"))
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If):
            test = node.test
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                continue
            todo.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            todo.extend(node.body + node.orelse + node.finalbody)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("orchestrator"):
                yield node.module
                yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("orchestrator"))


def all_imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("orchestrator"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("orchestrator"))


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[1:3] == ["hosts", "remote"]:
        # The host-side modules import nothing of the package (stdlib only: test_hostops);
        # the controller reads some of them as data (the model-format registry).
        return "errors"
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_downwards_only() -> None:
    upward = [f"{mod} imports {other}" for mod, path in modules() for other in all_imports(path)
              if layer(mod) in RANK and layer(other) in RANK
              and RANK[layer(other)] > RANK[layer(mod)]]
    assert upward == []


def test_every_package_module_has_a_layer() -> None:
    assert {layer(mod) for mod, _ in modules()} - {""} <= set(RANK)


def test_no_import_cycle() -> None:
    known = dict(modules())
    # A module's own ancestors are loaded before it whatever it imports: not an edge.
    graph = {mod: sorted({i for i in top_level_imports(path)
                          if i in known and not mod.startswith(i + ".") and i != mod})
             for mod, path in known.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        for dep in graph[mod]:
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[mod] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [mod])
    assert cycles == []


@pytest.mark.parametrize("module", [m for m, _ in modules()])
def test_module_is_readable_in_one_pass(module: str) -> None:
    path = dict(modules())[module]
    lines = len(path.read_text("utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)}: {lines} lines"


def test_every_package_path_the_docs_name_exists() -> None:
    """A module that moved takes its mentions in README.md and docs/ with it."""
    root = PACKAGE.parent
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = {m for path in texts
             for m in re.findall(r"orchestrator/[A-Za-z0-9_/]+\.(?:py|sh|json|c)\b",
                                 path.read_text("utf-8"))}
    assert named, "the docs name no module at all: the pattern is wrong"
    assert sorted(m for m in named if not (root / m).exists()) == []
