"""The package's layout: no module of pxgrpc imports one that imports it back (no import cycles).

The import graph is read from the source (AST), not by importing: an edge A -> B for every
``import pxgrpc.B`` or ``from pxgrpc[.pkg] import B`` in A, where ``from pxgrpc import wire`` points
at the submodule ``pxgrpc.wire`` and ``from pxgrpc.client import Client`` at the package
``pxgrpc.client``. Imports under ``if TYPE_CHECKING:`` only serve annotations and never run, so
they are left out. Module-level imports (run when A is loaded) and imports inside functions (run
later, on a call) are checked separately: the first must be acyclic outright.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pxgrpc"

Graph = dict[str, set[str]]


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node`` (none under TYPE_CHECKING), and whether it sits in a
    function."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _imports(child, inner)


def _targets(stmt: ast.Import | ast.ImportFrom, module: str, modules: dict[str, pathlib.Path]) -> set[str]:
    """The pxgrpc modules an import statement in ``module`` loads."""
    if isinstance(stmt, ast.Import):
        return {alias.name for alias in stmt.names if alias.name in modules}
    base = stmt.module or ""
    if stmt.level:
        package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
        parts = package.split(".")[: len(package.split(".")) - stmt.level + 1]
        base = ".".join([*parts, base] if base else parts)
    if base not in modules:
        return set()
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in stmt.names}


def import_graphs() -> tuple[Graph, Graph]:
    """(module-level imports, all imports) of every pxgrpc module, as module -> imported modules."""
    modules = _modules()
    at_load: Graph = {name: set() for name in modules}
    everywhere: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        for stmt, in_function in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = _targets(stmt, name, modules) - {name}
            everywhere[name] |= targets
            if not in_function:
                at_load[name] |= targets
    return at_load, everywhere


def cycles(graph: Graph) -> set[tuple[str, ...]]:
    """Every elementary cycle of ``graph``, each starting at its smallest module name."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                found.add(tuple(path))
            elif nxt > start and nxt not in path:
                walk(start, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def _describe(found: set[tuple[str, ...]]) -> str:
    return "; ".join(" -> ".join([*cycle, cycle[0]]) for cycle in sorted(found))


def test_the_graph_sees_imports_of_submodules_through_their_package() -> None:
    at_load, _ = import_graphs()
    assert "pxgrpc.wire" in at_load["pxgrpc.controller.state"]  # from pxgrpc import wire
    assert (
        "pxgrpc.security.certs" in at_load["pxgrpc.security.certfiles"]
    )  # from pxgrpc.security import certs
    assert "pxgrpc.security.tokens" in at_load["pxgrpc.security.interceptor"]


def test_cycle_finder_names_each_cycle_once_from_its_smallest_module() -> None:
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == {("a", "b"), ("a", "b", "c")}
    assert _describe({("a", "b")}) == "a -> b -> a"


def test_no_module_imports_at_load_a_module_that_imports_it_back() -> None:
    at_load, _ = import_graphs()
    found = cycles(at_load)
    assert not found, f"import cycles at module level: {_describe(found)}"


#: The one lazy hook from the core to the IPython front end. The front end is built on the client
#: (its magics drive a Client), so the hook's imports, made on first use from inside functions, are
#: the one sanctioned way back; `tests/test_imports.py` checks no other core module takes it.
FRONT_END_HOOK = "pxgrpc.client.frontend"
FRONT_END = "pxgrpc.ipython"


def test_no_import_cycles_even_through_imports_inside_functions() -> None:
    _, everywhere = import_graphs()
    everywhere[FRONT_END_HOOK] = {m for m in everywhere[FRONT_END_HOOK] if not m.startswith(FRONT_END)}
    found = cycles(everywhere)
    assert not found, f"import cycles (counting imports inside functions): {_describe(found)}"
