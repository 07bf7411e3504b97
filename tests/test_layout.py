"""The tree shows the actors: clients, the main loop and workers each live in a folder of their
own over the shared layers (wire/, core/, server/ and the public types), and none of them
imports another. Checked on the source's import statements, lazy and type-only ones included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "workpool"
ACTORS = frozenset({"client", "mainloop", "worker"})
#: composers build processes, commands, servers (operate) and the testing kit from the actors;
#: nothing else may import them
COMPOSERS = frozenset({"cli", "chaos", "operate", "process", "testing", "__main__", "__init__"})
MAX_LINES = 300


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The workpool modules `path` imports (a package's names resolved to its modules)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "workpool":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "workpool"}
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _area(module: str) -> str:
    """The folder (or top-level module) a module belongs to: `worker`, `wire`, `types`..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_actor_imports_another_actor_or_a_composer() -> None:
    wrong = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _area(m) in ACTORS
                   for d in deps if _area(d) != _area(m) and _area(d) in ACTORS | COMPOSERS)
    assert not wrong, "actors import only wire/, core/, server/ and the public types:\n" + \
        "\n".join(wrong)


def test_the_shared_layers_import_no_actor_and_no_composer() -> None:
    wrong = sorted(f"{m} -> {d}" for m, deps in GRAPH.items()
                   if _area(m) not in ACTORS | COMPOSERS
                   for d in deps if _area(d) in ACTORS | COMPOSERS)
    assert not wrong, "what every actor shares cannot depend on one:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        for d in GRAPH.get(m, ()):
            if d not in index:
                visit(d)
                low[m] = min(low[m], low[d])
            elif d in stack:
                low[m] = min(low[m], index[d])
        if low[m] == index[m]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == m:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other: {cycles}"


def test_no_module_is_over_300_lines() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"


def test_the_checks_see_the_whole_package() -> None:
    # a check that read no module, or no import, would pass for nothing
    assert {_area(m) for m in MODULES} >= ACTORS | {"wire", "core", "server", "cli", "chaos"}
    assert "workpool.wire.keys" in GRAPH["workpool.worker.liveness"]
