"""The package's import graph between its top-level parts has no cycle (issue 18), and no
part imports a floor above its own (issue 31).

Every ``import``/``from ... import`` of ray_xray in ray_xray/**/*.py counts, those inside
functions included (a lazy import is still a dependency). Nodes are the top-level parts:
a subpackage (``ray_xray.report``) or a module (``ray_xray.checkpoint``). ``__main__``
modules are left out: an entry point is imported by no module, so it cannot close a cycle,
and it may import any floor (as may ``api``, the Python API, on the top floor).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ray_xray"


def _imported(node, pkg: list[str]) -> list[str]:
    """Absolute module names an import node names (a from-import's names may be modules)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """{part: parts it imports}, over the top-level parts of the package at `root`."""
    graph: dict[str, set[str]] = {}
    for f in sorted(root.rglob("*.py")):
        if f.name == "__main__.py":
            continue
        parts = ["ray_xray", *f.relative_to(root).with_suffix("").parts]
        pkg = parts[:-1]
        if len(parts) == 2 and parts[1] == "__init__":
            continue  # the package's own lazy front door
        src = parts[1]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            for name in _imported(node, pkg):
                bits = name.split(".")
                if bits[0] == "ray_xray" and len(bits) > 1 and bits[1] != src:
                    if (root / bits[1]).is_dir() or (root / f"{bits[1]}.py").is_file():
                        graph.setdefault(src, set()).add(bits[1])
        graph.setdefault(src, set())
    return graph


# The floors, bottom first. A part imports parts on its own floor or below, never above (the
# cycle test keeps each floor's own imports acyclic). A new part must be placed here.
FLOORS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "foundations",
        frozenset(
            {"cli", "config", "io", "metrics", "stats", "calibration", "gradcam"}
            | {"links", "ray_env", "trace"}
        ),
    ),
    (
        "data, file formats, models",
        frozenset(
            {"data", "checkpoint", "models", "device", "spaces", "prior", "scores"}
            | {"sweep_folder", "cluster"}
        ),
    ),
    ("the saved-model runtime", frozenset({"inference"})),
    (
        "one run: training, scoring, rendering",
        frozenset({"train", "evaluate", "report", "predict", "audit"}),
    ),
    ("the search service and active learning", frozenset({"tune", "active"})),
    ("the post-sweep steps on a sweep's folder", frozenset({"ensemble"})),
    ("entry points: a sweep end to end, the Python API", frozenset({"pipeline", "api"})),
)


def upward_imports(graph: dict[str, set[str]], floors=FLOORS) -> list[str]:
    """'a -> b' for every import of a part `b` on a higher floor than `a`'s, sorted."""
    level = {part: i for i, (_, parts) in enumerate(floors) for part in parts}
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if level[b] > level[a])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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


def test_cycles_are_found_in_a_made_up_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_between_the_package_parts():
    graph = import_graph()
    assert {"report", "ensemble", "evaluate", "checkpoint", "sweep_folder"} <= set(graph)
    assert "report" in graph["ensemble"]  # the ensemble renders the report ...
    found = cycles(graph)
    assert found == [], f"import cycles between ray_xray's parts: {found}"


def test_report_and_evaluate_never_import_the_ensemble():
    graph = import_graph()
    assert "ensemble" not in graph["report"] and "ensemble" not in graph["evaluate"]


def test_upward_imports_are_found_in_a_made_up_graph():
    floors = (("low", frozenset({"a", "b"})), ("high", frozenset({"c"})))
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "b"}}
    assert upward_imports(graph, floors) == ["b -> c"]


def test_every_part_is_on_a_floor():
    placed = set().union(*(parts for _, parts in FLOORS))
    unplaced = sorted(set(import_graph()) - placed)
    assert unplaced == [], f"place these parts on a floor in FLOORS: {unplaced}"


def test_no_part_imports_a_floor_above_its_own():
    graph = import_graph()
    assert "tune" in graph["pipeline"] and "ensemble" in graph["pipeline"]
    found = upward_imports(graph)
    assert found == [], f"imports up the floors (FLOORS in tests/test_imports.py): {found}"
