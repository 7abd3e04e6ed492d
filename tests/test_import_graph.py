"""The import graph of the first-party packages: no cycles, and the HTTP layer (``manager.api``) stays on top.

Every ``.py`` file of the first-party packages is parsed with :mod:`ast` (nothing is imported), and each
``import``/``from ... import`` statement becomes an edge, wherever it is:

* at module level (also inside ``try``/``if`` blocks and class bodies);
* inside a function ("lazy"): it runs later, but the two modules still need each other, and a lazy import that
  closes a cycle usually hides a piece of code that sits in the wrong module;
* under ``if TYPE_CHECKING:``: never run, but the type checker follows it and the modules are still coupled.

All three count. An edge that must stay (a lazy import that breaks a cycle on purpose, say) goes into
``ALLOWED_EDGES`` with the reason; the list is empty today.

Resolution: ``import a.b`` is an edge to ``a.b``; ``from a import b`` is an edge to the module ``a.b`` when
there is one, else to ``a``; relative imports are resolved against the importing module's package. The parent
packages that Python initialises along the way (``a`` for ``import a.b``) are not edges: every submodule would
otherwise "import" its package's ``__init__``, and a package that re-exports its submodules would be a cycle.

Imports by name at run time (``importlib.import_module("manager.cli.up")`` in ``manager.cli.main``) are not
seen; no first-party module imports ``manager.cli.main`` back today.

A cycle is a strongly connected component of more than one module, or a module that imports itself.

Layer rule: only ``manager.api`` itself and the modules that assemble the aiohttp application
(``ALLOWED_API_IMPORTERS``) import ``manager.api.*``; domain code (``manager.endpoints``, the control loops,
the CLI, ...) must not depend on the HTTP layer. Tests may import anything (they are not scanned).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("agent", "appproxy", "common", "manager", "migrations")
API = "manager.api"

# (importer, imported) → why the edge is allowed to close a cycle. Keep it empty if you can.
ALLOWED_EDGES: dict[tuple[str, str], str] = {}

# Modules outside manager.api that may import manager.api.*, with the reason.
ALLOWED_API_IMPORTERS: dict[str, str] = {
    "manager.server": "build_manager_app assembles the aiohttp application: the route modules and auth_middleware",
    "manager.console.app": "assembles the console's application: the API's route tables under /api/, and sets the "
                           "same Caller (manager.api.auth.CALLER) from a console session",
    "manager.console.chat_relay": "a console-only HTTP handler (the chat relay): reads the session's Caller "
                                  "(manager.api.auth.caller_of) and parses the path (manager.api.util)",
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    kind: str  # "module", "lazy" (inside a function) or "typing" (under `if TYPE_CHECKING:`)

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.path()}:{self.line}, {self.kind})"

    def path(self) -> str:
        return MODULES[self.importer].relative_to(ROOT).as_posix()


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, kind: str = "module") -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement under ``tree`` with where it runs; a function body makes its imports lazy."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _imports(node, "typing" if kind == "typing" else "lazy")
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), "typing")
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), kind)
        else:
            yield from _imports(node, kind)


def _package_of(module: str) -> str:
    is_package = MODULES[module].name == "__init__.py"
    return module if is_package else module.rpartition(".")[0]


def _first_party(name: str) -> str | None:
    """``name`` or its nearest enclosing first-party module (``import a.b.c`` of a name in ``a.b``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (target := _first_party(alias.name)) is not None:
                yield target
        return
    if node.level:
        base = _package_of(module)
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        target = submodule if submodule in MODULES else _first_party(source)
        if target is not None:
            yield target


def import_edges() -> list[Edge]:
    edges: dict[Edge, None] = {}  # one edge per statement and target (`from a import b, c` of two names in a)
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, kind in _imports(tree):
            for target in _targets(module, node):
                edges[Edge(module, target, node.lineno, kind)] = None
    return list(edges)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def import_cycles(edges: list[Edge]) -> list[tuple[list[str], list[Edge]]]:
    """Each cycle's modules and the edges among them (allowed edges left out of the graph)."""
    kept = [e for e in edges if (e.importer, e.imported) not in ALLOWED_EDGES]
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for edge in kept:
        graph[edge.importer].add(edge.imported)
    cycles = []
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) > 1 or component[0] in graph[component[0]]:
            inner = [e for e in kept if e.importer in members and e.imported in members]
            cycles.append((component, sorted(inner, key=lambda e: (e.importer, e.line))))
    return sorted(cycles)


def api_imports_from_outside(edges: list[Edge]) -> list[Edge]:
    def in_api(module: str) -> bool:
        return module == API or module.startswith(API + ".")

    return [
        e for e in edges if in_api(e.imported) and not in_api(e.importer) and e.importer not in ALLOWED_API_IMPORTERS
    ]


def test_graph_sees_the_first_party_modules() -> None:
    # The scan itself: every package is found and the obvious edges are there (a resolution bug that drops
    # edges would otherwise pass the tests below vacuously).
    edges = {(e.importer, e.imported) for e in import_edges()}
    assert {"manager.server", "manager.api.auth", "appproxy.server", "agent.server", "common.store"} <= set(MODULES)
    assert ("manager.server", "manager.api.auth") in edges  # from manager.api.auth import auth_middleware
    assert ("manager.server", "manager.api.services") in edges  # from manager.api import services
    assert ("agent.runtime", "agent.runtime.local") in edges  # lazy, in make_runtime
    assert ("appproxy.server", "appproxy.fastpath") in edges


def test_import_resolution_and_kinds() -> None:
    # No first-party module uses relative imports today; resolve them right if one starts to.
    def targets(module: str, source: str) -> list[str]:
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.Import | ast.ImportFrom)
        return list(_targets(module, node))

    assert targets("manager.api.services", "from . import auth, util") == ["manager.api.auth", "manager.api.util"]
    assert targets("manager.api.services", "from .. import config") == ["manager.config"]
    assert targets("manager.api.services", "from ..db.models import User") == ["manager.db.models"]
    assert targets("manager.api.gql", "from . import schema") == ["manager.api.gql.schema"]  # a package's own
    assert targets("manager.api.gql", "from .filters import parse_filter") == ["manager.api.gql.filters"]
    assert targets("manager.server", "from manager.api import services") == ["manager.api.services"]
    assert targets("manager.server", "from manager import __version__") == ["manager"]
    assert targets("manager.server", "import manager.api.auth, aiohttp") == ["manager.api.auth"]
    assert targets("manager.server", "import os.path") == []

    source = (
        "import common.errors\n"
        "if TYPE_CHECKING:\n    import common.store\n    def f():\n        import common.slots\n"
        "else:\n    import common.aio\n"
        "class C:\n    import common.status\n    def m(self):\n        import common.tls\n"
        "g = lambda: __import__('x')\n"
        "try:\n    import common.signing\nexcept ImportError:\n    pass\n"
    )
    found = {node.names[0].name: kind for node, kind in _imports(ast.parse(source)) if isinstance(node, ast.Import)}
    assert found == {
        "common.errors": "module",
        "common.store": "typing",
        "common.slots": "typing",
        "common.aio": "module",
        "common.status": "module",
        "common.tls": "lazy",
        "common.signing": "module",
    }


def test_strongly_connected_finds_cycles_and_self_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"], ["e"]]


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_edges())
    report = "\n\n".join(
        f"cycle of {len(members)} modules: {', '.join(members)}\n" + "\n".join(f"  {e}" for e in inner)
        for members, inner in cycles
    )
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s) among first-party modules:\n\n{report}", pytrace=False)


def test_allowed_edges_still_exist() -> None:
    edges = {(e.importer, e.imported) for e in import_edges()}
    assert [pair for pair in ALLOWED_EDGES if pair not in edges] == [], "ALLOWED_EDGES lists imports that are gone"


def test_only_app_wiring_imports_the_http_layer() -> None:
    assert all(module in MODULES for module in ALLOWED_API_IMPORTERS)
    outside = api_imports_from_outside(import_edges())
    if outside:
        report = "\n".join(f"  {e}" for e in outside)
        pytest.fail(
            f"{len(outside)} import(s) of {API}.* from outside the HTTP layer "
            f"(allowed: {sorted(ALLOWED_API_IMPORTERS)}):\n{report}",
            pytrace=False,
        )


# Handler modules that are thin adapters: they parse the request, call the service domain (manager.services) and
# render with manager.api.views; they build no SQL. New handler modules join the list once they are thin.
THIN_HANDLERS = (
    "manager.api.services",
    "manager.api.service_ops",
    "manager.api.service_update",
    "manager.api.tokens",
    "manager.api.routings",
)
DOMAIN = "manager.services"
# What a thin handler may take from SQLAlchemy: the session type, to annotate a helper that runs inside one.
HANDLER_SQLALCHEMY_ALLOWED = ("sqlalchemy.ext.asyncio",)


def third_party_imports(module: str) -> list[tuple[str, int]]:
    """Every module name ``module`` imports (first-party or not), with its line, wherever the import runs."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names: list[tuple[str, int]] = []
    for node, _kind in _imports(tree):
        if isinstance(node, ast.Import):
            names.extend((alias.name, node.lineno) for alias in node.names)
        elif node.level == 0 and node.module:
            names.append((node.module, node.lineno))
    return names


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_thin_handlers_build_no_sql() -> None:
    assert all(module in MODULES for module in THIN_HANDLERS)
    found = [
        f"  {module} imports {name} (line {line})"
        for module in THIN_HANDLERS
        for name, line in third_party_imports(module)
        if _under(name, "sqlalchemy") and not any(_under(name, ok) for ok in HANDLER_SQLALCHEMY_ALLOWED)
    ]
    assert not found, "handlers must call manager.services instead of querying:\n" + "\n".join(found)


def test_service_domain_has_no_http() -> None:
    domain = [m for m in MODULES if _under(m, DOMAIN)]
    assert len(domain) > 3  # the package is found (else this test would pass vacuously)
    found = [
        f"  {module} imports {name} (line {line})"
        for module in domain
        for name, line in third_party_imports(module)
        if _under(name, "aiohttp") or _under(name, API)
    ]
    assert not found, "the service domain takes plain values, not requests:\n" + "\n".join(found)


def test_third_party_imports_sees_what_the_rules_look_for() -> None:
    # the scan behind the two tests above: a query or an aiohttp import where they are refused would be seen
    assert any(n == "sqlalchemy" for n, _ in third_party_imports("manager.services.read"))
    assert any(_under(n, "aiohttp") for n, _ in third_party_imports("manager.api.services"))
