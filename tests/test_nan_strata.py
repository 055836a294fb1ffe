"""A stratum whose value is missing (NaN: an older row's warmup_epochs, a column only some sweeps
have, filled with null by the store) is a group of its own, named "n/a": never dropped, never
pooled with another (statistics audit, finding 2)."""

import numpy as np
import pandas as pd
import pytest

from stability import analysis, plots
from stability.analysis.edf import errors, outcomes, pruned_counts
from stability.analysis.grouping import stratum_rows

# Errors per (warmup_epochs, stem): the 1.0 stratum a clear conv win, the missing one no difference.
ERRS = {(1.0, "conv"): [10, 11, 12, 13], (1.0, "patchify"): [30, 31, 32, 33],
        (np.nan, "conv"): [10, 20, 30, 40], (np.nan, "patchify"): [12, 22, 28, 41]}


def _runs(errs: dict = ERRS, extra: bool = False) -> pd.DataFrame:
    """Runs of (warmup_epochs, stem) -> errors, as tests/test_stems.py builds them; ``extra``
    adds a failed and a pruned run to each stem of the missing stratum."""
    rows = []
    for (w, stem), es in errs.items():
        for i, e in enumerate(es):
            rows.append({"run_id": f"{w}{stem}{i}", "sweep": "s", "model": f"vit_{stem[0]}_tiny", "stem": stem,
                         "optimizer": "adamw", "epochs": 5, "warmup_epochs": w, "lr": 10 ** (-3 + i / 4),
                         "wd": 0.05, "seed": 0, "status": "completed", "top1_err": float(e),
                         "init_top1_err": 90.0, "collapsed": False})
        if extra and np.isnan(w):
            for status in ("failed", "pruned"):
                rows.append({**rows[-1], "run_id": f"{w}{stem}{status}", "status": status, "top1_err": 60.0})
    return pd.DataFrame(rows)


def _filled(df: pd.DataFrame) -> pd.DataFrame:
    """The same runs with the missing value spelled as a value of its own (-1.0): what each
    function should give for the missing stratum."""
    return df.fillna({"warmup_epochs": -1.0})


def _missing(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["warmup_epochs"].isna()]


def test_compare_keeps_the_missing_stratum_as_its_own_row():
    runs = _runs()
    c = analysis.compare(runs, n_boot=50, n_perm=50)
    assert len(c) == 2, c
    row, want = _missing(c).iloc[0], analysis.compare(_filled(runs), n_boot=50, n_perm=50).iloc[0]
    assert want.warmup_epochs == -1.0
    assert (row.n_a, row.n_b) == (4, 4)
    for col in ("median_diff", "ks", "ks_p", "area", "within_1_diff"):
        assert row[col] == pytest.approx(want[col]), col


def test_edf_and_summary_count_every_run_of_the_missing_stratum():
    runs = _runs(extra=True)
    e = analysis.edf(runs, n_boot=20)
    miss = _missing(e)
    assert set(miss.stem) == {"conv", "patchify"}
    # 4 completed and 1 pruned (scored as diverged) per stem; the failed one left out
    assert miss.groupby("stem").n.first().tolist() == [5, 5]
    assert miss.groupby("stem").n_pruned.first().tolist() == [1, 1]
    s = analysis.summary(runs)
    assert len(s) == 4 and s.runs.sum() == 18  # 16 completed, 2 pruned: none lost
    m = _missing(s).set_index("stem")
    assert m.loc["conv", "runs"] == 5 and m.loc["conv", "pruned"] == 1 and m.loc["conv", "failed"] == 1
    assert m.loc["patchify", "best"] == 12.0
    # the helpers of summary keep it too (crosstab and a plain groupby drop it)
    assert _missing(outcomes(runs, ["warmup_epochs", "stem"])).failed.tolist() == [1, 1]
    assert _missing(pruned_counts(runs, ["warmup_epochs", "stem"])).pruned.tolist() == [1, 1]


def test_relative_errors_are_deltas_in_the_missing_stratum_too():
    runs = pd.DataFrame({"stem": ["conv"] * 3 + ["patchify"] * 3, "warmup_epochs": [1.0] * 3 + [np.nan] * 3,
                         "status": "completed", "top1_err": [10.0, 12, 14, 20, 22, 24]})
    err = errors(runs, relative=True, by=("warmup_epochs", "stem"))
    assert err["err"].tolist() == [0.0, 2.0, 4.0, 0.0, 2.0, 4.0]  # not the raw 20, 22, 24


def test_stem_verdicts_test_the_missing_stratum_in_the_holm_family():
    runs = _runs()
    v = analysis.stem_verdicts(runs, n_boot=50)
    want = analysis.stem_verdicts(_filled(runs), n_boot=50).sort_values("warmup_epochs")
    assert len(v) == 2
    miss, have = _missing(v).iloc[0], v[v.warmup_epochs.eq(1.0)].iloc[0]
    assert (miss.n_a, miss.n_b) == (4, 4) and miss.p == pytest.approx(want.p.iloc[0])
    # two strata tested: Holm over 2 (the missing stratum is a member of the family)
    assert have.p_holm == pytest.approx(want.p_holm.iloc[1]) and have.verdict == want.verdict.iloc[1]
    assert "Holm over 2 strata" in have.why


def test_stratum_rows_matches_a_missing_value_to_a_missing_one():
    runs = _runs()
    assert stratum_rows(runs, {"warmup_epochs": np.nan, "stem": "conv"}).sum() == 4
    assert stratum_rows(runs, {"warmup_epochs": None}).sum() == 8
    assert stratum_rows(runs, {"warmup_epochs": 1.0}).sum() == 8 and stratum_rows(runs, {}).all()


def test_sweep_views_keep_the_missing_stratum():
    runs = _runs()
    best = analysis.best_configs(runs)
    assert len(best) == 4 and sorted(_missing(best).err) == [10, 12]
    assert _missing(best).n.tolist() == [4, 4]
    long = pd.concat([runs, runs.assign(epochs=10, run_id=runs.run_id + "L", top1_err=runs.top1_err - 5)])
    tl = analysis.training_length(long)
    assert len(_missing(tl)) == 4 and _missing(tl).vs_longest.tolist() == [5.0, 0.0, 5.0, 0.0]
    hm = analysis.lr_wd_heatmap(runs, bins=2, by=("warmup_epochs", "stem"))
    assert _missing(hm).n.sum() == 8
    worst = analysis.worst_runs(runs, by=("warmup_epochs", "stem"))
    assert len(worst) == 4 and sorted(_missing(worst).err) == [40, 41]


def test_figures_draw_the_missing_stratum_as_its_own_panel_named_n_a():
    runs = _runs()
    fig = plots.edf_figure(analysis.edf(runs, n_boot=0))
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 2 and any("n/a" in t for t in titles), titles
    fig = plots.lr_wd_figure(analysis.error_vs_hparams(runs, cols=("stem", "warmup_epochs", "lr", "wd")),
                             facet=("warmup_epochs",))
    titles = [a.text for a in fig.layout.annotations]
    assert any("n/a" in t for t in titles) and len(titles) == 2, titles  # 2 strata, vs lr (wd is one value)
    long = pd.concat([runs, runs.assign(epochs=10, run_id=runs.run_id + "L")])
    fig = plots.length_figure(analysis.training_length(long))
    assert len(fig.data) == 4, [t.name for t in fig.data]


def test_report_findings_name_the_missing_stratum_n_a():
    from stability.report import findings_section

    runs = _runs()
    html = findings_section(runs, analysis.stem_verdicts(runs, n_boot=50), "s")
    assert "warmup_epochs n/a" in html and ">n/a<" in html
    assert "ran here: nothing to compare" not in html  # its verdict line is found, not taken for a missing one


@pytest.fixture(scope="module")
def older_rows(dash_results, tmp_path_factory):
    """The dashboard fixture's results with half the runs (both stems, a diverged one each) written
    before ``warmup_epochs`` and ``dataset`` were recorded: the store reads them as null there."""
    import shutil

    root = tmp_path_factory.mktemp("nan_strata") / "results"
    shutil.copytree(dash_results, root)
    for f in sorted((root / "runs" / "sweep=dash").glob("*.parquet")):
        d = pd.read_parquet(f)
        if d.lr.iloc[0] in (0.01, 0.1, 1000.0):
            d.drop(columns=["warmup_epochs", "dataset"]).to_parquet(f, index=False)
    return root


def test_dashboard_pages_show_the_missing_stratum(older_rows):
    from .test_dashboard import PAGES, _app, _root

    for page in PAGES:  # _app: no exception on any page
        at = _app(older_rows, page)
        if page.endswith("overview.py"):  # the missing stratum's flag is raised, named n/a
            assert any("dataset n/a · patchify" in w.value for w in at.warning), [w.value for w in at.warning]
        if page.endswith("edf.py"):
            summary = at.dataframe[0].value
            assert len(summary) == 4 and summary.runs.sum() == 12 and summary.dataset.isna().sum() == 2
        if page.endswith("runs.py"):  # the sidebar's dataset filter offers the missing value, chosen at first
            assert len(at.dataframe[0].value) == 12
            assert at.multiselect(key="f_dataset").value == ["digits", "n/a"]
            with _root(older_rows):
                at.multiselect(key="f_dataset").set_value(["digits"]).run()
            assert not at.exception and len(at.dataframe[0].value) == 6


def test_report_renders_the_missing_stratum(older_rows, tmp_path):
    from .conftest import run_cli

    out = tmp_path / "report.html"
    res = run_cli("report", "dash", "--results", str(older_rows), "--out", str(out))
    assert res.returncode == 0, res.stderr
    html = out.read_text()
    # its verdict bullet, named n/a (the findings table's cells too, never "nan")
    assert "<b>dataset n/a, warmup_epochs n/a</b>" in html and ">nan<" not in html
    assert "ran here: nothing to compare" not in html
