"""The house rules of the tree, read from the code's own imports: which package
may import which, no import cycle, no module over 300 lines, one name per
module. A change that breaks one fails here, naming the module."""
from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGES = ("bus", "ledger", "projections", "api", "workers", "gate", "verifier", "cli")
# Who may import whom (besides itself): bus is contracts and transport, the read
# side knows no money, money knows the read side (the expiry sweep's query), the
# node side never touches the ledger, the gate (the trust boundary) knows only
# the contracts, the verifier runs models as workers do but never touches money,
# and only the command line knows everything.
MAY_IMPORT = {
    "bus": set(),
    "projections": {"bus"},
    "ledger": {"bus", "projections"},
    "workers": {"bus"},
    "gate": {"bus"},
    "verifier": {"bus", "workers"},
    "api": {"bus", "ledger", "projections"},
    "cli": {"bus", "ledger", "projections", "api", "workers", "gate", "verifier"},
}
FORBIDDEN_LIBRARIES = {"bus": {"torch", "fastapi"}, "ledger": {"torch", "fastapi"},
                       "projections": {"torch", "fastapi"}, "gate": {"torch", "fastapi"}}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


MODULES = modules()
IMPORTS = {name: imported(path) for name, path in MODULES.items()}


def test_each_package_imports_only_the_packages_below_it():
    wrong = [f"{name} imports {other}" for name, names in IMPORTS.items()
             for other in names
             if (top := other.split(".")[0]) in PACKAGES and top != name.split(".")[0]
             and top not in MAY_IMPORT[name.split(".")[0]]]
    assert wrong == []


def test_contracts_money_and_read_side_never_import_torch_or_fastapi():
    wrong = [f"{name} imports {other}" for name, names in IMPORTS.items()
             for other in names
             if other.split(".")[0] in FORBIDDEN_LIBRARIES.get(name.split(".")[0], ())]
    assert wrong == []


def test_no_module_imports_itself_back_through_others():
    graph = {name: {m for m in names if m in MODULES and m != name}
             for name, names in IMPORTS.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_modules_stay_under_300_lines_and_have_names_of_their_own():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > 300}
    assert long == {}
    names = collections.Counter(p.name for p in MODULES.values() if p.name != "__init__.py")
    assert [n for n, c in names.items() if c > 1] == []
