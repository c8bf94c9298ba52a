"""No import circle anywhere in the tree, and every module imports in any order.

A circle between modules works only as long as nobody changes which side is imported first or
which names are read at import time; it also hides a missing seam (the usual fix is a third module
both sides import, or a value injected at start). Two checks:

(a) Static: each module is parsed with ``ast`` and every import of a project module is an edge:
    module level, under ``if TYPE_CHECKING:`` (a circle in disguise: the types name a dependency the
    code denies), in ``try``/``if`` blocks, and inside functions (a deferred import that closes a
    circle only moves the failure to the first call). ``from pkg import name`` counts as an import of
    ``pkg.name`` when that is a module, else of ``pkg``. Importing ``a.b.c`` also runs ``a`` and
    ``a.b``'s ``__init__``; those edges are left out, as our ``__init__`` files import nothing
    (checked below). Imports by string (``autodiscover_tasks``, ``include=[...]``,
    ``config_from_object``) are not seen; the subprocess check covers them.
(b) Dynamic: a fresh interpreter imports every module, in several orders.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "workers", "textgen_core", "textgen_cli", "bench")
TOP_MODULES = ("celeryconfig",)


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages above."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for name in TOP_MODULES:
        found[name] = ROOT / f"{name}.py"
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``module`` imports anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # ``import api.x.y`` with y a name, not a module
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                add(full if full in known else target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(component)) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete path a -> b -> ... -> a inside one strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError("a strongly connected component without a cycle")


def test_cycle_finder_names_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_type_checking_and_function_imports(tmp_path: Path) -> None:
    """The two kinds of import that hide circles are edges too."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.b import B\n"
        "def f():\n    from pkg import c\n    from .d import thing\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    assert imports_of("pkg.a", path, {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"}) == {"pkg.b", "pkg.c", "pkg.d"}


def test_no_import_circle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_package_inits_import_nothing_from_the_project() -> None:
    """Why the graph may leave out the edge to each parent package's ``__init__``."""
    modules = project_modules()
    known = set(modules)
    heavy = {name: sorted(imports_of(name, path, known)) for name, path in modules.items()
             if path.name == "__init__.py" and imports_of(name, path, known)}
    assert not heavy


ORDERS = ("sorted", "reversed", "shuffled")


@pytest.mark.parametrize("order", ORDERS)
def test_every_module_imports_in_any_order(order: str) -> None:
    names = sorted(project_modules())
    if order == "reversed":
        names.reverse()
    elif order.startswith("shuffled"):
        random.Random(order).shuffle(names)
    code = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
