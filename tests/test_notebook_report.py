"""The analyst notebook executes on real results; the static report is one self-contained file."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from .conftest import run_cli

ROOT = Path(__file__).parents[1]


def _jupyter_execute(repo: Path, env: dict) -> subprocess.CompletedProcess:
    """The README's command, from the root of a checkout: ``jupyter execute notebooks/analysis.ipynb``
    (here writing the executed copy beside it, to read its outputs)."""
    env = {k: v for k, v in os.environ.items() if k != "STABILITY_RESULTS"} | {"PYTHONPATH": str(ROOT)} | env
    return subprocess.run([sys.executable, "-m", "jupyter", "execute", "notebooks/analysis.ipynb",
                           "--output=executed", "--timeout=300"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)


def test_notebook_runs_as_the_readme_says(dash_results, tmp_path):
    """From a checkout's root, with no variable set, the notebook finds ``<repository root>/results``
    (jupyter runs it in notebooks/); ``STABILITY_RESULTS`` points it elsewhere, and a root without
    results stops it with the error naming the path, not with empty tables."""
    repo = tmp_path / "checkout"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "analysis.ipynb", repo / "notebooks")
    (repo / "pyproject.toml").write_text("")
    (repo / "results").symlink_to(dash_results)
    out = _jupyter_execute(repo, {})
    assert out.returncode == 0, out.stderr[-3000:]
    nb = nbformat.read(repo / "notebooks" / "executed.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert str(repo / "results") in text and "never_left_chance" in text
    assert "patchify" in text and "conv" in text and "diverged" in text
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = _jupyter_execute(repo, {"STABILITY_RESULTS": str(empty)})
    assert bad.returncode != 0 and "ConfigError" in bad.stderr
    assert f"{empty}: no results (expected {empty}/runs/sweep=<name>/<run_id>.parquet" in bad.stderr, bad.stderr[-3000:]


def test_report_is_self_contained(dash_results, tmp_path):
    out = tmp_path / "report.html"
    res = run_cli("report", "dash", "--results", str(dash_results), "--out", str(out))
    assert res.returncode == 0, res.stderr
    html = out.read_text()
    assert html.count("<script src=") == 0 and "plotly" in html.lower()
    assert html.count('class="plotly-graph-div"') >= 4
    assert "EDF of" in html and "patchify" in html and "conv" in html
    # the worst diverged run's figure marks where it diverged, as the dashboard's does
    assert "Worst" in html and "diverged at step" in html, "no divergence line on the worst runs' figures"
    # the terminal says the verdicts too, the same lines as the page's findings, before the path
    import html as htmllib

    said = res.stdout.strip().splitlines()
    assert said[-1] == f"report: {out}" and len(said) >= 2, res.stdout
    for line in said[:-1]:
        stratum, verdict = line.split(": ", 1)
        assert f"<li><b>{htmllib.escape(stratum)}</b>: {htmllib.escape(verdict)}</li>" in html, line
    assert any(("lower" in line or "no verdict" in line) for line in said[:-1]), res.stdout
    bad = run_cli("report", "nope", "--results", str(dash_results), "--out", str(tmp_path / "x.html"))
    assert bad.returncode == 2 and "dash" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()
    listed = run_cli("report", "--results", str(dash_results))  # no sweep named: what there is to report
    assert listed.returncode == 0 and listed.stdout.startswith(f"sweeps under {dash_results}: ") and "dash" in listed.stdout


def _text(page: str) -> str:
    """The page's words: no scripts (the figures' data), no tags."""
    import re

    return re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", page, flags=re.S))


def test_report_opens_with_the_findings_view(dash_results):
    import html
    import re

    from stability import analysis, store
    from stability.report import build_report, cell

    page = build_report(dash_results, "dash")
    runs = store.read_table(dash_results, "runs", sweep="dash")
    top = page[page.index("id='findings'"):page.index("EDF of")]  # the findings come before every figure
    # the very table and lines of analysis.stems (the dashboard's Overview shows the same)
    out = analysis.stem_outcomes(runs)
    assert len(out) == 2 and out.runs.sum() == 12 and out.diverged.sum() >= 2  # lr 1000 diverges in both stems
    for r in out.itertuples():
        assert (f"<td>{r.stem}</td>\n      <td>{r.runs}</td>\n      <td>{r.diverged} ({cell(r.diverged_pct)} %)</td>\n"
                f"      <td>{r.at_chance} ({cell(r.at_chance_pct)} %)</td>\n"
                f"      <td>{cell(r.median_err)} % (n = {r.runs})</td>") in top
    verdicts = analysis.stem_verdicts(runs)
    assert len(verdicts) == 1
    line = html.escape(analysis.verdict_line(verdicts.iloc[0]))
    assert f"<li><b>sweep dash</b>: {line}</li>" in top
    # every table scrolls sideways in its container instead of running off the page, every row shown
    assert page.count("<table") == page.count("<div class='wide'><table") > 0
    assert "overflow-x:auto" in page
    # one number format: lr and wd at 3 significant digits wherever they are printed
    best = analysis.best_configs(runs)
    for v in (*best.lr, *best.wd):
        assert f"<td>{float(v):.3g}</td>" in page
    assert not re.search(r"\bnan\b", _text(page), flags=re.I)


def test_report_findings_per_stratum_and_the_run_stuck_at_chance(tmp_path):
    """Two optimizers, never pooled: with adamw conv learns and patchify never leaves chance (a
    verdict); with sgd every run sits at chance (no verdict, saying why). The worst patchify run
    completed at chance and its figure says so."""
    import re

    import pandas as pd

    from stability.report import build_report

    from .test_sensitivity import C, _run, _write

    rows = []
    for opt, conv_err in (("adamw", [12.0, 10.0, 14.0, 16.0]), ("sgd", [85.0, 86.0, 87.0, 88.0])):
        for i, lr in enumerate([1e-3, 1.4142e-3, 3e-3, 1e-2]):
            rows.append(_run(f"{opt}c{i}", "conv", lr, 0, C, 0.5, 2.3, err=conv_err[i], optimizer=opt))
            rows.append(_run(f"{opt}p{i}", "patchify", lr, 0, C, 2.3, 2.3, err=86.0 + i - (opt == "sgd"),
                             optimizer=opt))
    root = _write(tmp_path / "results", pd.DataFrame(rows))
    page = build_report(root, "s")
    top = page[page.index("id='findings'"):page.index("EDF of")]
    assert "Per optimizer (never pooled) and stem" in top
    assert top.count("<td>4 (100 %)</td>") == 3 and top.count("never left chance</span>") == 3
    assert "<td>13 % (n = 4)</td>" in top and "<td>87.5 % (n = 4)</td>" in top  # the medians
    assert re.search(r"<li><b>optimizer adamw</b>: conv lower: conv below patchify in 100% of run pairs \(1 − prob_b_lower\), median "
                     r"patchify − conv = \+74\.50 points \[[^]]+\], n = 4 vs 4 \(Brunner–Munzel permutation "
                     r"p = [\d.]+, one stratum: [\d.]+ ≤ 0\.1\)</li>", top)
    assert ("<li><b>optimizer sgd</b>: no verdict (both stems sit at chance (or diverged, or were pruned) in "
            "every run: nothing learned to compare)</li>") in top
    comparison = page[page.index("Comparison between stems"):]
    comparison = comparison[:comparison.index("</table>")]
    assert "<td>no verdict</td>" in comparison and "<td>none</td>" not in comparison  # the findings' words
    # the worst patchify run completed but learned nothing: its heading says both
    assert re.search(r"Worst patchify run \(adamwp3, completed, stuck at chance, top-1 error 89 %\)", page)
    assert re.search(r"Worst conv run \(sgdc3, completed, stuck at chance, top-1 error 88 %\)", page)
    # one format for lr: 1.4142e-3 is 0.00141 in every table
    words = _text(page)
    assert " 0.00141 " in words and not re.search(r"0\.0014(\d\d+)?\b", words)
    assert not re.search(r"\bnan\b", words, flags=re.I)


def test_report_of_a_sweep_whose_config_fields_vary_splits_by_them(tmp_path):
    """Ad-hoc runs at two image sizes in one sweep: the report's strata name the image size (the
    runs left out are counted per stratum too, where a KeyError once was), never one pool."""
    import pandas as pd

    from stability.report import build_report

    from .test_sensitivity import C, _run, _write

    rows = [_run(f"{stem[0]}{px}{i}", stem, lr, 0, C, 0.5, 2.3, err=10.0 + i + (px == 17) * 50, image_size=px)
            for px in (32, 17) for stem in ("conv", "patchify") for i, lr in enumerate([1e-3, 3e-3, 1e-2])]
    rows.append({**_run("f", "conv", 1e-3, 1, "failed", 0.5, 2.3, image_size=17), "top1_err": None})
    page = build_report(_write(tmp_path / "results", pd.DataFrame(rows)), "s")
    words = " ".join(_text(page).split())
    assert "image_size 17" in words and "image_size 32" in words, words[:2000]
    assert "Runs left out" in page


def test_a_stratum_without_a_verdict_says_why():
    """No verdict where one stem finished runs (the other only running or failed), or where no run
    finished: the line says which, not "only conv, patchify ran here"."""
    import pandas as pd

    from stability.report import verdict_lines

    none = pd.DataFrame({"stem": ["conv", "patchify"], "runs": [0, 0]})
    one = pd.DataFrame({"stem": ["conv", "patchify"], "runs": [3, 0]})
    assert verdict_lines(pd.DataFrame(), none, [], "s") == [("sweep s", "no verdict (no run here has finished)")]
    assert verdict_lines(pd.DataFrame(), one, [], "s") == [("sweep s", "no verdict (only conv ran here: nothing "
                                                                       "to compare)")]
