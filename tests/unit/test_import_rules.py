"""The import rule of docs/architecture.md, read from the sources with `ast` (nothing is imported).

`thunder_env`, `mcp_server` and `thunder_sched` never import each other except `mcp_server -> thunder_env`;
only the product `thunder_serve` imports all three; its agent-side `thunder_serve.clients` imports none of
them. And no module of the repository's packages is in an import cycle (imports under `if TYPE_CHECKING:` do
not count: they never run), except the cycles listed, exactly, in KNOWN_CYCLES.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("thunder_env", "mcp_server", "thunder_sched", "thunder_serve")

# Which repository packages a scope may import besides its own top-level package. The longest scope that
# contains a module applies (thunder_serve.clients before thunder_serve).
ALLOWED: Mapping[str, frozenset[str]] = {
    "thunder_env": frozenset(),
    "mcp_server": frozenset({"thunder_env"}),
    "thunder_sched": frozenset(),
    "thunder_serve": frozenset({"thunder_env", "mcp_server", "thunder_sched"}),
    "thunder_serve.clients": frozenset(),  # agent-side: reaches the server over HTTP only
}

# Runtime import cycles that exist today, each the exact set of modules of one cycle. Issue 12 item 2
# removes them; the test fails when a listed cycle is gone, so that its entry is removed with the fix.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: Path
    line: int
    target: str  # the repository module imported (the longest known prefix of what the statement names)
    statement: str
    type_only: bool  # under `if TYPE_CHECKING:`


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under root."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under node, anywhere (functions too), with whether it only runs for type checkers."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_only
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _import_nodes(child, True)
        for child in node.orelse:
            yield from _import_nodes(child, type_only)
        return
    for child in ast.iter_child_nodes(node):
        yield from _import_nodes(child, type_only)


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a repository module, or None (an outside import)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    """The repository modules one file imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node, type_only in _import_nodes(tree):
        statement = ast.unparse(node)
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else a name of pkg.
            names = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
            ]
        for name in dict.fromkeys(names):
            target = _known(name, modules)
            if target is not None:
                found.append(Import(module, path, node.lineno, target, statement, type_only))
    return found


def all_imports(root: Path, packages: tuple[str, ...]) -> list[Import]:
    modules = module_files(root, packages)
    return [imp for module, path in modules.items() for imp in imports_of(module, path, modules)]


def _scope(module: str) -> str:
    return max((s for s in ALLOWED if module == s or module.startswith(s + ".")), key=len)


def rule_violations(imports: list[Import], root: Path) -> list[str]:
    """One line per import that breaks the rule, naming the file, the line and the statement."""
    broken = []
    for imp in imports:
        own, other = imp.module.split(".")[0], imp.target.split(".")[0]
        scope = _scope(imp.module)  # within its own top-level package a module imports freely
        if other != own and other not in ALLOWED[scope]:
            broken.append(
                f"{imp.path.relative_to(root)}:{imp.line}: `{imp.statement}` ({scope} must not import {other})"
            )
    return broken


def import_cycles(imports: list[Import]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module of the runtime import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.module, set())
        if not imp.type_only and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[frozenset[str]] = []

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
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _cycle_report(cycle: frozenset[str], imports: list[Import]) -> str:
    edges = sorted(
        f"{i.path.relative_to(REPO)}:{i.line} `{i.statement}`"
        for i in imports
        if i.module in cycle and i.target in cycle and not i.type_only and i.target != i.module
    )
    return f"{sorted(cycle)} via " + "; ".join(edges)


# ---- the repository --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_imports() -> list[Import]:
    return all_imports(REPO, PACKAGES)


def test_every_package_is_read(repo_imports: list[Import]) -> None:
    importers = {imp.module.split(".")[0] for imp in repo_imports}
    assert importers == set(PACKAGES)
    assert any(i.module.startswith("thunder_serve.clients.") for i in repo_imports)


def test_the_components_import_each_other_only_as_the_rule_allows(repo_imports: list[Import]) -> None:
    broken = rule_violations(repo_imports, REPO)
    assert not broken, "imports that break the rule of docs/architecture.md:\n" + "\n".join(broken)


def test_no_module_is_in_an_import_cycle_beyond_the_known_ones(repo_imports: list[Import]) -> None:
    cycles = set(import_cycles(repo_imports))
    new = [_cycle_report(c, repo_imports) for c in cycles - KNOWN_CYCLES]
    assert not new, "import cycles (imports under `if TYPE_CHECKING:` excluded):\n" + "\n".join(new)
    gone = [sorted(c) for c in KNOWN_CYCLES - cycles]
    assert not gone, f"these cycles no longer exist: remove them from KNOWN_CYCLES: {gone}"


# ---- the checker itself, on a made-up tree ---------------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_names_the_file_and_the_import_that_break_the_rule(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "thunder_env/__init__.py": "",
            "thunder_env/core.py": "import os\n",
            "mcp_server/__init__.py": "from thunder_env import core\n",
            "thunder_sched/__init__.py": "",
            "thunder_sched/app.py": "def f():\n    from mcp_server import x\n",
            "thunder_serve/__init__.py": "from thunder_sched import app\nfrom .clients import agent\n",
            "thunder_serve/errors.py": "",
            "thunder_serve/clients/__init__.py": "",
            "thunder_serve/clients/agent.py": "from ..errors import E\nfrom thunder_env.core import y\n",
        },
    )
    broken = rule_violations(all_imports(tmp_path, PACKAGES), tmp_path)
    assert broken == [
        "thunder_sched/app.py:2: `from mcp_server import x` (thunder_sched must not import mcp_server)",
        "thunder_serve/clients/agent.py:2: `from thunder_env.core import y` "
        "(thunder_serve.clients must not import thunder_env)",
    ]


def test_the_checker_finds_a_runtime_cycle_and_ignores_type_checking_imports(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "thunder_env/__init__.py": "",
            "thunder_env/a.py": "from . import b\n",
            "thunder_env/b.py": "def f():\n    from .a import x\n",
            "thunder_env/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import y\n",
            "thunder_env/d.py": "from thunder_env.c import z\n",
        },
    )
    imports = all_imports(tmp_path, ("thunder_env",))
    assert import_cycles(imports) == [frozenset({"thunder_env.a", "thunder_env.b"})]
