"""The package's import graph, read from the source: every ``import`` in every module of
ckptdiff/, at module level and inside functions (those run too, only later).

- no import circles: a module never imports, directly or through others, a module that
  imports it (importing ``a.b.c`` from outside ``a.b`` also runs ``a/b/__init__.py``);
- no private name (``_x``) imported from another module, nor reached as ``module._x``;
- no module over 500 lines.

Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "ckptdiff"
MAX_LINES = 500

#: Why the entries below stand: each is owed a change of its own, and the lists only shrink
#: (an entry that no longer holds fails the test until it is dropped).
_FORMATTED = "under 500 lines until ruff format unwrapped its hand-wrapped calls; to split"

#: Modules allowed over MAX_LINES, and why.
LONG_MODULES: dict[str, str] = {
    "ckptdiff/readers/dcp.py": _FORMATTED,
    "ckptdiff/types.py": _FORMATTED,
}

#: Circles allowed, each a set of modules (none today; the test names the imports that close one).
KNOWN_CIRCLES: dict[frozenset[str], str] = {}

#: Private names taken from another module: importing file -> names (none today).
KNOWN_PRIVATE: dict[str, set[str]] = {}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module imported
    line: int
    name: str | None  # the name taken from it (``from target import name``)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree outside ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _base(module: str, level: int) -> list[str]:
    """The package a relative import of ``level`` dots starts from."""
    parts = module.split(".")
    if MODULES[module].name != "__init__.py":
        parts.pop()
    return parts[: len(parts) - level + 1]


def _imports(module: str) -> tuple[list[Import], list[tuple[int, str, str]]]:
    """The imports of ``module`` within ckptdiff, and its ``alias._private`` reaches
    (line, module reached, name)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[Import] = []
    aliases: dict[str, str] = {}  # local name -> ckptdiff module it is bound to
    nodes = _runtime_nodes(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ckptdiff":
                    found.append(Import(module, alias.name, node.lineno, None))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(
                    _base(module, node.level) + ([node.module] if node.module else [])
                )
            else:
                target = node.module or ""
            if target.split(".")[0] != "ckptdiff":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:
                    found.append(Import(module, submodule, node.lineno, None))
                    aliases[alias.asname or alias.name] = submodule
                else:
                    found.append(Import(module, target, node.lineno, alias.name))
    reaches = [
        (node.lineno, aliases[node.value.id], node.attr)
        for node in nodes
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and _private(node.attr)
    ]
    return found, reaches


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _runs(imp: Import) -> set[str]:
    """The modules an import runs: the target and the packages above it that the importing
    module is not already inside (its own are running or ran before it)."""
    parts = imp.target.split(".")
    packages = {".".join(parts[:i]) for i in range(1, len(parts))}
    inside = {p for p in packages if imp.source == p or imp.source.startswith(p + ".")}
    return {m for m in packages - inside | {imp.target} if m in MODULES and m != imp.source}


def _graph() -> dict[str, dict[str, Import]]:
    graph: dict[str, dict[str, Import]] = {m: {} for m in MODULES}
    for module in MODULES:
        for imp in _imports(module)[0]:
            for target in _runs(imp):
                graph[module].setdefault(target, imp)
    return graph


def _circles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def _found_circles() -> dict[frozenset[str], str]:
    """Each circle (its modules) with the imports that close it."""
    graph = _graph()
    return {
        frozenset(circle): " | ".join(
            f"{_where(a, imp.line)} -> {b}"
            for a in circle
            for b, imp in sorted(graph[a].items())
            if b in circle
        )
        for circle in _circles(graph)
    }


def _found_private() -> dict[tuple[str, str], str]:
    """(importing file, private name) -> where and from what."""
    found: dict[tuple[str, str], str] = {}
    for module in MODULES:
        imports, reaches = _imports(module)
        path = str(MODULES[module].relative_to(ROOT))
        for imp in imports:
            if imp.name and _private(imp.name):
                where = _where(module, imp.line)
                found[(path, imp.name)] = f"{where}: {imp.name} from {imp.target}"
        for line, target, name in reaches:
            found[(path, name)] = f"{_where(module, line)}: {name} of {target}"
    return found


def test_the_walk_sees_the_package():
    graph = _graph()
    assert "ckptdiff.cli" in MODULES and "ckptdiff.readers" in MODULES
    assert any(graph[m] for m in MODULES if m.startswith("ckptdiff.cli.")), "no CLI imports?"
    assert sum(len(targets) for targets in graph.values()) > len(MODULES)


def test_the_walk_finds_a_circle_and_a_private_name(tmp_path, monkeypatch):
    """The checks can fail: a two-module circle through a function-level import, and a
    private name taken from the other module, are both found."""
    package = tmp_path / "ckptdiff"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from ckptdiff.b import _helper\n")
    (package / "b.py").write_text("def _helper():\n    from ckptdiff import a\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(
        this, "MODULES", {_module_name(p): p for p in sorted(package.rglob("*.py"))}
    )
    assert list(_found_circles()) == [frozenset({"ckptdiff.a", "ckptdiff.b"})]
    assert list(_found_private()) == [("ckptdiff/a.py", "_helper")]


def test_no_import_circles():
    found = _found_circles()
    new = [where for circle, where in found.items() if circle not in KNOWN_CIRCLES]
    assert not new, "import circles:\n" + "\n".join(new)
    gone = [sorted(circle) for circle in KNOWN_CIRCLES if circle not in found]
    assert not gone, f"no longer circles, drop them from KNOWN_CIRCLES: {gone}"


def test_no_private_names_cross_modules():
    found = _found_private()
    known = {(path, name) for path, names in KNOWN_PRIVATE.items() for name in names}
    new = sorted(where for key, where in found.items() if key not in known)
    assert not new, "private names taken from another module:\n" + "\n".join(new)
    gone = sorted(known - set(found))
    assert not gone, f"no longer crossing, drop them from KNOWN_PRIVATE: {gone}"


def test_no_module_over_500_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    unexplained = {p: n for p, n in long.items() if p not in LONG_MODULES}
    assert not unexplained, f"modules over {MAX_LINES} lines: {unexplained}"
    stale = set(LONG_MODULES) - set(long)
    assert not stale, f"no longer over {MAX_LINES} lines, drop them from LONG_MODULES: {stale}"
