"""The findings view's table and its stem verdicts: counts per stratum and stem, the gates (too
few runs, both stems at chance) and the rule's false-positive rate under a simulated null."""

import numpy as np
import pandas as pd

from stability import analysis
from stability.analysis.stats import bm_perm_p, holm, median_perm_p, prob_lower
from stability.analysis.stems import ALPHA, MIN_RUNS, stem_outcomes, stem_verdicts


def _runs(errs: dict[tuple[str, str], list[float]], init: float = 90.0) -> pd.DataFrame:
    """Runs of (optimizer, stem) -> errors; an error of None is a diverged run."""
    rows = []
    for (opt, stem), es in errs.items():
        for i, e in enumerate(es):
            rows.append({"run_id": f"{opt}{stem}{i}", "sweep": "s", "model": f"vit_{stem[0]}_tiny", "stem": stem,
                         "optimizer": opt, "epochs": 5, "lr": 10 ** (-3 + i / 4), "wd": 0.05, "seed": 0,
                         "status": "diverged" if e is None else "completed", "top1_err": 100.0 if e is None else e,
                         "init_top1_err": init, "collapsed": False})
    return pd.DataFrame(rows)


def test_counts_per_stratum_and_stem_and_never_left_chance():
    runs = _runs({("adamw", "conv"): [5, 6, None, 7], ("adamw", "patchify"): [85, 88, 90, None],
                  ("sgd", "conv"): [4, 5], ("sgd", "patchify"): [6, 82]})
    t = stem_outcomes(runs).set_index(["optimizer", "stem"])
    p = t.loc[("adamw", "patchify")]
    assert (p.runs, p.diverged, p.at_chance, p.learned) == (4, 1, 3, 0) and p.never_left_chance
    assert p.diverged_pct == 25 and p.at_chance_pct == 75 and p.chance_err == 90
    c = t.loc[("adamw", "conv")]
    assert (c.runs, c.diverged, c.at_chance, c.learned, c.median_err) == (4, 1, 0, 3, 6.5)
    assert not c.never_left_chance and not t.loc[("sgd", "patchify")].never_left_chance


def test_no_verdict_with_too_few_runs_or_both_stems_at_chance():
    runs = _runs({("adamw", "conv"): [81, 83, 85, 88, 89], ("adamw", "patchify"): [90, 91, 92, 93, 95],
                  ("sgd", "conv"): [1, 2, 3], ("sgd", "patchify"): [50, 60, 70]})
    v = stem_verdicts(runs, n_boot=200).set_index("optimizer")
    assert v.loc["adamw", "verdict"] == "none" and "chance" in v.loc["adamw", "why"]
    assert v.loc["sgd", "verdict"] == "none" and f"at least {MIN_RUNS}" in v.loc["sgd", "why"]
    # the interval alone would have called both (it excludes 0): that is what the gates stop
    assert v.loc["adamw", "median_diff_lo"] > 0


def test_a_real_difference_is_found_and_named():
    rng = np.random.default_rng(1)
    runs = _runs({("adamw", "conv"): list(rng.normal(10, 2, 8)), ("adamw", "patchify"): list(rng.normal(30, 2, 8))})
    v = stem_verdicts(runs, n_boot=200).iloc[0]
    assert v.verdict == "conv lower" and v.p_holm <= ALPHA and "permutation p" in v.why
    assert "conv lower" in analysis.verdict_line(v)


def test_permutation_p_is_exact_for_tiny_groups():
    assert median_perm_p(np.array([1.0, 2, 3]), np.array([7.0, 8, 9]), n_perm=20000) >= 0.09  # 2/20 at best
    # Brunner–Munzel: only the two fully separated splits of 20 reach an infinite statistic
    assert bm_perm_p(np.array([1.0, 2, 3]), np.array([7.0, 8, 9]), seed=1) == bm_perm_p(
        np.array([1.0, 2, 3]), np.array([7.0, 8, 9]), seed=2) == 2 / 20


def test_brunner_munzel_statistic_matches_scipy_with_ties():
    """The vectorised statistic (every split at once) is scipy's, ties and unequal n included."""
    import warnings

    from scipy.stats import brunnermunzel

    from stability.analysis.stats import _bm_stats

    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(200):
        na, nb = rng.integers(2, 10, 2)
        a, b = np.round(rng.normal(0, 2, na)), np.round(rng.normal(0.7, 1, nb))
        t = _bm_stats(np.concatenate([a, b]), (np.arange(na + nb) < na)[None, :])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = brunnermunzel(a, b).statistic
        if np.isfinite(ref):
            assert t == __import__("pytest").approx(ref, rel=1e-9), (a, b)
            checked += 1
        else:
            assert not np.isfinite(t) or t == 0
    assert checked > 150
    assert prob_lower(np.array([3.0, 4.0]), np.array([1.0, 4.0])) == 0.625


def _rule_rate(draw, reps: int, strata: int, rng, test=bm_perm_p) -> float:
    """Share of simulated families (``strata`` draws of (a, b) each) in which the verdict rule —
    the test's p per stratum, Holm over them, a side where the adjusted p ≤ ALPHA — names a side."""
    hits = 0
    for _ in range(reps):
        p = np.array([test(*draw(rng), n_perm=500) for _ in range(strata)])
        hits += int((holm(p) <= ALPHA).any())
    return hits / reps


def test_null_false_positive_rate_of_the_verdict_rule():
    """Stems drawn from one distribution (errors on a 0.33-point grid, 10 % diverged), 3 strata of
    6 vs 6: the share of families with any verdict stays at or below ALPHA (+ Monte Carlo slack)."""
    rng = np.random.default_rng(0)
    reps, hits = 150, 0
    for _ in range(reps):
        errs = {}
        for opt in ("adamw", "sgd", "lion"):
            for stem in ("conv", "patchify"):
                e = np.round(rng.normal(20, 6, 6) * 3) / 3
                errs[(opt, stem)] = [None if rng.random() < 0.1 else float(x) for x in e]
        v = stem_verdicts(_runs(errs), n_boot=50, n_perm=500)
        hits += int(v.verdict.str.endswith("lower").any())
    rate = hits / reps
    se = np.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert rate <= ALPHA + 2.5 * se, rate


def test_one_centre_with_different_spreads_is_not_a_side():
    """Stems with one centre (P(b < a) = 0.5) whose spreads differ — ViT_P's errors spread wider
    than ViT_C's — are the null the verdict names a side against. The permutation test of the
    median difference (the rule before) called a side in ~45 % of 6 vs 6 families at 10x spread;
    Brunner–Munzel's studentized permutation test runs slightly above ALPHA at 6 vs 6 (measured
    0.11–0.135: docs/methodology.md gives the table and the corners where it runs higher), and
    this checks the bound the docs state, 0.15, on fixed draws."""
    rng = np.random.default_rng(11)

    def wide(sd):
        return lambda r: (r.normal(20, 1, 6), r.normal(20, sd, 6))

    def diverging(r):  # conv tight; patchify wide with every run above 60 % diverged (at 100)
        b = r.normal(20, 25, 6)
        return r.normal(20, 2, 6), np.where(b > 60, 100.0, b)

    for name, draw, strata, reps in (("spreads 1 and 3", wide(3), 1, 1000),
                                     ("diverged wide", diverging, 1, 1000),
                                     ("3 strata, spreads 1 and 10", wide(10), 3, 600)):
        rate = _rule_rate(draw, reps, strata, rng)
        assert rate <= 0.15, (name, rate)
    # the old rule fails this very check: the test can tell a rule that names sides at random
    assert _rule_rate(wide(10), 200, 1, rng, median_perm_p) > 0.3


def test_a_no_clear_difference_that_could_not_pass_says_more_runs_could_tell():
    """Four strata of 4 vs 4, fully separated: each test's p is at its floor, 2/70 (only the two
    fully separated splits reach an infinite statistic), above α/4, so Holm cannot pass any; the
    line says so, with the floor, instead of a bare 'no clear difference'."""
    from stability import analysis
    from stability.analysis.stats import min_bm_perm_p

    assert round(min_bm_perm_p(np.arange(4.0), np.arange(4.0, 8.0)), 4) == round(2 / 70, 4)
    assert abs(min_bm_perm_p(np.arange(3.0), np.arange(3.0, 6.0)) - 0.1) < 1e-12
    assert min_bm_perm_p(np.array([1.0, 1, 2, 3]), np.array([3.0, 4, 5, 5])) > 2 / 70  # ties: no full separation
    rows = []
    for sweep in ("s1", "s2", "s3", "s4"):
        for i in range(4):
            for stem, err in (("conv", 2.0 + i), ("patchify", 40.0 + i)):
                rows.append({"run_id": f"{sweep}{stem}{i}", "sweep": sweep, "stem": stem, "status": "completed",
                             "top1_err": err, "init_top1_err": 90.0, "lr": 1e-3 * (i + 1), "seed": 0,
                             "optimizer": "adamw", "epochs": 4, "collapsed": False})
    v = analysis.stem_verdicts(pd.DataFrame(rows), n_boot=100)
    assert (v.verdict == "no clear difference").all() and (v.p < 0.03).all()
    assert all("the test's smallest p is 0.0286, above α/4 = 0.025: more runs per stem could tell" in w
               for w in v.why), v.why.tolist()
