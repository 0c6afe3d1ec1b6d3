"""The import graph of moed's packages (daemon/, clients/, governor/), read statically with ast, holds the layering.

What is checked, over every .py file of the three folders (imports resolved to module names, relative ones
against the importing module's package):
- no import cycle among modules at import time. An import inside a function (lazy by design: it runs after every
  module is loaded, so it cannot meet a half-initialised module) or under `if TYPE_CHECKING:` is not an import-time
  edge and is left out; importing `moed.x.y` also runs `moed.x`'s `__init__`, which is an edge unless the importer
  is inside `moed.x` itself;
- the three packages depend one way (all imports count, lazy and typing-only ones too): no package-level cycle, and
  neither clients/ nor governor/ imports moed.daemon or MLX (mlx, mlx_lm), so both install and run without them;
- one import rule: relative inside a package (`from .store import format`), absolute `moed.clients...` across
  packages. So no absolute `moed.X` import inside package X, and no relative import that leaves its package.
A second test imports every clients/ and governor/ module in a subprocess where importing MLX fails, which also
catches MLX reached through a third-party module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "clients", "governor")  # folder name == subpackage of the `moed` namespace
NO_DAEMON_NO_MLX = ("clients", "governor")
MLX = ("mlx", "mlx_lm")



@dataclass(frozen=True)
class Import:
    """One imported module, as one import statement names it."""

    importer: str  # module name, e.g. moed.daemon.store.reader
    path: Path
    line: int
    statement: str  # the source text, for messages and the allow-list
    target: str  # the imported module: the longest known module name for one of ours, else as written
    level: int  # 0 for absolute, else the number of leading dots
    lazy: bool  # inside a function body
    typing_only: bool  # under `if TYPE_CHECKING:`

    @property
    def at_import_time(self) -> bool:
        return not (self.lazy or self.typing_only)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.statement}"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the three packages: name -> (file, is a package's __init__)."""
    out: dict[str, tuple[Path, bool]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            if "__pycache__" in rel:
                continue
            is_pkg = rel[-1] == "__init__"
            out[".".join(("moed", *(rel[:-1] if is_pkg else rel)))] = (path, is_pkg)
    return out


MODULES = _modules()


def _known(name: str) -> str:
    """The longest prefix of `name` that is one of our modules (a name imported from a module is not one)."""
    parts = name.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """Walks one module, noting each import with whether it sits in a function or under TYPE_CHECKING."""

    def __init__(self, module: str, path: Path, is_pkg: bool, source: str) -> None:
        self.module, self.path, self.is_pkg, self.source = module, path, is_pkg, source
        self.imports: list[Import] = []
        self.errors: list[str] = []
        self._lazy = self._typing = 0

    def _add(self, node: ast.stmt, target: str, level: int) -> None:
        statement = " ".join((ast.get_source_segment(self.source, node) or "").split())
        self.imports.append(Import(self.module, self.path, node.lineno, statement, _known(target), level,
                                   self._lazy > 0, self._typing > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name, 0)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.module.split(".") if self.is_pkg else self.module.split(".")[:-1]
            if node.level - 1 >= len(package):  # would leave the `moed` namespace
                self.errors.append(f"{self.path.relative_to(ROOT)}:{node.lineno}: relative import beyond moed")
                return
            base = ".".join(package[: len(package) - (node.level - 1)] + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(node, sub if sub in MODULES else base, node.level)

    def _nested(self, node: ast.AST) -> None:
        self._lazy += 1
        self.generic_visit(node)
        self._lazy -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._typing += 1
        for stmt in node.body:
            self.visit(stmt)
        self._typing -= 1
        for stmt in node.orelse:
            self.visit(stmt)


def _collect() -> tuple[list[Import], list[str]]:
    imports: list[Import] = []
    errors: list[str] = []
    for module, (path, is_pkg) in MODULES.items():
        source = path.read_text()
        collector = _Collector(module, path, is_pkg, source)
        collector.visit(ast.parse(source, str(path)))
        imports += collector.imports
        errors += collector.errors
    return imports, errors


IMPORTS, RESOLVE_ERRORS = _collect()


def _package(module: str) -> str | None:
    """The top-level package (daemon, clients, governor) a module name belongs to; None for a third party."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "moed" and parts[1] in PACKAGES else None


def _edges(imp: Import) -> Iterator[str]:
    """The modules an import runs: the target and, for one outside the importer's own packages, their __init__s."""
    if imp.target not in MODULES:
        return
    yield imp.target
    parts = imp.target.split(".")
    for n in range(2, len(parts)):
        ancestor = ".".join(parts[:n])
        if ancestor in MODULES and not (imp.importer + ".").startswith(ancestor + "."):
            yield ancestor


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node, or a node importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_every_package():
    """A guard for the checks below: the walk finds the modules and the imports it should."""
    assert not RESOLVE_ERRORS, RESOLVE_ERRORS
    for pkg in PACKAGES:
        assert f"moed.{pkg}" in MODULES
    assert {"moed.clients.aio", "moed.clients.stream", "moed.daemon.server"} <= set(MODULES)
    edges = {(i.importer, i.target) for i in IMPORTS}
    assert ("moed.clients.aio", "moed.clients.stream") in edges
    assert ("moed.daemon.server", "moed.clients.protocol") in edges


def test_no_import_cycle_at_import_time():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.at_import_time:
            graph[imp.importer].update(_edges(imp))
    cycles = _cycles(graph)
    detail = [" -> ".join(c) + ":\n    " + "\n    ".join(
        i.where() for i in IMPORTS if i.at_import_time and i.importer in c and set(_edges(i)) & set(c))
        for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_packages_depend_one_way():
    """Counting every import (lazy and typing-only too), the packages form no cycle."""
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for imp in IMPORTS:
        src, dst = _package(imp.importer), _package(imp.target)
        if src and dst and src != dst:
            graph[src].add(dst)
    assert not _cycles(graph), graph


@pytest.mark.parametrize("package", NO_DAEMON_NO_MLX)
def test_no_daemon_or_mlx_import(package):
    bad = [i.where() for i in IMPORTS if _package(i.importer) == package
           and (_package(i.target) == "daemon" or i.target.split(".")[0] in MLX)]
    assert not bad, f"{package}/ must not import moed.daemon or MLX:\n" + "\n".join(bad)


def test_import_rule_relative_inside_absolute_across():
    problems = set()
    for imp in IMPORTS:
        own, other = _package(imp.importer), _package(imp.target)
        if imp.level == 0 and other == own:
            problems.add((imp, "absolute import inside its own package: make it relative"))
        elif imp.level > 0 and other != own:
            problems.add((imp, f"relative import into moed.{other}: make it absolute"))
    broken = sorted(f"{imp.where()}  ({why})" for imp, why in problems)
    assert not broken, "import rule broken:\n" + "\n".join(broken)


BLOCKED_IMPORT = r'''
import importlib, sys, traceback

class BlockMLX:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, BlockMLX())
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\n" + traceback.format_exc())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm") or m.startswith("moed.daemon"))
assert not failed, "\n".join(failed)
assert not loaded, loaded
print("IMPORTED", len(sys.argv) - 1)
'''


def test_client_and_governor_modules_import_without_mlx():
    names = sorted(m for m in MODULES if _package(m) in NO_DAEMON_NO_MLX)
    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, *names], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"IMPORTED {len(names)}" in proc.stdout
