"""The package's import structure: no cycles, and light commands stay light.

An import cycle makes the order modules load in matter, and turns a harmless
edit (one more name imported at the top of a file) into an ImportError that
only some entry points hit; it also means two modules own one concept between
them. So the graph of ``glimpse_edge``'s imports is built from the source and
checked here (issue 14, "the import graph has no cycle").

Imports are sorted by when they run:

* module level: when the module is imported (class bodies included). These
  must have no cycle at all;
* function level: when the function is called (deferred imports, used to keep
  a command's start-up light). Added to the module level ones, they must have
  no cycle either, except the known ones listed below;
* ``if TYPE_CHECKING:``: never at run time, only for the type checker, which
  needs no order. Left out.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from support.agent import write_config

import glimpse_edge

PACKAGE = Path(glimpse_edge.__file__).resolve().parent

# Cycles through function-level imports that other parts of issue 14 remove.
# Each entry is the set of modules in one strongly connected component; a
# cycle that is gone must be taken off this list (the test says so).
KNOWN_DEFERRED_CYCLES: frozenset[frozenset[str]] = frozenset({
    # ``glimpse-edge devserver`` imports devserver.__main__ in its handler, and
    # devserver.__main__ takes its argument parser and description from cli.
    frozenset({"glimpse_edge.cli", "glimpse_edge.devserver.__main__"}),
})


@dataclass
class ImportGraph:
    """Edges importer -> imported module, within the package, by when they run."""

    modules: set[str] = field(default_factory=set)
    module_level: dict[str, set[str]] = field(default_factory=dict)
    function_level: dict[str, set[str]] = field(default_factory=dict)

    def combined(self) -> dict[str, set[str]]:
        edges = {m: set(t) for m, t in self.module_level.items()}
        for m, targets in self.function_level.items():
            edges.setdefault(m, set()).update(targets)
        return edges


def _module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def build_import_graph(root: Path = PACKAGE) -> ImportGraph:
    """Parse every module of the package under ``root`` and collect its imports."""
    files = _module_names(root)
    graph = ImportGraph(modules=set(files))
    for module, path in files.items():
        collector = _Imports(module, path.name == "__init__.py", files)
        collector.visit(ast.parse(path.read_text(), str(path)), collector.module_level)
        graph.module_level[module] = collector.module_level
        graph.function_level[module] = collector.function_level
    return graph


class _Imports:
    """One module's imports of the package's modules, by when they run.

    ``from X import name`` counts as importing ``X.name`` when that is a
    module, else ``X``. Importing ``a.b.c`` also runs the packages ``a`` and
    ``a.b`` first, so those are edges too, except the importer's own parent
    packages: they have begun to load before the importer did.
    """

    def __init__(self, module: str, is_package: bool, files: Mapping[str, Path]) -> None:
        self.module = module
        self.files = files
        self.package = module.split(".") if is_package else module.split(".")[:-1]
        self.ancestors = {".".join(self.package[:n]) for n in range(1, len(self.package) + 1)}
        self.module_level: set[str] = set()
        self.function_level: set[str] = set()

    def visit(self, node: ast.AST, edges: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            kind = edges
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                kind = self.function_level
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    self.visit(ast.Module(body=[stmt], type_ignores=[]), kind)
                continue  # the body never runs
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                kind.update(self.targets(child))
            self.visit(child, kind)

    def targets(self, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = self.package[: len(self.package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in self.files
                     else source for alias in node.names]
        for name in names:
            if name.split(".")[0] != PACKAGE.name:
                continue
            while name not in self.files:  # a name defined in a module, not a module
                name = name.rpartition(".")[0]
            parts = name.split(".")
            for n in range(1, len(parts)):
                parent = ".".join(parts[:n])
                if parent not in self.ancestors and parent != self.module:
                    yield parent
            if name != self.module:
                yield name


def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The graph's cycles: components of more than one module, or one importing itself.

    Tarjan's algorithm, iterative (the package is small, but recursion depth
    should not depend on it). Each component is sorted; largest first.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = []
        entering: str | None = start
        while entering is not None or work:
            if entering is not None:
                index[entering] = low[entering] = len(index)
                stack.append(entering)
                on_stack.add(entering)
                work.append((entering, sorted(edges.get(entering, ()))))
                entering = None
            v, pending = work[-1]
            if pending:
                w = pending.pop()
                if w not in index:
                    entering = w
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1 or v in edges.get(v, ()):
                    found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def _describe(cycles: list[list[str]], edges: Mapping[str, Iterable[str]]) -> str:
    largest = cycles[0]
    inside = [f"  {m} -> {', '.join(sorted(t for t in edges.get(m, ()) if t in largest))}"
              for m in largest]
    return (f"{len(cycles)} import cycle(s): {cycles}\n"
            f"largest ({len(largest)} modules), its edges:\n" + "\n".join(inside))


def test_the_graph_sees_the_package() -> None:
    """Guard the guard: a parser that finds no imports finds no cycles either."""
    graph = build_import_graph()
    assert "glimpse_edge.config" in graph.modules
    assert "glimpse_edge.config" in graph.module_level["glimpse_edge.agent"]
    assert "glimpse_edge.supervise" in graph.module_level["glimpse_edge.observe.server"]
    assert "glimpse_edge.agent" in graph.function_level["glimpse_edge.cli"]
    # type-only imports are left out (the observe package names its view for mypy only)
    assert "glimpse_edge.observe.view" not in graph.module_level["glimpse_edge.observe"]
    assert "glimpse_edge.observe.view" in graph.module_level["glimpse_edge.observe.status"]
    assert strongly_connected({"a": {"b"}, "b": {"c", "a"}, "c": {"c"}, "d": {"a"}}) == [
        ["a", "b"], ["c"]]


def test_module_level_imports_have_no_cycle() -> None:
    graph = build_import_graph()
    cycles = strongly_connected(graph.module_level)
    assert not cycles, _describe(cycles, graph.module_level)


def test_deferred_imports_add_no_cycle_but_the_known_ones() -> None:
    graph = build_import_graph()
    edges = graph.combined()
    cycles = {frozenset(c) for c in strongly_connected(edges)}
    new = sorted((sorted(c) for c in cycles - KNOWN_DEFERRED_CYCLES), key=lambda c: -len(c))
    assert not new, _describe(new, edges)
    gone = KNOWN_DEFERRED_CYCLES - cycles
    assert not gone, f"no longer a cycle, take it off KNOWN_DEFERRED_CYCLES: {gone}"


def test_supervise_and_the_configuration_share_only_a_leaf() -> None:
    """supervise never retries a Fatal error, ConfigError among them, without
    importing the configuration; fatal.py imports nothing of the package."""
    graph = build_import_graph()
    assert graph.module_level["glimpse_edge.fatal"] == set()
    edges = graph.combined()
    reached: set[str] = set()
    todo = ["glimpse_edge.supervise"]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert "glimpse_edge.config" not in reached, sorted(reached)


def _imported_by(args: list[str], env: Mapping[str, str] | None = None,
                 ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime ARGS``; the top-level packages it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                            text=True, timeout=60, env={**os.environ, **(env or {})})
    imported = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rpartition("|")[2].strip()
            imported.add(name.split(".")[0])
    return result, imported


RTC_STACK = ("aiortc", "aioice", "av")


def test_check_config_does_not_import_the_rtc_stack(tmp_path: Path) -> None:
    """``glimpse-edge check-config`` is run on a Pi by hand and by provisioning
    scripts: it must not pay for aiortc and PyAV (seconds on a Pi Zero), nor
    depend on their native libraries being loadable to say a file is fine."""
    config = write_config(tmp_path, ws_url="wss://glimpse.example/ws", room_id="r1",
                          token="a.b.c")
    result, imported = _imported_by(["-m", "glimpse_edge", "check-config", str(config)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "glimpse_edge" in imported and "msgspec" in imported  # the trace was read
    assert not imported & set(RTC_STACK), sorted(imported & set(RTC_STACK))
