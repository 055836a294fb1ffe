"""The findings view's table and its stem verdicts: counts per stratum and stem, the gates (too
few runs, both stems at chance) and the rule's false-positive rate under a simulated null."""

import numpy as np
import pandas as pd

from stability import analysis
from stability.analysis.stats import median_perm_p
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


def test_a_no_clear_difference_that_could_not_pass_says_more_runs_could_tell():
    """Two strata of 4 vs 4, fully separated: each test's p is at its floor, 4/70 (not 2/70:
    swapping the extreme runs keeps both medians), above α/2, so Holm cannot pass either; the
    line says so, with the floor, instead of a bare 'no clear difference'."""
    from stability import analysis
    from stability.analysis.stats import min_median_perm_p

    assert round(min_median_perm_p(np.arange(4.0), np.arange(4.0, 8.0)), 4) == round(4 / 70, 4)
    assert abs(min_median_perm_p(np.arange(3.0), np.arange(3.0, 6.0)) - 0.2) < 1e-12
    rows = []
    for sweep in ("s1", "s2"):
        for i in range(4):
            for stem, err in (("conv", 2.0 + i), ("patchify", 40.0 + i)):
                rows.append({"run_id": f"{sweep}{stem}{i}", "sweep": sweep, "stem": stem, "status": "completed",
                             "top1_err": err, "init_top1_err": 90.0, "lr": 1e-3 * (i + 1), "seed": 0,
                             "optimizer": "adamw", "epochs": 4, "collapsed": False})
    v = analysis.stem_verdicts(pd.DataFrame(rows), n_boot=100)
    assert (v.verdict == "no clear difference").all() and (v.p < 0.07).all()
    assert all("the test's smallest p is 0.0571, above α/2 = 0.05: more runs per stem could tell" in w
               for w in v.why), v.why.tolist()
