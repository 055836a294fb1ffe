"""The analyst notebook executes on real results; the static report is one self-contained file."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from .conftest import run_cli

ROOT = Path(__file__).parents[1]


def test_notebook_executes_on_results(dash_results, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    monkeypatch.setenv("STABILITY_RESULTS", str(dash_results))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "patchify" in text and "conv" in text and "diverged" in text
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2
    assert os.environ.get("STABILITY_RESULTS") == str(dash_results)


def test_report_is_self_contained(dash_results, tmp_path):
    out = tmp_path / "r" / "report.html"
    res = run_cli("report", "dash", "--results", str(dash_results), "--out", str(out))
    assert res.returncode == 0, res.stderr
    html = out.read_text()
    assert html.count("<script src=") == 0 and "plotly" in html.lower()
    assert html.count('class="plotly-graph-div"') >= 4
    assert "EDF of" in html and "patchify" in html and "conv" in html
    bad = run_cli("report", "nope", "--results", str(dash_results), "--out", str(tmp_path / "x.html"))
    assert bad.returncode == 2 and "dash" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()
