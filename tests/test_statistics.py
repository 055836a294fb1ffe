"""Signed and paired statistics, bands, ties and grouping, against scipy and hand computation."""

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, wilcoxon

from stability import analysis


def _paired_runs(err_p, err_c, **extra):
    rows = []
    for i, (ep, ec) in enumerate(zip(err_p, err_c, strict=True)):
        lr, wd = 10 ** (-3 + i / 4), 0.01 * (i + 1)
        rows += [{"run_id": f"p{i}", "stem": "patchify", "model": "vit_p_tiny", "status": "completed",
                  "top1_err": ep, "lr": lr, "wd": wd, "seed": 0, **extra},
                 {"run_id": f"c{i}", "stem": "conv", "model": "vit_c_tiny", "status": "completed",
                  "top1_err": ec, "lr": lr, "wd": wd, "seed": 0, **extra}]
    return pd.DataFrame(rows)


def test_paired_tests_equal_scipy():
    p = [30.0, 32.0, 40.0, 35.0, 50.0, 31.0, 33.0, 45.0]
    c = [25.0, 33.0, 30.0, 35.0, 41.0, 26.0, 30.0, 44.0]
    row = analysis.compare(_paired_runs(p, c), n_boot=200, n_perm=200).iloc[0]
    assert (row.a, row.b) == ("conv", "patchify")  # sorted: differences are b - a = patchify - conv
    d = np.array(p) - np.array(c)
    nz = d[d != 0]
    assert row.n_pairs == 8 and row.n_ties == 1
    assert row.n_a_lower == int((d > 0).sum()) and row.n_b_lower == int((d < 0).sum())
    assert row.wilcoxon_p == pytest.approx(wilcoxon(nz).pvalue)
    assert row.sign_p == pytest.approx(binomtest(int((nz > 0).sum()), len(nz)).pvalue)
    assert row.paired_median_diff == pytest.approx(np.median(d))
    assert row.paired_median_diff_lo <= np.median(d) <= row.paired_median_diff_hi
    assert row.median_diff == pytest.approx(np.median(p) - np.median(c))
    assert row.median_diff_lo <= row.median_diff <= row.median_diff_hi
    text = analysis.verdict_text(row)  # descriptive: names no side (stem_verdicts does, from its test)
    assert text.startswith(f"median patchify − conv = {row.median_diff:+.2f} points [") and "lower" not in text


def test_two_sample_label_tests_enumerate_every_split_when_there_are_few():
    """4 vs 4 has 70 splits: the median test's p is #splits at least as extreme / 70 exactly (its
    floor 4/70, not a Monte Carlo draw such as 0.0565 under it); any seed gives the same p; above
    EXACT_MAX_SPLITS the draws come back, (1 + hits) / (1 + n_perm)."""
    from stability.analysis import stats

    a, b = np.arange(4.0), np.arange(4.0, 8.0)
    assert stats.median_perm_p(a, b, seed=1) == stats.median_perm_p(a, b, seed=2) == 4 / 70
    rng = np.random.default_rng(3)
    for na, nb in ((3, 5), (4, 4), (5, 6)):
        x, y = rng.integers(0, 4, na).astype(float), rng.integers(1, 5, nb).astype(float)  # ties
        pool = np.concatenate([x, y])
        obs = abs(np.mean(y) - np.mean(x))
        brute = np.mean([abs(np.delete(pool, list(i)).mean() - pool[list(i)].mean()) >= obs - 1e-9
                         for i in combinations(range(na + nb), na)])
        assert stats.median_perm_p(x, y, center=np.mean) == pytest.approx(brute, abs=1e-12)
    big_a, big_b = rng.normal(size=10), rng.normal(size=10)  # 184,756 splits: drawn
    p = stats.median_perm_p(big_a, big_b, n_perm=999)
    assert p * 1000 == pytest.approx(round(p * 1000))
    one, many = rng.normal(size=1), rng.normal(size=1000)  # 1,000 splits but 1M mask cells: drawn too
    p = stats.ks_permutation_p(one, many, n_perm=999)
    assert p * 1000 == pytest.approx(round(p * 1000)) and stats._splits(1001, 1) is None


def test_paired_best_of_is_exact_when_every_labelling_fits_in_the_draws():
    """Over n shared points there are 2^n labellings; where they are no more than the draws, the p
    is the exact share (a multiple of 2^-n, the observed one counted), as enumeration by hand gives,
    and the MDE's null (every other labelling) passes the same threshold; past that, random draws."""
    from itertools import product

    from stability.analysis.findings import within_curve
    from stability.analysis.stats import paired_best_of, smallest_passing

    rng = np.random.default_rng(3)
    a, b = rng.normal(20, 2, 7), rng.normal(21, 2, 7)
    stat = lambda u, v: within_curve(u, v, [2.0])  # noqa: E731
    res = paired_best_of(a, b, stat, np.array([2.0]), n_boot=0, n_perm=2000)
    obs = stat(a, b)[0]
    every = np.array([stat(np.where(s, b, a), np.where(s, a, b))[0]
                      for s in map(np.array, product((False, True), repeat=7))])
    assert res.perms.shape == (127, 1)  # every labelling but the observed one
    assert res.p[0] == pytest.approx((every >= obs - 1e-12).mean())
    assert res.p_less[0] == pytest.approx((every <= obs + 1e-12).mean())
    assert (res.p[0] * 128) == pytest.approx(round(res.p[0] * 128))
    t = smallest_passing(res.perms[:, 0], 0.1, obs)
    assert not np.isfinite(t) or (every >= t - 1e-12).mean() <= 0.1
    # the observed labelling the unique best (p = 1/128): the smallest passing effect is it, not
    # "none can pass" (the enumerated null leaves it out: no other labelling reaches it)
    a, b = np.linspace(5, 6, 7), np.linspace(20, 60, 7)
    best = paired_best_of(a, b, stat, np.array([2.0]), n_boot=0, n_perm=2000)
    assert best.p[0] == pytest.approx(1 / 128) and best.perms[:, 0].max() < stat(a, b)[0]
    assert smallest_passing(best.perms[:, 0], 0.025, stat(a, b)[0]) == pytest.approx(stat(a, b)[0])
    # 12 points: 4,095 other labellings > 2,000 draws, so they are drawn (p on a 1/2001 grid)
    a, b = rng.normal(20, 2, 12), rng.normal(21, 2, 12)
    drawn = paired_best_of(a, b, stat, np.array([2.0]), n_boot=0, n_perm=2000)
    assert drawn.perms.shape == (2000, 1)


def test_ks_is_signed_and_its_permutation_p_handles_ties_exactly():
    a = np.array([1.0, 1.0, 2.0, 2.0])
    b = np.array([2.0, 3.0, 3.0, 3.0])
    d_ab, d_ba = analysis.ks_signed(a, b)
    assert (d_ab, d_ba) == (0.5 + 0.25, 0.0) or d_ab == pytest.approx(0.75)
    assert d_ba == 0.0  # a's EDF is never below b's: a has the lower errors
    # exact permutation p-value by enumerating every relabelling of the 8 runs
    pool = np.concatenate([a, b])
    obs = max(d_ab, d_ba)
    hits = [max(analysis.ks_signed(pool[list(i)], np.delete(pool, list(i)))) >= obs - 1e-12
            for i in combinations(range(8), 4)]
    exact = np.mean(hits)
    assert analysis.ks_permutation_p(a, b) == exact  # 70 splits: enumerated, not drawn
    row = analysis.compare(pd.DataFrame(
        [{"stem": "s1", "status": "completed", "top1_err": e} for e in a]
        + [{"stem": "s2", "status": "completed", "top1_err": e} for e in b]), n_perm=500).iloc[0]
    assert row.ks_better == "s1" and row.ks == pytest.approx(0.75)
    assert row.n_pairs == 0 and np.isnan(row.wilcoxon_p)  # nothing to pair on


def test_dkw_halfwidth_and_simultaneous_band():
    assert analysis.dkw_halfwidth(16, 0.9) == pytest.approx(np.sqrt(np.log(20) / 32))
    assert analysis.dkw_halfwidth(16, 0.9) == pytest.approx(0.306, abs=1e-3)
    runs = pd.DataFrame({"stem": "s", "status": "completed", "top1_err": np.arange(20.0)})
    e = analysis.edf(runs, n_boot=400, seed=0)
    # the simultaneous band is wider than the pointwise one everywhere, and holds F_n
    assert (e.F_hi_sim >= e.F_hi - 1e-12).all() and (e.F_lo_sim <= e.F_lo + 1e-12).all()
    assert (e.F_lo_sim <= e.F_right).all() and (e.F_right <= e.F_hi_sim).all()
    assert set(e.dkw.round(6)) == {round(analysis.dkw_halfwidth(20, 0.9), 6)}


def test_relative_band_rechooses_the_best_in_each_resample():
    runs = pd.DataFrame({"stem": "s", "status": "completed", "top1_err": [10.0, 12, 14, 16, 18]})
    e = analysis.edf(runs, relative=True, n_boot=500, seed=0)
    # every resample has a best run at Δ = 0: F*(0) >= 1/5 in all of them
    assert e.x.iloc[0] == 0 and e.F_lo.iloc[0] >= 0.2 - 1e-12


def test_within_uses_delta_at_most_x_with_exact_ties():
    # errors on a 300-image set: 100 * (1 - correct / 300); float subtraction of two of them is
    # not exactly 4.0, but the runs are exactly 4 points apart
    errs = [100 * (1 - c / 300) for c in (146, 134, 130)]
    assert errs[1] - errs[0] != 4.0
    delta = np.array(errs) - min(errs)
    assert analysis.within_fraction(delta, 4.0) == pytest.approx(2 / 3)
    rel = analysis.edf(pd.DataFrame({"stem": "s", "status": "completed", "top1_err": errs}),
                       relative=True, n_boot=0)
    assert rel.x.tolist() == [0.0, 4.0, pytest.approx(16 / 3)]
    assert rel.F_right.iloc[1] == pytest.approx(2 / 3)  # F just after 4 = within 4


def test_grouping_never_pools_sweeps_or_optimizers_by_default():
    a = _paired_runs([30, 40], [20, 25], sweep="s1", optimizer="adamw")
    b = _paired_runs([60, 70], [50, 55], sweep="s2", optimizer="sgd")
    runs = pd.concat([a, b], ignore_index=True)
    assert analysis.strata(runs) == ["sweep", "optimizer"]
    e = analysis.edf(runs, n_boot=0)
    assert {"sweep", "optimizer", "stem"} <= set(e.columns) and set(e.n) == {2}
    assert set(e.pooled) == {""}
    pooled = analysis.edf(runs, by=["stem"], n_boot=0)
    assert set(pooled.pooled) == {"sweep,optimizer"} and set(pooled.n) == {4}
    cmp = analysis.compare(runs, n_boot=50, n_perm=50)
    assert len(cmp) == 2 and set(cmp.sweep) == {"s1", "s2"} and set(cmp.n_pairs) == {2}
    s = analysis.summary(runs)
    assert len(s) == 4 and set(s.runs) == {2}


def test_summary_counts_runs_left_out_of_the_edf():
    runs = pd.DataFrame([{"stem": "conv", "status": st, "top1_err": e, "collapsed": col}
                         for st, e, col in [("completed", 20.0, False), ("completed", 88.0, True),
                                            ("diverged", None, False), ("failed", None, None),
                                            ("running", None, None), ("preempted", None, None)]])
    s = analysis.summary(runs).iloc[0]
    assert (s.runs, s.diverged, s.at_chance, s.failed, s.running, s.preempted) == (3, 1, 1, 1, 1, 1)
    assert s.worst == 100.0


def test_best_configs_by_any_column():
    runs = _paired_runs([30, 40], [20, 25])
    best = analysis.best_configs(runs, by=["model"]).set_index("model")
    assert best.loc["vit_c_tiny", "err"] == 20 and best.loc["vit_p_tiny", "err"] == 30
    assert set(best.n) == {2}


def test_relative_mode_puts_every_groups_diverged_runs_at_one_place():
    """Δ of a diverged run is 100 in every group, not 100 − that group's best: otherwise the
    stem with the better best run would have its diverged runs drawn further right."""
    runs = _paired_runs([10.0, 12.0, 14.0, 100.0], [2.0, 3.0, 4.0, 100.0])
    runs.loc[runs.top1_err == 100.0, "status"] = "diverged"
    d = analysis.errors(runs, relative=True, by=["stem"])
    assert d.loc[d.diverged, "err"].tolist() == [100.0, 100.0]
    assert sorted(d.loc[~d.diverged & d.stem.eq("conv"), "err"]) == [0.0, 1.0, 2.0]
    pts = analysis.edf(runs, relative=True, n_boot=50)
    assert set(pts[pts.x == 100.0].stem) == {"conv", "patchify"}
    row = analysis.compare(runs, relative=True, n_boot=200, n_perm=100).iloc[0]
    # every column in Δ points: best 0, median of (0, 1 or 2, 2 or 4, 100), worst 100
    assert row.best_a == row.best_b == 0.0 and row.worst_a == row.worst_b == 100.0
    assert row.median_a == 1.5 and row.median_b == 3.0 and row.median_diff == 1.5
    sim = pts.F_hi_sim >= pts.F_hi - 1e-12
    assert sim.all() and (pts.F_lo_sim <= pts.F_lo + 1e-12).all()  # simultaneous contains pointwise


def test_delta_to_best_with_every_run_diverged():
    out = analysis.delta_to_best(np.array([100.0, 100.0]), np.array([True, True]))
    assert out.tolist() == [100.0, 100.0]
