"""Imports flow one way: every package sits on a layer and imports only from the layers below it.

Parsed with :mod:`ast` from the source (imports under ``TYPE_CHECKING`` count: a
type-only cycle is still a cycle to the reader and the type checker). Three
rules:

* no package imports one on its own layer or above it (:data:`LAYERS`);
* no cycle between modules, within a package too;
* no function-local import of the project's own modules (they hide cycles).
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "pgtenantproxy"

#: Lowest first. A package may import from any layer strictly below its own (and from itself).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "protocol", "config", "embedded", "sample", "sqltext"}),
    frozenset({"net", "lifecycle", "session", "routing", "reload", "web"}),
    frozenset({"pools", "tenancy"}),
    frozenset({"dualwrite"}),
    frozenset({"dispatch"}),
    frozenset({"migration", "metrics"}),
    frozenset({"server"}),
    frozenset({"admin"}),
    frozenset({"app"}),
    frozenset({"walkthrough"}),
    frozenset({"cli"}),
    frozenset({"__main__"}),
)
LAYER_OF = {pkg: level for level, pkgs in enumerate(LAYERS) for pkg in pkgs}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(
    tree: ast.AST, module: str, is_package: bool, modules: Collection[str]
) -> Iterator[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import in ``tree``.

    ``from pkg import name`` imports the module ``pkg.name`` when there is one, else ``pkg`` itself.
    """
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    local = {id(n) for fn in functions for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pgtenantproxy"):
                    yield alias.name, node.lineno, id(node) in local
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:  # relative import
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, name] if name else base)
            if not name.startswith("pgtenantproxy"):
                continue
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                yield (sub if sub in modules else name), node.lineno, id(node) in local


def _graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    upward: list[str] = []
    local: list[str] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, line, in_function in _imports(tree, module, path.name == "__init__.py", modules):
            if target not in modules:
                continue  # ``from pkg import name`` where name is not a module
            where = f"{path.relative_to(ROOT.parent)}:{line} imports {target}"
            if in_function:
                local.append(where)
            if target != module:
                graph[module].add(target)
            src, dst = _package(module), _package(target)
            if src != dst and LAYER_OF[dst] >= LAYER_OF[src]:
                upward.append(where)
    return graph, upward, local


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_every_package_has_a_layer() -> None:
    packages = {_package(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert packages <= set(LAYER_OF), f"add to LAYERS: {sorted(packages - set(LAYER_OF))}"


def test_no_package_imports_upward() -> None:
    _, upward, _ = _graph()
    assert upward == [], "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    graph, _, _ = _graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_function_local_imports_of_the_project() -> None:
    _, _, local = _graph()
    assert local == [], "function-local imports:\n" + "\n".join(local)


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a2"}, "a2": set(), "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
])
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert _cycle(graph) == expected
