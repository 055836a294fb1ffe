"""The analysis modules document themselves: every public function says its Args and Returns,
and the examples in their docstrings run and hold (``doctest``, under the plain pytest command)."""

import ast
import doctest
import importlib
import pkgutil

import stability.analysis

from .conftest import ROOT

MODULES = sorted(m.name for m in pkgutil.iter_modules(stability.analysis.__path__))
# the key pure functions, each with a small table built inline in its docstring
EXAMPLES = ("edf.edf", "edf.worst_runs", "edf.errors", "stems.stem_outcomes", "compare.compare", "stats.holm",
            "grouping.strata")


def test_docstring_examples_run():
    attempted = 0
    for name in MODULES:
        # importlib, not attribute access: stability.analysis.edf is the function edf, not the module
        res = doctest.testmod(importlib.import_module(f"stability.analysis.{name}"))
        assert res.failed == 0, name
        attempted += res.attempted
    assert attempted >= 20
    for mod in ("stability.pruner", "stability.replay"):  # the pruner's rules and the replay's bound
        res = doctest.testmod(importlib.import_module(mod))
        assert res.failed == 0 and res.attempted >= 1, mod
    for path in EXAMPLES:
        mod, fn = path.split(".")
        assert ">>> " in (getattr(importlib.import_module(f"stability.analysis.{mod}"), fn).__doc__ or ""), path


def test_public_analysis_functions_say_args_and_returns():
    missing = []
    for path in sorted((ROOT / "stability" / "analysis").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node) or ""
                if "Args:" not in doc or "Returns:" not in doc:
                    missing.append(f"{path.name}: {node.name}")
    assert missing == []
