"""Guards of the architecture (ARCHITECTURE.md, "Layers") that import-linter does not state.

The layers and the forbidden imports are import-linter contracts (`make lint`,
[tool.importlinter] in pyproject.toml). These tests add what it cannot say: no import cycle
anywhere in the package (a package and its own modules included), no import of cairn hidden
inside a function (where it would dodge a cycle) unless it is deferred for start-up time and
says so, and no module past the size where it asks to be split.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

import cairn

SRC = Path(cairn.__file__).parent
MAX_MODULE_LINES = 800
LAZY_MARK = "start-up"  # the comment a deferred import carries: `# deferred: start-up time (...)`


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_import_cycles_in_the_package() -> None:
    graph = grimp.build_graph("cairn", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            found.extend(n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom))
    return found


def _imports_cairn(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "cairn"
    return any(alias.name.split(".")[0] == "cairn" for alias in node.names)


def test_no_cairn_import_hidden_in_a_function_unless_deferred_for_start_up() -> None:
    hidden = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in _function_imports(ast.parse(text)):
            if not _imports_cairn(node):
                continue
            said = " ".join(lines[max(0, node.lineno - 2):node.end_lineno or node.lineno])
            if LAZY_MARK not in said:
                hidden.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert hidden == []


def test_no_module_asks_to_be_split() -> None:
    long = {str(p.relative_to(SRC)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}
