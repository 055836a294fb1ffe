"""The house rules the design review asked for, checked on the source itself (no imports run)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PKG = ROOT / "stability"
STATUS_NAMES = {"completed", "diverged", "pruned", "failed", "preempted", "running", "pending", "missing"}


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


def _private_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Names with a leading underscore imported from another module of the package (relative
    imports, or ``stability.``): a helper two modules share is public, in one place."""
    return [(node.lineno, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "stability")
            for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]


def test_private_import_finder_sees_each_form():
    src = ("from .compare import _boot_ci\nfrom ..store import DONE\nfrom stability.x import _y, z\n"
           "from numpy import _core\nfrom . import __version__\ndef f():\n    from .a import _b\n")
    assert sorted(_private_imports(ast.parse(src))) == [(1, "_boot_ci"), (3, "_y"), (7, "_b")]


def test_no_private_helper_is_imported_across_modules():
    """Shared helpers are public (the statistics live in ``analysis.stats``): no module imports
    another's ``_name``."""
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in sorted(PKG.rglob("*.py"))
                 for line, name in _private_imports(ast.parse(path.read_text()))]
    assert offenders == []


def test_group_axes_are_named_not_read_from_column_positions():
    """A table's group axes are passed or returned by name (``by=``, ``Table.by``,
    ``analysis.strata``), never taken as "the columns before stem" (or before "a", "runs" ...)."""
    pattern = re.compile(r"columns\[:|\.get_loc\(|\(\w+\.columns\)\[:")
    files = [*PKG.rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")]
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
           if pattern.search(line)]
    assert bad == []


def test_train_module_stays_small():
    """trainer/train.py keeps train() in phases; its parts (the step, tracing, pruning ...) live beside it in trainer/."""
    assert len((PKG / "trainer" / "train.py").read_text().splitlines()) <= 350


def test_nothing_points_outside_the_project():
    """A fresh clone has no ../shared: README, docs, scripts and code never refer to it."""
    pattern = re.compile(r"(?<![\w-])shared/(DESIGN|notes)|\.\./shared")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "slurm").rglob("*"),
             *PKG.rglob("*.py"), *(ROOT / "dashboard").rglob("*.py"), *(ROOT / "benchmarks").rglob("*"),
             *(ROOT / ".ci").rglob("*")]
    bad = [str(p.relative_to(ROOT)) for p in files if p.is_file() and pattern.search(p.read_text(errors="replace"))]
    assert bad == []


def _imports_of(path: Path) -> set[str]:
    """The ``stability`` modules (or names) a file outside the package imports, lazy ones included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "stability"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stability":
            out |= {f"{node.module}.{a.name}" if node.module == "stability" else node.module for a in node.names}
    return out


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


DASHBOARD_READS = ("stability.store", "stability.analysis", "stability.plots", "stability.grid.record",
                   "stability.replay",  # pure: recorded tables in, the pruners' replay out (writes nothing)
                   "stability.dashboard")  # the last: its own pages and common.py, shipped in the package


def test_the_dashboard_reads_through_store_analysis_plots_and_the_sweep_record_only():
    """The dashboard never writes, never asks a scheduler: it imports the store, analysis, plots,
    the read-only sweep record and the pruners' replay, nothing else of the package; neither the
    record nor the replay reaches a controller, backend launcher or trainer."""
    for path in (ROOT / "dashboard").rglob("*.py"):
        bad = [m for m in _imports_of(path) if not any(m == a or m.startswith(a + ".") for a in DASHBOARD_READS)]
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
    for start in ("stability.grid.record", "stability.replay"):
        reach = _closure(import_graph(), start)
        assert not reach & {"stability.grid.controller", "stability.grid.backends", "stability.grid.local",
                            "stability.grid.job", "stability.trainer.train"}, start


def test_every_executor_kind_has_a_backend():
    from stability.grid.backends import BACKENDS
    from stability.grid.kinds import EXECUTOR_KINDS

    assert tuple(BACKENDS) == EXECUTOR_KINDS


def test_a_sampler_is_asked_through_its_class_never_by_name():
    """Only grid/samplers.py may look at which sampler a spec names: everywhere else asks the
    sampler object (``sampler_for(spec)``), so a new sampler is one class."""
    names = r"[\"'](random|sobol|grid|tpe|async|waves)[\"']"
    pattern = re.compile(rf"sampler\.(name|mode)\s*(==|!=|in\b)|(==|!=)\s*{names}|{names}\s*(==|!=)")
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in PKG.rglob("*.py") if p.name != "samplers.py"
           for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert bad == []


def test_the_cli_parses_and_prints_only():
    """cli.py reaches the grid through its entry points (controller, spec) only: no planning,
    sampling, scheduler or lock code of its own, and no pandas."""
    imports = import_graph()["stability.cli"]
    grid = {m for m in imports if m.startswith("stability.grid.")}
    assert grid <= {"stability.grid.controller", "stability.grid.spec"}, grid
    text = (PKG / "cli.py").read_text()
    assert "import pandas" not in text and "SweepLock" not in text and "backend_for" not in text


DOC = ROOT / "docs" / "ARCHITECTURE.md"
GRAPH_MARKS = ("<!-- import graph: generated by tests/test_architecture.py -->", "<!-- end of import graph -->")


def graph_text(graph: dict[str, set[str]] | None = None, width: int = 110) -> str:
    """The import graph as ARCHITECTURE.md shows it: ``module -> imports`` (without the package
    prefix), modules importing nothing of the package left out, lines wrapped at ``width``."""
    graph = import_graph() if graph is None else graph
    name = {m: m.removeprefix("stability.") for m in graph}
    pad = max(len(name[m]) for m in graph if graph[m]) + 1
    lines = []
    for mod in sorted(graph, key=lambda m: name[m]):
        deps = sorted(name[d] for d in graph[mod])
        if not deps:
            continue
        line = f"{name[mod]:<{pad}}-> "
        for i, dep in enumerate(deps):
            piece = dep + ("," if i < len(deps) - 1 else "")
            if len(line) + len(piece) + 1 > width and not line.endswith("-> "):
                lines.append(line.rstrip())
                line = " " * (pad + 3)
            line += piece + " "
        lines.append(line.rstrip())
    return "```\n" + "\n".join(lines) + "\n```"


def _doc_with_graph() -> str:
    text = DOC.read_text()
    start, end = (text.index(m) for m in GRAPH_MARKS)
    return text[:start + len(GRAPH_MARKS[0])] + "\n" + graph_text() + "\n" + text[end:]


def test_the_documented_import_graph_is_the_code_s():
    """docs/ARCHITECTURE.md's import graph is generated, never typed: rewrite it with
    ``python -m tests.test_architecture`` after a change of imports."""
    assert DOC.read_text() == _doc_with_graph(), "the import graph changed: run python -m tests.test_architecture"


if __name__ == "__main__":
    DOC.write_text(_doc_with_graph())
    print(f"wrote the import graph into {DOC}")


def _third_party(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_analysis_is_dataframes_in_and_out():
    """analysis/ imports no UI, plotting or torch: notebooks call it with pandas alone."""
    for path in (PKG / "analysis").glob("*.py"):
        assert not _third_party(path) & {"streamlit", "plotly", "torch"}, path.name


def test_the_trainer_imports_no_analysis():
    """train → (tracing, detector, store, ...) never reaches ``analysis``: the layers go one way."""
    graph, seen, todo = import_graph(), set(), ["stability.trainer.train"]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo += graph.get(mod, ())
    assert "stability.detector" in seen and sorted(m for m in seen if m.startswith("stability.analysis")) == []


def test_each_rows_builder_covers_its_schema(monkeypatch):
    from stability import store
    from stability.trainer import rows

    rows._check_builders()
    monkeypatch.setitem(store.SCHEMAS, "steps", store.SCHEMAS["steps"].append(store.pa.field("extra", store.pa.int64())))
    with pytest.raises(AssertionError, match="step_row"):
        rows._check_builders()


def test_the_cli_and_its_stop_flag_import_no_torch():
    """``stability train`` installs its Ctrl-C flag before torch is imported (an interrupt inside
    torch's imports is lost or turned into another error): the CLI module and the flag's module
    must load without torch."""
    code = ("import sys, stability.cli, stability.trainer.stopping; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
