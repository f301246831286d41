"""The package layout's rules, read from the source with `ast`: no import cycle anywhere
in msting (TYPE_CHECKING imports count too), and the HTTP layer sees only the shared
types, the provider layer and itself."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "msting"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The msting modules `name` imports, anywhere in the file (a function-level import
    is still a dependency)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # the longest known module the target names (`from a.b import c`: a.b.c or a.b)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_the_graph_sees_the_real_imports():
    graph = _graph()
    assert "msting.daemon.local.model" in graph["msting.daemon.local.routing"]
    assert "msting.providers.router" in graph["msting.http.native"]
    assert "msting.daemon.local.supervisor" in graph["msting.daemon.local.model"]


def test_no_import_cycle():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_http_imports_only_the_shared_types_the_providers_and_itself():
    graph = _graph()
    allowed = ("msting.api", "msting.providers.base", "msting.providers.router", "msting.http")
    leaks = {
        name: sorted(dep for dep in deps if not any(dep == a or dep.startswith(a + ".") for a in allowed) and dep != "msting")
        for name, deps in graph.items() if name.startswith("msting.http")
    }
    leaks = {name: deps for name, deps in leaks.items() if deps}
    assert not leaks, f"msting.http reaches outside its layer: {leaks}"


def test_the_daemon_and_the_api_do_not_import_the_http_layer():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith(("msting.api", "msting.daemon.local", "msting.providers", "msting.worker")):
            assert not [d for d in deps if d.startswith("msting.http")], f"{name} imports the HTTP layer"
    for name, deps in graph.items():
        if name.startswith("msting.api"):
            assert all(d.startswith("msting.api") for d in deps), f"{name}: the shared types depend on nothing but themselves"


def test_llama_cpp_is_imported_only_by_the_worker_engine():
    users = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "llama_cpp" for n in names):
                users.append(name)
    assert sorted(set(users)) == ["msting.worker.engine"]
