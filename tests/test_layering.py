"""The package's import graph, read from the source: no module imports itself back
through others, and ``sharenorm.sharing`` stays below ``sharenorm.norm`` (norm may use
sharing, never the other way, so either can be read and tested without the loop)."""

from __future__ import annotations

import ast
from pathlib import Path

import sharenorm

SRC = Path(sharenorm.__file__).parent


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every sharenorm module ``path`` imports, anywhere in the file (function bodies
    too); ``from pkg import mod`` counts as importing ``pkg.mod``."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != module}


def _reexports_only(path: Path) -> bool:
    """A package ``__init__`` that holds no code of its own (imports, ``__all__``, a
    docstring): importing it is importing what it lists."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and all(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        ):
            continue
        return False
    return True


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module → the sharenorm modules it imports. A package ``__init__`` that only
    re-exports is no node of its own: an import of it stands for imports of what it
    re-exports (so a package listing its submodules is no loop, but reaching a module
    through its package is still an edge to it)."""
    paths = {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    raw = {m: _imports(p, m, set(paths)) for m, p in paths.items()}
    hollow = {m for m, p in paths.items() if p.name == "__init__.py" and _reexports_only(p)}

    def expand(m: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if m not in hollow:
            return {m}
        if m in seen:
            return set()
        return set().union(*(expand(x, seen | {m}) for x in raw[m])) if raw[m] else set()

    return {
        m: set().union(*(expand(x) for x in deps)) - {m} if deps else set()
        for m, deps in raw.items()
        if m not in hollow
    }


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The pairs (a, b) with an edge a → b and a path back from b to a."""
    out = set()
    for a, deps in graph.items():
        for b in deps:
            seen, todo = set(), [b]
            while todo:
                x = todo.pop()
                if x == a:
                    out.add(tuple(sorted((a, b))))
                    break
                if x not in seen:
                    seen.add(x)
                    todo += graph.get(x, ())
    return sorted(out)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo += graph.get(x, ())
    return seen


def sharing_to_norm(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(sharing module, norm module it reaches through its imports)."""
    return sorted(
        (m, n)
        for m in graph
        if m.startswith("sharenorm.sharing")
        for n in reachable(graph, m)
        if n == "sharenorm.norm" or n.startswith("sharenorm.norm.")
    )


def _outside_lab(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    keep = {m for m in graph if not m.startswith("sharenorm.lab")}
    return {m: graph[m] & keep for m in keep}


def test_the_graph_sees_imports_everywhere_in_a_file():
    graph = import_graph()
    # a top-level import, an import inside a function, and `from pkg import module`
    assert "sharenorm.norm._layout" in graph["sharenorm.norm.functional"]
    assert "sharenorm.lab.batched" in graph["sharenorm.lab.train"]
    assert "sharenorm.norm.functional" in graph["sharenorm.norm.batchnorm"]
    # an import of a package that only re-exports stands for what it re-exports
    assert "sharenorm.sharing.tie._api" in graph["sharenorm.sharing.stack"]


def test_the_checks_fire_on_a_loop_and_on_sharing_importing_norm(tmp_path):
    pkg = tmp_path / "sharenorm"
    for name, text in {
        "__init__.py": "from sharenorm.norm import a\n",
        "norm/__init__.py": "from sharenorm.norm.a import f\n",
        "norm/a.py": "def f():\n    from sharenorm.norm import b\n",
        "norm/b.py": "from sharenorm.norm.a import f\n",
        "sharing/__init__.py": "",
        "sharing/s.py": "from sharenorm.norm import b\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert cycles(graph) == [("sharenorm.norm.a", "sharenorm.norm.b")]
    assert ("sharenorm.sharing.s", "sharenorm.norm.b") in sharing_to_norm(graph)


def test_no_import_cycles():
    loops = cycles(_outside_lab(import_graph()))
    assert not loops, "modules that import each other (directly or through others): " + ", ".join(
        f"{a} <-> {b}" for a, b in loops
    )


def test_no_import_cycles_in_the_lab():
    loops = cycles(import_graph())
    assert not loops, "modules that import each other (directly or through others): " + ", ".join(
        f"{a} <-> {b}" for a, b in loops
    )


def test_sharing_never_imports_norm():
    edges = sharing_to_norm(import_graph())
    assert not edges, "sharenorm.sharing must not import sharenorm.norm (even indirectly): " + (
        ", ".join(f"{a} -> {b}" for a, b in edges)
    )
