"""The verdict rules, calibrated by simulation: null studies through the same code say
"reproduced" rarely enough (per finding and as a family), a planted effect of the size the report
calls detectable is found, and the old best-of-n bootstrap rule is shown to fail the same check.

The simulated study (docs/methodology.md, "Verdicts"): a configuration's true error is drawn from
a pool of digits-like errors, each seed adds model noise, and the observed error is a binomial
count on 300 test images (multiples of 1/3 point). Under the null both arms of every contrast
share one distribution.
"""

import numpy as np
import pandas as pd
import pytest

from stability.analysis import findings
from stability.analysis import stats as astats

N_TEST = 300
K = findings.SEEDS
POOL = np.array([1.0, 1.7, 2.3, 3.0, 4.0, 5.3, 7.0, 9.0, 12.0, 15.0, 20.0, 25.0, 32.0, 40.0, 50.0, 60.0])


def _observe(rng, true_err):
    """Observed error in points: a binomial count on the test images."""
    p = np.clip(np.asarray(true_err, float), 0.0, 100.0) / 100
    return rng.binomial(N_TEST, p) * 100.0 / N_TEST


def _mc_bound(rate, n):
    return rate + 2.5 * np.sqrt(rate * (1 - rate) / n)


# ---- the old rule: a percentile bootstrap interval around best-of-n, "reproduced" when lo > 0 ---

def _old_rule_rate(n_runs, studies=1000, n_boot=400, seed=0, did=False):
    """How often the rule findings.py used until issue 22 says "reproduced" under the null."""
    rng = np.random.default_rng(seed)
    hits = 0
    groups = 4 if did else 2
    for _ in range(studies):
        errs = _observe(rng, rng.choice(POOL, size=(groups, n_runs)))
        idx = rng.integers(0, n_runs, size=(n_boot, groups, n_runs))
        boot = np.take_along_axis(np.broadcast_to(errs, (n_boot, groups, n_runs)), idx, 2).min(2)
        # did: (P_sgd - P_adamw) - (C_sgd - C_adamw), as the optimizer finding
        stat = (boot[:, 0] - boot[:, 1]) - (boot[:, 2] - boot[:, 3]) if did else boot[:, 0] - boot[:, 1]
        hits += np.quantile(stat, 0.05) > 0
    return hits / studies


def test_old_best_of_n_bootstrap_rule_says_reproduced_too_often_under_the_null():
    # The review measured 17 % (best of 3), 9.5 % (best of 4), 9.3 % (difference in differences of
    # best-of-3) against the 5 % the rule implies; the simulation here finds the same excess.
    r3, r4, rdid = _old_rule_rate(3), _old_rule_rate(4, seed=1), _old_rule_rate(3, seed=2, did=True)
    assert r3 > 0.10 and r4 > 0.07 and rdid > 0.07, (r3, r4, rdid)


# ---- the new rule ---------------------------------------------------------------------------------

def _reps(rng, effect=0.0, seed_sd=1.5, which="peak", base=None):
    """Replicate runs of one study (k seeds per arm) plus runs at twice the long length: the
    arms' true errors share one draw from the pool; ``effect`` is planted in the paper's direction."""
    base = rng.choice(POOL[:8]) if base is None else base  # a selected (good) configuration
    rows = []
    arms = {"peak": findings.arms_peak(20), "optimizer": findings.arms_optimizer(20),
            "epochs": findings.arms_epochs(5, 20)}[which]
    shift = {"peak": {"P-adamw@20": effect}, "optimizer": {"P-sgd@20": effect},
             "epochs": {"P-adamw@5": effect}}[which]
    # main effects that cancel in the difference in differences (ViT_P worse everywhere, SGD worse,
    # the short schedule worse): the null of "no interaction" with arms at different error levels
    main = {"optimizer": {"P-adamw@20": 6.0, "P-sgd@20": 9.0, "C-sgd@20": 3.0},
            "epochs": {"P-adamw@20": 6.0, "P-adamw@5": 16.0, "C-adamw@5": 10.0}}.get(which, {})
    for seed in range(1, K + 1):
        for name, fields in arms.items():
            true = base + main.get(name, 0.0) + shift.get(name, 0.0) + rng.normal(0, seed_sd)
            for mult in (1, 2):
                err = _observe(rng, true)
                rows.append({**fields, "epochs": fields["epochs"] * mult, "seed": seed, "status": "completed",
                             "collapsed": False, "init_top1_err": 90.0, "run_id": f"{name}-{seed}-{mult}",
                             "test_ema_top1_err": err, "lr": 1e-3, "wd": 0.1, "long": mult == 2})
    df = pd.DataFrame(rows)
    return df[~df["long"]], df[df["long"]]


def _lr_wd_runs(rng, effect=0.0, points=10, pool=POOL):
    """Shared (lr, wd) points: both stems' true error at point i is q_i (the null), ViT_P's
    raised by ``effect`` x i points (its errors spread away from its best)."""
    rows = []
    for i in range(points):
        q = rng.choice(pool)
        for stem in ("patchify", "conv"):
            true = q + (effect * i if stem == "patchify" else 0.0)
            rows.append({"stem": stem, "lr": 1e-3 * (i + 1), "wd": 0.1, "seed": 0, "status": "completed",
                         "collapsed": False, "init_top1_err": 90.0, "optimizer": "sgd", "run_id": f"{stem}{i}",
                         "test_ema_top1_err": _observe(rng, true)})
    return pd.DataFrame(rows)


def _study(rng, effects=None):
    effects = effects or {}
    out = []
    for key in ("peak", "optimizer", "epochs"):
        reps, longer = _reps(rng, effects.get(key, 0.0), which=key)
        fn = {"peak": lambda r, lo: findings.finding_peak(r, 20, lo),
              "optimizer": lambda r, lo: findings.finding_optimizer(r, 20, lo),
              "epochs": lambda r, lo: findings.finding_epochs(r, 5, 20, lo)}[key]
        out.append(fn(reps, longer))
    out.append(findings.finding_lr_wd(_lr_wd_runs(rng, effects.get("lr_wd", 0.0)), n_boot=0, n_perm=200))
    return findings.judge(out)


def _claims(f):
    return f.verdict == "reproduced" or f.verdict.startswith("same direction")


def _contradicts(f):
    return f.verdict == "not reproduced"


@pytest.fixture(scope="module")
def null_studies():
    rng = np.random.default_rng(7)
    return [_study(rng) for _ in range(400)]


def test_null_studies_say_reproduced_at_most_at_the_nominal_rate(null_studies):
    n = len(null_studies)
    per = {f.key: np.mean([_claims(s[i]) for s in null_studies]) for i, f in enumerate(null_studies[0])}
    family = np.mean([any(_claims(f) for f in s) for s in null_studies])
    for key, rate in per.items():
        assert rate <= _mc_bound(0.05, n), (key, rate)
    assert family <= _mc_bound(findings.ALPHA, n), family
    # "not reproduced" is a family of its own (the other direction), held to the same bounds
    other = {f.key: np.mean([_contradicts(s[i]) for s in null_studies]) for i, f in enumerate(null_studies[0])}
    for key, rate in other.items():
        assert rate <= _mc_bound(0.05, n), (key, rate)
    assert np.mean([any(_contradicts(f) for f in s) for s in null_studies]) <= _mc_bound(findings.ALPHA, n)
    # and the verdicts are not silent: the tests do produce p-values, most studies inconclusive
    assert all(np.isfinite(f.p) for s in null_studies[:20] for f in s)
    assert np.mean([f.verdict == "inconclusive" for s in null_studies for f in s]) > 0.9


def test_a_planted_effect_of_the_reported_mde_is_found(null_studies):
    # the MDE a report states for the peak finding: the sign-flip test's at the family's first
    # Holm level, from the seed spread such studies measure (median over the null studies)
    planted = float(np.median([s[0].mde for s in null_studies]))
    rng = np.random.default_rng(11)
    hits = [_study(rng, {"peak": planted})[0] for _ in range(200)]
    # the test's part of the verdict: the paper's sign and the adjusted test passed (at this seed
    # spread the MDE is over 3x the paper's 1 point, so the regime check names the magnitude)
    rate = np.mean([_claims(f) for f in hits])
    assert rate >= findings.POWER - 2.5 * np.sqrt(0.16 / 200), (planted, rate)
    assert all(f.effect > 0 and f.p_adj <= findings.ALPHA for f in hits if _claims(f))
    # a clear effect within the paper's regime is reproduced with its sign; reversed, "not reproduced"
    reps, longer = _reps(rng, 2.0, seed_sd=0.3, base=1.0)
    f = findings.judge([findings.finding_peak(reps, 20, longer)])[0]
    assert f.verdict == "reproduced" and f.effect > 0, f
    reps, longer = _reps(rng, -2.0, seed_sd=0.3, base=1.0)
    rev = findings.judge([findings.finding_peak(reps, 20, longer)])[0]
    assert rev.verdict == "not reproduced" and rev.effect < 0
    lr_wd = findings.judge([findings.finding_lr_wd(_lr_wd_runs(rng, 1.0, 16, POOL[:3]), n_boot=200, n_perm=400)])[0]
    assert lr_wd.effect > 0 and lr_wd.p_adj <= findings.ALPHA and lr_wd.lo <= lr_wd.effect <= lr_wd.hi


def test_regime_named_when_not_converged_or_unchecked():
    rng = np.random.default_rng(3)
    reps, longer = _reps(rng, 8.0)
    f = findings.judge([findings.finding_peak(reps, 20)])[0]  # no longer runs: unchecked
    assert f.verdict == "same direction (regime differs)" and f.reason.startswith("convergence not checked")
    slow = longer.assign(test_ema_top1_err=longer["test_ema_top1_err"] - 5.0)  # 5 points better at 2x
    f = findings.judge([findings.finding_peak(reps, 20, slow)])[0]
    assert f.verdict == "same direction (regime differs)" and "not converged at 20 epochs" in f.reason
    # an effect many times the paper's is another regime even when converged
    reps, longer = _reps(rng, 20.0)
    f = findings.judge([findings.finding_peak(reps, 20, longer)])[0]
    assert "x the paper's" in f.reason and f.regime in f.reason


def test_seed_counts_and_mde():
    assert K == 6 and astats.min_sign_flip_p(5) > 0.025 >= astats.min_sign_flip_p(6)
    assert astats.mde_sign_flip(1.0, 5, 0.025) == np.inf
    # k = 6 at 0.025: only all six positive pass, so power = Phi(mde / sd)^6 = 0.8
    from scipy import stats

    assert astats.mde_sign_flip(1.0, 6, 0.025) == pytest.approx(stats.norm.ppf(0.8 ** (1 / 6)), abs=0.05)
    assert astats.sign_flip_p(np.ones(6)) == pytest.approx(1 / 64)
    assert astats.sign_flip_p([1.0, 2.0, -0.5, 3.0]) == pytest.approx(2 / 16)
    adj = astats.holm([0.01, 0.04, 0.03, 0.5])
    assert adj.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_inconclusive_says_what_could_have_been_seen():
    rng = np.random.default_rng(5)
    reps, longer = _reps(rng, 0.0, seed_sd=4.0)
    f = findings.judge([findings.finding_peak(reps, 20, longer)])[0]
    assert f.verdict == "inconclusive" and "detectable with at least 80% power" in f.reason and np.isfinite(f.mde)
    missing = findings.judge([findings.finding_peak(reps.iloc[:0], 20)])[0]
    assert missing.verdict == "inconclusive" and "needs >= 2 seeds" in missing.reason


def test_mcnemar_exact():
    a = np.array([1] * 10 + [0] * 2 + [1] * 50, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 50, bool)
    m = astats.mcnemar_exact(a, b)
    assert (m.only_a, m.only_b, m.n) == (10, 2, 62)
    from scipy import stats

    assert m.p == pytest.approx(stats.binomtest(10, 12, 0.5).pvalue)
    with pytest.raises(ValueError):
        astats.mcnemar_exact(a, b[:-1])


def test_a_stem_that_diverged_everywhere_is_never_the_most_stable():
    """The lr/wd finding's best is the best run that did not diverge: ViT_P diverged at all 16
    shared points while ViT_C learned at each, so ViT_C has the points within x, ViT_P none
    (scored at 100 with a best of 100, every Δ was 0 and ViT_P 'won': a reversed verdict)."""
    rng = np.random.default_rng(5)
    rows = []
    for i, err in enumerate(np.linspace(2.0, 47.0, 16)):
        rows.append({"stem": "conv", "lr": 1e-3 * (i + 1), "wd": 0.1, "seed": 0, "status": "completed",
                     "collapsed": False, "init_top1_err": 90.0, "optimizer": "sgd", "run_id": f"c{i}",
                     "test_ema_top1_err": float(err + rng.normal(0, 0.1))})
        rows.append({"stem": "patchify", "lr": 1e-3 * (i + 1), "wd": 0.1, "seed": 0, "status": "diverged",
                     "collapsed": False, "init_top1_err": 90.0, "optimizer": "sgd", "run_id": f"p{i}",
                     "test_ema_top1_err": np.nan})
    f = findings.judge([findings.finding_lr_wd(pd.DataFrame(rows), n_boot=0, n_perm=400)])[0]
    within = {r["x"]: r for r in f.curve}[findings.HEADLINE_X]
    assert within["patchify"] == 0.0 and within["conv"] > 0 and f.effect > 0, f.curve
    assert f.verdict != "not reproduced", (f.verdict, f.reason)


def test_both_stems_diverged_everywhere_is_no_comparison():
    """Both stems diverged at every shared point: the finding says so (inconclusive, no effect),
    not 'the smallest effect this test can pass: 0.00' from a null of ties."""
    rows = [{"stem": stem, "lr": 1e-3 * (i + 1), "wd": 0.1, "seed": 0, "status": "diverged", "collapsed": False,
             "init_top1_err": 90.0, "optimizer": "sgd", "run_id": f"{stem}{i}", "test_ema_top1_err": np.nan}
            for i in range(8) for stem in ("conv", "patchify")]
    f = findings.judge([findings.finding_lr_wd(pd.DataFrame(rows), n_boot=0, n_perm=200)])[0]
    assert f.verdict == "inconclusive" and np.isnan(f.effect), (f.verdict, f.effect)
    assert "both stems diverged at all 8 shared points" in f.reason, f.reason
    assert "0.00" not in f.reason, f.reason


def test_the_lr_wd_mde_is_a_value_the_statistic_can_take():
    """Six shared points: the within-x difference takes only -1/6, 0 and +1/6 (P(≥ 1/6) = 21/64 under
    the null, the exact enumeration), so no result can pass at the family's first Holm level: the
    MDE is 'none can pass', not the null's largest value nudged up (0.17 had read as 'the study
    could see the paper's +0.40')."""
    from dataclasses import replace

    null = np.repeat([-1 / 6, 0.0, 1 / 6], [21, 22, 21])
    f = replace(findings.LR_WD.missing(""), effect=0.0, lo=-0.5, hi=0.5, p=0.67, p_other=0.67, n=6, sd=0.12,
                null=tuple(np.tile(null, 30)), regime="")
    judged = findings.judge([f])[0]
    assert judged.mde == np.inf and "no result could pass the test" in judged.reason, (judged.mde, judged.reason)
    # with a passing value in the null's tail, the MDE is that value, one the statistic takes
    tail = replace(f, null=tuple(np.concatenate([np.zeros(300), [0.5] * 3, [2 / 3] * 3])))
    assert findings.judge([tail])[0].mde == pytest.approx(0.5)
