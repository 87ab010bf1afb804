"""The floors of sd_lens: no import runs back up a floor, and no two modules import each other in a circle.

The import graph is read from the source with :mod:`ast` (no module is imported), *every* import counted:
at module level, inside functions (imported on demand) and under ``if TYPE_CHECKING:`` (type-only).
A module may import its own floor or any floor below it; the floors, bottom to top, are listed in
:data:`FLOORS` and explained in docs/contributing.md ("Floors"). A failure names the offending edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "sd_lens"

#: bottom to top: each floor lists module prefixes (``sd_lens`` alone is the package's ``__init__``)
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("sd_lens.errors", "sd_lens.types", "sd_lens.linalg", "sd_lens.corpus", "sd_lens.outputs")),
    ("runtime", ("sd_lens.runtime",)),
    ("models", ("sd_lens.models", "sd_lens.interventions")),
    ("analyses", ("sd_lens.analyses",)),
    # dry_run sizes run_analysis's stages from the analyses' own budgets: the pipeline's floor, in models/
    ("pipeline", ("sd_lens.config", "sd_lens.stages", "sd_lens.pipeline", "sd_lens.models.dry_run")),
    ("report", ("sd_lens.report",)),
    ("api", ("sd_lens",)),
    ("cli_common", ("sd_lens.cli_common",)),
    ("applications", ("sd_lens.quantize", "sd_lens.signature")),
    ("cli", ("sd_lens.cli",)),
]


def modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is a package __init__)}`` of every module under src/sd_lens."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: {sd_lens modules it imports}}``, every import statement anywhere in the module."""
    mods = modules()

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
                # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if target == "sd_lens" or target.startswith("sd_lens."):
                    found = resolve(target)
                    if found and found != mod:
                        graph[mod].add(found)
    return graph


def floor_of(module: str) -> int:
    """The index in :data:`FLOORS` of the longest prefix that names ``module``."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "sd_lens" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    """Every ``a -> b`` where ``b`` sits on a higher floor than ``a``."""
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if floor_of(b) > floor_of(a):
                out.append(f"{a} ({FLOORS[floor_of(a)][0]}) -> {b} ({FLOORS[floor_of(b)][0]})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_floor():
    missing = [m for m in modules() if floor_of(m) < 0]
    assert not missing, f"modules on no floor (add them to FLOORS and docs/contributing.md): {missing}"


def test_no_import_runs_up_a_floor():
    up = upward_edges(import_graph())
    assert not up, "imports running back up a floor:\n" + "\n".join(up)


def test_no_circles():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from sd_lens.report.prose import x", {"sd_lens.report.prose"}),
        ("from sd_lens.report import prose", {"sd_lens.report.prose"}),
        ("def f():\n    from sd_lens.cli import _load", {"sd_lens.cli"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sd_lens.pipeline import A", {"sd_lens.pipeline"}),
        ("from ..report import prose", {"sd_lens.report.prose"}),
    ],
)
def test_the_graph_sees_every_kind_of_import(tmp_path, monkeypatch, source, expected):
    """Imports in functions, type-only and relative imports are edges too (a planted module)."""
    pkg = tmp_path / "sd_lens"
    for sub in ("report", "analyses"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    for name in ("cli.py", "pipeline.py", "report/prose.py"):
        (pkg / name).write_text("")
    (pkg / "analyses" / "planted.py").write_text(source + "\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    graph = import_graph()
    assert graph["sd_lens.analyses.planted"] == expected
    assert upward_edges(graph), "an analysis importing these sits below them"


def test_a_planted_circle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
