"""Imports inside vsd/ run one way: a declared layer order between packages, and no cycle of files.

Read from the source with ``ast`` (nothing is imported), so imports inside functions count too, and so do
the ``"vsd.pkg.module:function"`` strings that vsd.pipeline imports its stages by.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

VSD = Path(__file__).resolve().parents[1] / "vsd"

# Bottom first. A package may import only from packages in LOWER layers; two packages of one layer do not
# import each other. A "package" is a folder of vsd/ (vsd/models/) or a top-level module (vsd/errors.py).
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("files", "records", "runtime"),
    ("config",),
    ("models", "data", "sweep", "tracking"),  # models: the target and the draft head (pure nn)
    ("decoding", "features"),  # decoding: drafters, trees, the engine; features: the cache of target features
    ("losses", "evaluation"),
    ("train", "analysis", "export"),  # export: python -m vsd.export (drafts to the EAGLE-3 ecosystem)
    ("pipeline",),
]
_STAGE_REF = re.compile(r"^(\w+(?:\.\w+)+):\w+$")  # importlib by name: "vsd.data.stage:run"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, mod: str, is_pkg: bool, top: str) -> list[tuple[str, int]]:
    """(dotted name, line) of every import of ``top``'s modules in ``tree`` (``from a.b import c``: a.b.c)."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == top]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 more
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == top:
                out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = _STAGE_REF.match(node.value)
            if m and m.group(1).split(".")[0] == top:
                out.append((m.group(1), node.lineno))
    return out


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module of ``root``'s tree: first line}, for every .py file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: dict[str, int] = {}
        for name, line in _imported_names(tree, mod, path.name == "__init__.py", root.name):
            while name and name not in files:  # a.b.c is the module a.b.c, or the name c of module a.b
                name = name.rpartition(".")[0]
            if name and name != mod:
                edges.setdefault(name, line)
        graph[mod] = edges
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]] | dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def package_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, str]]:
    """package -> {imported package: one "module:line" that does it}."""
    out: dict[str, dict[str, str]] = {}
    for mod, edges in graph.items():
        a = package_of(mod)
        for target, line in edges.items():
            b = package_of(target)
            if b != a:
                out.setdefault(a, {}).setdefault(b, f"{mod}:{line} imports {target}")
    return out


def layer_violations(graph: dict[str, dict[str, int]], layers: list[tuple[str, ...]]) -> list[str]:
    rank = {p: i for i, layer in enumerate(layers) for p in layer}
    return sorted(
        f"{a} (layer {rank[a]}) -> {b} (layer {rank[b]}): {where}"
        for a, edges in package_graph(graph).items()
        for b, where in edges.items()
        if a in rank and b in rank and rank[b] >= rank[a]
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(VSD)


def test_every_package_has_a_layer(graph):
    declared = [p for layer in LAYERS for p in layer]
    assert len(declared) == len(set(declared)), "a package is listed in two layers"
    found = {package_of(m) for m in graph} - {"vsd"}
    assert found == set(declared), f"place new packages in LAYERS: {sorted(found - set(declared))}"


def test_imports_follow_the_layers(graph):
    assert layer_violations(graph, LAYERS) == []


def test_no_package_cycle(graph):
    assert cycles(package_graph(graph)) == []


def test_no_file_cycle(graph):
    assert cycles(graph) == []


def test_the_checks_see_lazy_relative_and_stage_imports(tmp_path):
    """The checks can fail: a tree with a lazy cycle, a relative import and an upward stage reference."""
    root = tmp_path / "vsd"
    for d in ("low", "high"):
        (root / d).mkdir(parents=True)
        (root / d / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("def f():\n    from vsd.high.b import g\n")
    (root / "low" / "c.py").write_text("from . import a\nSTAGE = 'vsd.high.b:g'\n")
    (root / "high" / "b.py").write_text("from vsd.low import a\n\ndef g():\n    pass\n")
    g = import_graph(root)
    assert g["vsd.low.a"] == {"vsd.high.b": 2}
    assert set(g["vsd.low.c"]) == {"vsd.low.a", "vsd.high.b"}
    assert cycles(g) == [["vsd.high.b", "vsd.low.a"]]
    assert cycles(package_graph(g)) == [["high", "low"]]
    bad = layer_violations(g, [("low",), ("high",)])
    assert len(bad) == 1 and bad[0].startswith("low (layer 0) -> high (layer 1): vsd.low.")
