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


def _loops(graph: dict[str, set[str]]) -> list[set[str]]:
    """The import loops: strongly connected groups of two or more modules."""
    pairs = cycles(graph)
    groups: list[set[str]] = []
    for a, b in pairs:
        hit = [g for g in groups if a in g or b in g]
        merged = set().union({a, b}, *hit)
        groups = [g for g in groups if g not in hit] + [merged]
    return sorted(groups, key=sorted)


def report(root: Path = SRC) -> str:
    """A plain-text summary of the package's layout: per package its modules, import edges
    (all, and inside the package) and loops; then the ten largest files."""
    graph = import_graph(root)

    def package(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (root / parts[-1]).is_dir() else parts[0]

    loops = _loops(graph)
    lines = [f"{'package':<22}{'modules':>8}{'edges':>7}{'inside':>8}{'loops':>7}"]
    for pkg in sorted({package(m) for m in graph}):
        mods = [m for m in graph if package(m) == pkg]
        edges = sum(len(graph[m]) for m in mods)
        inside = sum(1 for m in mods for d in graph[m] if package(d) == pkg)
        n_loops = sum(1 for g in loops if all(package(m) == pkg for m in g))
        lines.append(f"{pkg:<22}{len(mods):>8}{edges:>7}{inside:>8}{n_loops:>7}")
    total = sum(len(d) for d in graph.values())
    lines.append(f"{'all':<22}{len(graph):>8}{total:>7}{'':>8}{len(loops):>7}")
    lines += [f"loop: {' <-> '.join(sorted(g))}" for g in loops]
    sizes = sorted(((len(p.read_text().splitlines()), p.relative_to(root.parent))
                    for p in root.rglob("*.py")), reverse=True)[:10]
    lines += ["", "largest files (lines):"] + [f"{n:>6}  {p}" for n, p in sizes]
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/test_layering.py [--report] [SRC/sharenorm]
    import sys

    args = [a for a in sys.argv[1:] if a != "--report"]
    print(report(Path(args[0]) if args else SRC))


def test_the_report_names_each_loop_and_the_largest_files(tmp_path):
    pkg = tmp_path / "sharenorm"
    (pkg / "lab").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "lab" / "__init__.py").write_text("")
    (pkg / "lab" / "a.py").write_text("from sharenorm.lab import b\n\n\n")
    (pkg / "lab" / "b.py").write_text("def f():\n    from sharenorm.lab import a\n")
    text = report(pkg)
    assert "loop: sharenorm.lab.a <-> sharenorm.lab.b" in text
    row = next(ln.split() for ln in text.splitlines() if ln.startswith("sharenorm.lab "))
    assert row[1:] == ["2", "2", "2", "1"]  # modules, edges, inside, loops
    assert "     3  sharenorm/lab/a.py" in text
