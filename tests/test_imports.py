"""No import cycles between xserve's modules.

The graph is built from the source (AST), so it sees every import statement: module
level and inside functions (a lazy import that closes a loop is still a cycle), but not
``if TYPE_CHECKING:`` blocks, which never run. ``import a.b.c`` and ``from a.b.c import
n`` import ``a.b.c``, ``a.b.c.n`` when that is a module, and the packages ``a`` and
``a.b`` (their ``__init__`` runs first), except the importer's own packages, which are
already loading. Registries load their entries by import string (``xserve.registry``):
that is no import statement, and needs no exception here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import xserve

PACKAGE = Path(xserve.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for node in child.orelse:
                yield from _import_nodes(ast.Module(body=[node], type_ignores=[]))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _import_nodes(child)


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The names of the modules ``node`` runs (inside xserve or not)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:  # relative: from the importer's package upwards
        package = module if module in PACKAGES else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return {base} | {f"{base}.{alias.name}" for alias in node.names}


def import_graph() -> dict[str, set[str]]:
    """Each xserve module and the xserve modules it imports."""
    graph = {}
    for module, path in MODULES.items():
        own = _ancestors(module) | ({module} if module in PACKAGES else set())
        edges: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for name in _imported(module, node):
                edges |= {m for m in {name} | _ancestors(name) if m in MODULES and m not in own}
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))
    return found


def _show(found: set[frozenset[str]]) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in sorted(found, key=sorted))


def test_the_graph_sees_imports_as_python_runs_them() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import never\nelse:\n    import always\n"
        "def later():\n    from .sibling import name\n"
    )
    nodes = _import_nodes(ast.parse(source))
    found = set().union(*(_imported("xserve.pkg.mod", node) for node in nodes))
    assert found == {
        "typing",
        "typing.TYPE_CHECKING",
        "always",
        "xserve.pkg.sibling",
        "xserve.pkg.sibling.name",
    }
    graph = import_graph()
    assert "xserve.repository.manifest" in graph["xserve.repository.version"]
    assert "xserve.runtimes" in graph["xserve.repository.version"]  # its __init__ runs
    assert "xserve.repository.version" not in graph["xserve.explainers.base"]


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert cycles(graph) == {frozenset("abc"), frozenset("de")}


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles: {_show(found)}"


def test_the_repository_loads_no_explainer_and_the_explainer_interface_no_repository() -> None:
    """``version.py`` needs only the explainer interface, which must not load the rest."""
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    assert {
        m for m in reach("xserve.repository.version") if m.startswith("xserve.explainers.")
    } <= {
        "xserve.explainers.base",
        "xserve.explainers.registry",  # import strings only, for the manifest
    }
    assert not {m for m in reach("xserve.explainers.base") if m.startswith("xserve.repository")}
    for runtime in ("onnx", "sklearn", "xgboost", "mlflow"):
        assert "xserve.runtimes.registry" not in reach(f"xserve.runtimes.{runtime}")
    for method in ("anchors", "kernel_shap", "lime", "linear_shap", "onnx_trees", "tree_shap"):
        assert "xserve.explainers.registry" not in graph[f"xserve.explainers.{method}"]
