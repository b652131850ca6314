"""Architecture rules, checked by an AST scan of ``cli.py``, ``bench/`` and ``todsynth/``.

- no import cycle between modules (every import statement counts, function-level ones included);
- no private name (``_x``) of one project module used from another (``from m import _x`` or ``m._x``);
- no module longer than ``MAX_MODULE_LINES`` and no function longer than ``MAX_FUNCTION_LINES``.

The allowlists name exactly today's offenders, so the test passes now and fails on any new one; an entry
that no longer offends fails too (``test_allowlists_are_current``): delete it when its file is split.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "todsynth")
TOP_MODULES = ("cli.py",)
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80

# Today's offenders, exactly (issue 17). Shrink these as the splits land; never add to them.
LONG_MODULES_ALLOWED: frozenset[str] = frozenset()
LONG_FUNCTIONS_ALLOWED: frozenset[str] = frozenset()
PRIVATE_IMPORTS_ALLOWED: frozenset[str] = frozenset()
FORBIDDEN_IN_LIBRARY = ("bench", "mlflow", "optuna")  # todsynth/ is the method library: no harness, no tracking


@dataclass(frozen=True)
class Module:
    """One source file: its dotted name, path relative to the root, and parsed tree."""

    name: str
    path: str
    tree: ast.Module
    n_lines: int
    is_package: bool


def _module_name(rel: Path) -> tuple[str, bool]:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def scan_modules(root: Path = ROOT) -> dict[str, Module]:
    """Every project module by dotted name."""
    files = [root / m for m in TOP_MODULES]
    for pkg in PACKAGES:
        files += sorted((root / pkg).rglob("*.py"))
    modules: dict[str, Module] = {}
    for f in files:
        rel = f.relative_to(root)
        name, is_package = _module_name(rel)
        text = f.read_text(encoding="utf-8")
        modules[name] = Module(name, rel.as_posix(), ast.parse(text, filename=str(rel)), len(text.splitlines()),
                               is_package)
    return modules


def _resolve_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module named by a ``from ... import`` (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: Module, known: set[str]) -> Iterator[tuple[str, int]]:
    """(project module, line) for every import in ``module``, function-level ones included.

    ``import a.b`` depends on ``a.b``; ``from a import b`` on ``a.b`` when that is a module, else on ``a``.
    Parent packages are not added: importing a sibling from one's own package is not a cycle.
    """
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    yield sub, node.lineno
                elif base in known:
                    yield base, node.lineno


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}."""
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, module in modules.items():
        edges: dict[str, int] = {}
        for target, line in imported_modules(module, known):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path ending where it starts) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle found in component {sorted(component)}")


def _describe_cycle(graph: dict[str, dict[str, int]], modules: dict[str, Module], cycle: list[str]) -> str:
    steps = [f"{modules[a].path}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def private_imports(modules: dict[str, Module]) -> Iterator[tuple[str, int, str]]:
    """(path, line, ``module._name``) for each private name of a project module used from another one."""
    known = set(modules)

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    for module in modules.values():
        bound: dict[str, str] = {}  # local name -> project module it refers to
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known:
                        bound[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(module, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:
                        bound[alias.asname or alias.name] = sub
                    elif base in known and base != module.name and private(alias.name):
                        yield module.path, node.lineno, f"{base}.{alias.name}"
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and private(node.attr):
                target = _dotted(node.value)
                if target is None:
                    continue
                head, _, rest = target.partition(".")
                if head in bound:
                    referred = ".".join(filter(None, [bound[head], rest]))
                    if referred in known and referred != module.name:
                        yield module.path, node.lineno, f"{referred}.{node.attr}"


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def long_functions(modules: dict[str, Module]) -> dict[str, int]:
    """``path::qualname`` -> lines (decorators excluded) for functions longer than MAX_FUNCTION_LINES."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str, path: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qualname = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    n = (child.end_lineno or child.lineno) - child.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        found[f"{path}::{qualname}"] = n
                visit(child, f"{qualname}.", path)
            else:
                visit(child, prefix, path)

    for module in modules.values():
        visit(module.tree, "", module.path)
    return found


def long_modules(modules: dict[str, Module]) -> dict[str, int]:
    """Path -> lines for modules longer than MAX_MODULE_LINES."""
    return {m.path: m.n_lines for m in modules.values() if m.n_lines > MAX_MODULE_LINES}


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return scan_modules()


def test_no_import_cycles(modules: dict[str, Module]) -> None:
    graph = import_graph(modules)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe_cycle(graph, modules, c) for c in cycles)


def _package(name: str) -> str:
    """The layer a module belongs to: ``todsynth.<subpackage>`` (or top-level module), else the module."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "todsynth" else name


def test_no_import_cycles_between_library_packages(modules: dict[str, Module]) -> None:
    """``todsynth``'s subpackages are layers: ``seg -> metrics`` and never back, even without a module cycle."""
    graph = import_graph(modules)
    packages: dict[str, dict[str, int]] = {_package(m): {} for m in graph}
    witness: dict[tuple[str, str], str] = {}
    for a, edges in graph.items():
        for b, line in edges.items():
            pa, pb = _package(a), _package(b)
            if pa != pb:
                packages[pa].setdefault(pb, line)
                witness.setdefault((pa, pb), f"{modules[a].path}:{line} imports {b}")
    cycles = find_cycles(packages)
    assert not cycles, "import cycles between packages:\n" + "\n".join(
        " -> ".join(c) + "\n    " + "\n    ".join(witness[ab] for ab in zip(c, c[1:], strict=False))
        for c in cycles)


def test_no_private_names_across_modules(modules: dict[str, Module]) -> None:
    found = sorted(f"{path}:{line}: {name}" for path, line, name in private_imports(modules)
                   if f"{path}: {name}" not in PRIVATE_IMPORTS_ALLOWED)
    assert not found, "private names used from another module (make them public):\n" + "\n".join(found)


def test_library_imports_no_harness(modules: dict[str, Module]) -> None:
    """``todsynth/`` never imports ``bench``, ``mlflow`` or ``optuna`` (DESIGN: cli -> bench -> todsynth)."""
    found = []
    for module in modules.values():
        if module.name.split(".")[0] != "todsynth":
            continue
        for node in ast.walk(module.tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{module.path}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_LIBRARY]
    assert not found, "the library imports the harness or tracking:\n" + "\n".join(found)


def test_module_length(modules: dict[str, Module]) -> None:
    found = {p: n for p, n in long_modules(modules).items() if p not in LONG_MODULES_ALLOWED}
    assert not found, f"modules over {MAX_MODULE_LINES} lines (split them): {found}"


def test_function_length(modules: dict[str, Module]) -> None:
    found = {f: n for f, n in long_functions(modules).items() if f not in LONG_FUNCTIONS_ALLOWED}
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(
        f"{f}: {n}" for f, n in sorted(found.items()))


def test_allowlists_are_current(modules: dict[str, Module]) -> None:
    """An allowlisted offender that was fixed must leave the allowlist, so it cannot come back unnoticed."""
    privates = {f"{path}: {name}" for path, _, name in private_imports(modules)}
    stale = sorted((LONG_MODULES_ALLOWED - set(long_modules(modules)))
                   | (LONG_FUNCTIONS_ALLOWED - set(long_functions(modules)))
                   | (PRIVATE_IMPORTS_ALLOWED - privates))
    assert not stale, f"no longer offending, remove from the allowlists in {Path(__file__).name}: {stale}"


def _fake_tree(root: Path, files: dict[str, str]) -> dict[str, Module]:
    (root / "cli.py").write_text("")
    for pkg in PACKAGES:
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return scan_modules(root)


def test_scanner_finds_what_it_must(tmp_path: Path) -> None:
    """The rules catch function-level and relative import cycles, private names by import and by attribute,
    and long functions, so a green run means something."""
    long_body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    modules = _fake_tree(tmp_path, {
        "todsynth/seg/__init__.py": "",
        "todsynth/seg/a.py": "def f():\n    from todsynth.seg.b import g\n    return g\n",
        "todsynth/seg/b.py": "from . import a\n\ndef g():\n    return a\n",
        "todsynth/metrics/__init__.py": "",
        "todsynth/metrics/m.py": "def h():\n    import todsynth.seg.a\n",
        "todsynth/seg/c.py": "from todsynth.metrics import m\n",
        "bench/x.py": "from bench.y import _hidden\nimport bench.y as why\nfrom bench import y\n"
                      "why._also(); y._again(); why.__doc__\n",
        "bench/y.py": "def _hidden(): ...\n\ndef _also(): ...\n\ndef _again(): ...\n",
        "bench/z.py": f"def big():\n{long_body}\n",
    })
    graph = import_graph(modules)
    cycles = {tuple(c) for c in find_cycles(graph)}
    assert cycles == {("todsynth.seg.a", "todsynth.seg.b", "todsynth.seg.a")}
    packages = {_package(m): {_package(t): 1 for t in es if _package(t) != _package(m)} for m, es in graph.items()}
    assert {tuple(c) for c in find_cycles(packages)} == {("todsynth.metrics", "todsynth.seg", "todsynth.metrics")}
    assert sorted((p, n) for p, _, n in private_imports(modules)) == [
        ("bench/x.py", "bench.y._again"), ("bench/x.py", "bench.y._also"), ("bench/x.py", "bench.y._hidden")]
    assert long_functions(modules) == {"bench/z.py::big": MAX_FUNCTION_LINES + 1}
