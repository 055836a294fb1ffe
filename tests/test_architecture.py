"""The house rules the design review asked for, checked on the source itself (no imports run)."""

import ast
import re
from pathlib import Path

import pytest

from .conftest import ROOT

PKG = ROOT / "stability"
STATUS_NAMES = {"completed", "diverged", "failed", "preempted", "running", "pending", "missing"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, function-level imports included (a lazy
    import is still a dependency); only ``if TYPE_CHECKING:`` blocks are left out."""
    files = {_module(p): p for p in pkg.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "stability"
    (pkg / "grid").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "grid" / "__init__.py").write_text("")
    (pkg / "grid" / "a.py").write_text("from .b import x\n")
    (pkg / "grid" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "store.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .grid import a\n")
    import tests.test_architecture as me

    old = me.ROOT
    me.ROOT = tmp_path
    try:
        assert cycles(import_graph(pkg)) == [["stability.grid.a", "stability.grid.b"]]
    finally:
        me.ROOT = old


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "stability.grid.controller" in graph and "stability.grid.backends" in graph["stability.grid.controller"]
    assert cycles(graph) == []


def _status_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Status names used as statuses: compared, tested (``eq``/``ne``/``isin``), written as a
    ``"status"`` value, or listed in a tuple/list/set of statuses. Column names (``df["diverged"]``,
    keywords) are not statuses."""
    hits = []

    def names(node):
        if isinstance(node, ast.Constant) and node.value in STATUS_NAMES:
            return [node]
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return [e for e in node.elts if isinstance(e, ast.Constant) and e.value in STATUS_NAMES]
        return []

    for node in ast.walk(tree):
        found = []
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                found += names(part)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("eq", "ne", "isin"):
            for a in node.args:
                found += names(a)
        elif isinstance(node, ast.Dict):
            found += [v for k, v in zip(node.keys, node.values, strict=True)
                      if isinstance(k, ast.Constant) and k.value == "status" for v in names(v)]
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple | ast.List | ast.Set):
            lits = names(node.value)
            if lits and len(lits) == len(node.value.elts):
                found += lits
        hits += [(n.lineno, n.value) for n in found]
    return hits


def test_status_finder_sees_each_form():
    src = ('a == "failed"\ns.isin(["completed", "diverged"])\nx = {"status": "running"}\n'
           'DONE = ("completed", "diverged")\ndf["diverged"]\nf(diverged=1)\n')
    assert sorted(_status_literals(ast.parse(src))) == [(1, "failed"), (2, "completed"), (2, "diverged"),
                                                       (3, "running"), (4, "completed"), (4, "diverged")]


def test_run_statuses_have_one_owner():
    """Only ``store.RunStatus`` spells a run status; everyone else uses its members."""
    offenders = []
    for root in (PKG, ROOT / "dashboard"):
        for path in sorted(root.rglob("*.py")):
            if path == PKG / "store.py":
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line}: {name!r}"
                          for line, name in _status_literals(ast.parse(path.read_text()))]
    assert offenders == []


def test_train_module_stays_small():
    """train.py keeps train(), train_step, evaluation; its parts live in optim/tracing/checkpoint."""
    assert len((PKG / "train.py").read_text().splitlines()) <= 350


def test_nothing_points_outside_the_project():
    """A fresh clone has no ../shared: README, docs, scripts and code never refer to it."""
    pattern = re.compile(r"(?<![\w-])shared/(DESIGN|notes)|\.\./shared")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "slurm").rglob("*"),
             *PKG.rglob("*.py"), *(ROOT / "dashboard").rglob("*.py"), *(ROOT / "benchmarks").rglob("*"),
             *(ROOT / ".ci").rglob("*")]
    bad = [str(p.relative_to(ROOT)) for p in files if p.is_file() and pattern.search(p.read_text(errors="replace"))]
    assert bad == []


def test_the_trainer_imports_no_analysis():
    """train → (tracing, detector, store, ...) never reaches ``analysis``: the layers go one way."""
    graph, seen, todo = import_graph(), set(), ["stability.train"]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo += graph.get(mod, ())
    assert "stability.detector" in seen and sorted(m for m in seen if m.startswith("stability.analysis")) == []


def test_each_rows_builder_covers_its_schema(monkeypatch):
    from stability import rows, store

    rows._check_builders()
    monkeypatch.setitem(store.SCHEMAS, "steps", store.SCHEMAS["steps"].append(store.pa.field("extra", store.pa.int64())))
    with pytest.raises(AssertionError, match="step_row"):
        rows._check_builders()
