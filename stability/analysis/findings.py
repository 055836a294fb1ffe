"""The paper's four findings as tested statistics with a direction, n, power and the regime named.

Three findings compare each arm at its best configuration (peak: the stems; optimizer: stem x
optimizer; training length: stem x length). "Best of n runs" is never the statistic: each arm's
configuration is chosen on the validation split (``select_arms``), trained again with the same
k seeds in every arm, and judged on the held-out test split by the mean of the k per-seed
contrasts ``d`` (``seed_contrast``), with its t interval and the exact sign-flip test
(``stats``). The test's null is "the per-seed contrasts are symmetric about 0", not "their mean
is 0": at k = 6 and Holm's first level 0.025 it passes only when all six contrasts share a sign
(a sign test in effect), so every replicated finding also gives how many seeds point each way
(``Finding.seed_signs``), and that count, not the mean, is what a passed test vouches for when
the contrasts are skewed. The lr/wd finding is one paired statistic over the shared (lr, wd)
points of one stratum with a matching permutation test (``finding_lr_wd``; runs of several
strata, e.g. AdamW and SGD, are refused rather than pooled).

``judge`` turns a report's findings into verdicts, with two Holm families:

- p-values are one-sided in the paper's direction and, separately, in the other; each direction
  is a Holm family over the findings with a p-value at family-wise level ``ALPHA`` (so under the
  full null some directional claim is made with probability up to 2 ``ALPHA``);
- **reproduced**: the adjusted test passed in the paper's direction and the regime was checked
  and matches (each long arm converged: within ``CONVERGED_POINTS`` of a 2x longer run; fewer
  than half the runs stuck at chance; the effect within ``MAGNITUDE`` x the paper's);
- **same direction (regime differs)**: the test passed but the regime is another or unchecked (the
  reason names it);
- **not reproduced**: the adjusted test passed in the other direction;
- **inconclusive**: neither, with the minimum detectable effect beside the paper's effect, so the
  reader knows whether the study could have seen it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from ..store import DONE
from .edf import CHANCE, DIVERGED_ERROR, at_chance, delta_to_best, errors  # noqa: F401 (CHANCE, at_chance: re-exported)
from .grouping import strata, with_design
from .stats import (
    holm,
    mde_sign_flip,
    paired_best_of,
    sd_upper,
    seeds_needed,
    sign_flip_p,
    smallest_passing,
    t_interval,
)
from .tables import groups_of

ALPHA = 0.10  # family-wise error rate of each direction's Holm family ("reproduced"; "not reproduced")
N_FINDINGS = 4
SEEDS = seeds_needed(ALPHA / N_FINDINGS)  # 6: 2^-6 = 0.016 <= 0.025, the level Holm asks of the smallest p
CI = 0.9
POWER = 0.8
CONVERGED_POINTS = 1.0  # a long arm is converged when a 2x longer run is at most this much better
MAGNITUDE = 3.0  # an effect over 3x the paper's is another regime, whatever its sign
HEADLINE_X = 2.0  # lr/wd: "within x points of the best" (docs/methodology.md, "Verdicts")
X_GRID = tuple(float(x) for x in np.arange(0.0, 10.01, 0.5))
# The error every finding reads: the weight-EMA model's (the paper reports pycls' EMA error) on
# the held-out test split, each arm's configuration having been chosen on the validation split.
VALUE = "test_ema_top1_err"
SELECT_BY = "ema_top1_err"  # validation split


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    claim: str
    paper: str  # the paper's numbers, in words
    statistic: str  # what ``effect`` is, signed so that > 0 is the paper's direction
    unit: str = "points"
    paper_effect: float | None = None  # the same statistic in the paper, where it can be read off

    def missing(self, why: str) -> Finding:
        """The finding of a study that lacks the runs it needs: inconclusive, saying why."""
        return Finding(**asdict(self), effect=np.nan, lo=np.nan, hi=np.nan, p=np.nan, p_other=np.nan,
                       p_test="", n=0, n_text="0", sd=np.nan, mde=np.inf, regime="not checked (no data)", details=why)


@dataclass(frozen=True)
class Finding:
    key: str
    title: str
    claim: str
    paper: str
    statistic: str
    unit: str
    paper_effect: float | None
    effect: float
    lo: float  # CI interval (t over seeds; simultaneous band for lr/wd)
    hi: float
    p: float  # one-sided, the paper's direction, raw
    p_other: float  # one-sided, the other direction, raw
    p_test: str
    n: int  # seeds (paired contrasts) or shared points
    n_text: str
    sd: float  # of the per-seed contrast (lr/wd: the statistic's SD over the label permutations)
    # minimum detectable effect at POWER with the family's first Holm level, from an 80 % upper
    # confidence bound of the contrast's SD (``stats.sd_upper``)
    mde: float
    regime: str  # "" when checked and matching; otherwise why not
    details: str
    p_adj: float = np.nan
    p_other_adj: float = np.nan
    verdict: str = "inconclusive"
    reason: str = ""
    curve: tuple = ()  # lr/wd: one dict per x (within fractions, difference, band, p)
    value: str = ""  # the error column judged (``judged_value``)
    null: tuple = ()  # lr/wd: the headline statistic under each label permutation
    d: tuple = ()  # replicated findings: the per-seed contrasts
    # replicated findings: how many seeds point each way ("5 of 6 seeds the paper's way, 1 the other
    # way"): what the sign-flip test (null: contrasts symmetric about 0) rests on at k = 6
    seed_signs: str = ""

    def as_row(self) -> dict:
        return asdict(self)


def judge(findings: Sequence[Finding], alpha: float = ALPHA) -> list[Finding]:
    """The findings' verdicts: two Holm families, one per direction.

    "reproduced" / "same direction" come from the Holm family of the one-sided p-values in the
    paper's direction, "not reproduced" from the family of those in the other direction; each
    family is held to ``alpha``, so under the full null some directional claim is made with
    probability up to 2 ``alpha``. A finding without a p-value (no data) is in neither family.

    Args:
        findings: one report's findings.
        alpha: the family-wise level of each direction's family.

    Returns:
        The findings with Holm-adjusted p-values (both directions), the MDE at the family's first
        Holm level (``alpha`` over the findings with a p-value: the m Holm uses), and each its
        verdict and reason.
    """
    adj, adj_other = holm([f.p for f in findings]), holm([f.p_other for f in findings])
    # Holm's first level, what the smallest p must reach: over the m findings Holm counts (those
    # with a p-value; ``holm`` leaves NaN out), so the MDE is at the level the test really runs at
    tested = int(np.isfinite(np.array([f.p for f in findings], float)).sum())
    level = alpha / max(tested, 1)
    out = []
    for f, pa, po in zip(findings, adj, adj_other, strict=True):
        f = replace(f, p_adj=float(pa), p_other_adj=float(po), mde=_family_mde(f, level))
        out.append(replace(f, **dict(zip(("verdict", "reason"), _verdict(f, alpha), strict=True))))
    return out


def _family_mde(f: Finding, level: float) -> float:
    if not np.isfinite(f.sd) or f.n < 2:
        return f.mde
    if f.key == "lr_wd":
        return _mde_permutation(f.null, f.n, level, f.effect)
    return _mde_seeds(f.sd, f.n, level)


def _mde_permutation(null: Sequence[float], n: int, level: float, observed: float) -> float:
    """lr/wd: the smallest effect its permutation test can call significant at ``level`` (from
    the test's own null draws; ties among the within-x fractions make it large). A lower bound on
    the effect detectable with 80 % power, which is larger still. ``inf`` when none can pass."""
    if 2.0 ** -n > level or not len(null):
        return float("inf")
    c = max(smallest_passing(np.asarray(null), level, observed), 0.0)
    return c if c <= 1.0 else float("inf")  # a difference of fractions cannot exceed 1


def _verdict(f: Finding, alpha: float) -> tuple[str, str]:
    paper = f"the paper: {f.paper_effect:+.2f} {f.unit}" if f.paper_effect is not None else "the paper gives no number"
    # the seeds each way beside every p: at k = 6 a passed sign-flip test says "all seeds share a
    # sign", which the mean alone does not tell when the contrasts are skewed
    seeds = f" ({f.seed_signs})" if f.seed_signs else ""
    if not np.isfinite(f.p):
        return "inconclusive", f.details
    if f.p_adj <= alpha and f.effect > 0:
        if not f.regime:
            return "reproduced", f"paper's sign{seeds}, Holm-adjusted p {f.p_adj:.3g} ≤ {alpha:g}, regime checked; {paper}"
        return "same direction (regime differs)", f"{f.regime}; Holm-adjusted p {f.p_adj:.3g} ≤ {alpha:g}{seeds}; {paper}"
    if f.p_other_adj <= alpha and f.effect < 0:
        return "not reproduced", f"the opposite sign{seeds}, Holm-adjusted p {f.p_other_adj:.3g} ≤ {alpha:g}; {paper}"
    if np.isnan(f.mde):
        return "inconclusive", (f"Holm-adjusted p {f.p_adj:.3g} > {alpha:g}{seeds}; the contrast did not vary across "
                                f"seeds; {paper}")
    if not np.isfinite(f.mde):
        return "inconclusive", (f"Holm-adjusted p {f.p_adj:.3g} > {alpha:g}{seeds}; with n = {f.n} no result could pass "
                                f"the test; {paper}")
    could = ("" if f.paper_effect is None or f.mde <= abs(f.paper_effect)
             else "; too small a study to see the paper's effect")
    if f.key == "lr_wd":
        return "inconclusive", (f"Holm-adjusted p {f.p_adj:.3g} > {alpha:g}; the smallest effect this permutation "
                                f"test can pass: {f.mde:.2f} {f.unit}; {paper}{could}")
    return "inconclusive", (f"Holm-adjusted p {f.p_adj:.3g} > {alpha:g}{seeds}; detectable with at least {POWER:.0%} power"
                            f": {f.mde:.2f} {f.unit}; {paper}{could}")


# ---- arms: selection on the validation split, replicates on the test split ----------------------

JUDGED = ("test_ema_top1_err", "test_top1_err", "ema_top1_err", "top1_err")  # preferred first


def judged_value(runs: pd.DataFrame, order: Sequence[str] = JUDGED) -> str:
    """The error column the findings judge.

    Args:
        runs: the runs.
        order: the columns in order of preference.

    Returns:
        The first column of ``order`` the runs have values in: the held-out test split's EMA error
        where there is one, the validation split's only when there is no test split.
    """
    return next((c for c in order if c in runs and runs[c].notna().any()), order[-1])

ARM_FIELDS = ("stem", "optimizer", "epochs")


def _finished(runs: pd.DataFrame, value: str) -> pd.DataFrame:
    """Finished runs with ``err`` (diverged at 100, pruned too: ``errors``' default; a pruned run
    has no test error but is kept, never dropped). A completed run without ``value`` (no EMA, no
    test split) is left out, not counted as diverged."""
    if value not in runs:
        return runs.iloc[:0].assign(err=pd.Series(dtype=float), diverged=pd.Series(dtype=bool),
                                    pruned=pd.Series(dtype=bool))
    df = errors(runs, value=value, by=("stem",))
    return df[df["diverged"] | df["pruned"] | df[value].notna()]


def _matching(df: pd.DataFrame, fields: dict) -> np.ndarray:
    """Rows of ``df`` whose columns equal every value of ``fields`` (none where a column is missing)."""
    mask = np.ones(len(df), bool)
    for k, v in fields.items():
        mask &= (df[k] == v).to_numpy() if k in df else False
    return mask


def select_arms(runs: pd.DataFrame, arms: dict[str, dict], value: str = SELECT_BY) -> dict[str, pd.Series]:
    """Each arm's chosen run: among the finished runs whose fields match the arm's, the one with
    the lowest ``value`` (validation error; diverged at 100; ties by lr, then wd, then run id).

    Args:
        runs: the selection studies' runs (runs table rows with ``config_json``).
        arms: arm name -> the fields its runs share (e.g. ``{"stem": "conv", "optimizer": "sgd"}``).
        value: the column chosen on.

    Returns:
        arm name -> its chosen runs row; arms without a finished run are left out.
    """
    df = _finished(runs, value)
    out = {}
    for name, fields in arms.items():
        pool = df[_matching(df, fields)]
        if len(pool):
            out[name] = pool.sort_values(["err", "lr", "wd", "run_id"], kind="stable").iloc[0]
    return out


def seed_contrast(reps: pd.DataFrame, arms: dict[str, dict], weights: dict[str, float],
                  value: str = VALUE) -> pd.DataFrame:
    """Per seed, the contrast ``d = sum(weights[arm] * error of arm)`` over the seeds where every
    arm has a finished run (diverged at 100).

    Args:
        reps: the replicate runs.
        arms: arm name -> its fields (as ``select_arms``).
        weights: arm name -> +1 / -1.
        value: the error column.

    Returns:
        One row per seed: ``seed``, each arm's error (a column per arm) and ``d``.
    """
    df = _finished(reps, value)
    cols = {}
    for name, fields in arms.items():
        cols[name] = df[_matching(df, fields)].groupby("seed")["err"].mean()
    table = pd.DataFrame(cols).dropna()
    table["d"] = sum(w * table[a] for a, w in weights.items())
    return table.reset_index().rename(columns={"index": "seed"})


def convergence(reps: pd.DataFrame, longer: pd.DataFrame | None, arms: dict[str, dict],
                value: str = VALUE) -> tuple[str, str]:
    """The regime check of long arms.

    Per arm, its mean error over the seeds it shares with the runs at twice its length, minus
    theirs (the gain). With two seeds the check is noisy, and errs toward "not converged": it
    can only withhold "reproduced".

    Args:
        reps: the replicate runs.
        longer: the runs at twice the length (None: not run).
        arms: arm name -> its fields (with ``epochs``).
        value: the error column.

    Returns:
        (regime, measured): regime is "" when every arm's gain is at most ``CONVERGED_POINTS``,
        else the words for the report (an arm not converged, or the check not run); measured
        lists every gain with its n.
    """
    if longer is None or not len(longer):
        return "convergence not checked (no runs at twice the length)", ""
    a, b = _finished(reps, value), _finished(longer, value)
    notes, measured = [], []
    for name, fields in arms.items():
        ea = a[_matching(a, fields)].groupby("seed")["err"].mean()
        eb = b[_matching(b, {**fields, "epochs": 2 * fields["epochs"]})].groupby("seed")["err"].mean()
        common = ea.index.intersection(eb.index)
        if not len(common):
            notes.append(f"{name}: not checked (no run at {2 * fields['epochs']} epochs)")
            continue
        gain = round(float((ea[common] - eb[common]).mean()), 9)  # errors are multiples of 1/3 point: no float noise decides
        measured.append(f"{name} {gain:+.2f} (n = {len(common)})")
        if gain > CONVERGED_POINTS:
            notes.append(f"{name} not converged at {fields['epochs']} epochs ({gain:.1f} points better "
                         f"at {2 * fields['epochs']}, n = {len(common)})")
    return "; ".join(notes), ("gain at 2x length (points): " + ", ".join(measured)) if measured else ""


def _chance(runs: pd.DataFrame, arms: dict[str, dict], value: str) -> str:
    """Arms of which at least half the finished runs are stuck at chance: "most runs off chance"
    is part of the regime. Diverged and pruned runs are finished runs, not runs at chance (only a
    completed run can be: ``at_chance``)."""
    done = runs[runs["status"].isin(DONE)] if len(runs) else runs
    notes = []
    for name, fields in arms.items():
        g = done[_matching(done, fields)]
        n = int(at_chance(g, value).sum()) if len(g) else 0
        if len(g) and n >= len(g) / 2:
            notes.append(f"{name}: {n} of {len(g)} runs stuck at chance")
    return "; ".join(notes)


def _magnitude(effect: float, paper: float | None) -> str:
    if paper is None or not np.isfinite(effect) or abs(effect) <= MAGNITUDE * abs(paper):
        return ""
    return f"the effect is {abs(effect) / abs(paper):.0f}x the paper's"


def _mde_seeds(sd: float, k: int, level: float) -> float:
    """The sign-flip test's MDE at ``level`` from an 80 % upper bound of the contrast's SD; NaN when
    the contrasts do not vary (sd 0: every seed gave the same difference, often both at chance)."""
    return float("nan") if sd == 0 else mde_sign_flip(sd_upper(sd, k, POWER), k, level, POWER)


def seed_signs(d: Sequence[float]) -> str:
    """How many per-seed contrasts point each way, the majority first.

    The sign-flip test's null is "the contrasts are symmetric about 0": with 6 seeds at Holm's
    0.025 it passes only when all six share a sign, so this count is what a passed test vouches
    for, beside the mean (skewed contrasts can have a mean near 0 and most seeds on one side).

    Args:
        d: the per-seed contrasts, > 0 the paper's direction.

    Returns:
        "5 of 6 seeds the paper's way, 1 the other way" (the larger side first; ", 1 no
        difference" where a contrast is 0).

    >>> seed_signs([1.0, 2.0, -0.5, 0.0])
    "2 of 4 seeds the paper's way, 1 the other way, 1 no difference"
    >>> seed_signs([-1.0, -1.0, 5.0])
    "2 of 3 seeds the other way, 1 the paper's way"
    """
    d = np.asarray(d, float)
    sides = [(int((d > 0).sum()), "the paper's way"), (int((d < 0).sum()), "the other way")]
    (n1, w1), (n2, w2) = sides if sides[0][0] >= sides[1][0] else sides[::-1]
    zero = int((d == 0).sum())
    return f"{n1} of {len(d)} seeds {w1}, {n2} {w2}" + (f", {zero} no difference" if zero else "")


def _seed_finding(c: Claim, table: pd.DataFrame, arms: dict[str, dict], regime: list[str],
                  details: str, value: str) -> Finding:
    """The sign-flip test, t interval and MDE of a seed contrast table (``seed_contrast``)."""
    d = table["d"].to_numpy(float)
    k = len(d)
    if k < 2:
        return c.missing(f"needs >= 2 seeds with every arm finished (have {k}); {details}".rstrip("; "))
    eff, lo, hi = t_interval(d, CI)
    sd = float(d.std(ddof=1))
    per_arm = ", ".join(f"{a} {table[a].mean():.2f}" for a in arms)
    regime = [r for r in (*regime, _magnitude(eff, c.paper_effect)) if r]
    return Finding(**asdict(c), d=tuple(float(v) for v in d), effect=eff + 0.0, lo=lo + 0.0, hi=hi + 0.0,
                   p=sign_flip_p(d, "greater"), p_other=sign_flip_p(d, "less"),
                   p_test=f"exact sign-flip over {k} seeds; null: the per-seed contrasts are symmetric about 0",
                   seed_signs=seed_signs(d), n=k, n_text=f"{k} seeds x {len(arms)} arms",
                   sd=sd, mde=_mde_seeds(sd, k, ALPHA / N_FINDINGS), regime="; ".join(regime), value=value,
                   details=f"mean test error per arm: {per_arm}; per-seed d: "
                           + ", ".join(f"{v:+.2f}" for v in d) + (f"; {details}" if details else ""))


# ---- the four findings ------------------------------------------------------------------------

def arm(stem: str, optimizer: str, epochs: int) -> tuple[str, dict]:
    """An arm of a finding.

    Args:
        stem: "patchify" or "conv".
        optimizer: the optimizer.
        epochs: the length.

    Returns:
        (its name, its fields): the name ``P-adamw@20`` (ViT_P, AdamW, 20 epochs) is one name in
        every finding and report.

    >>> arm("conv", "sgd", 50)
    ('C-sgd@50', {'stem': 'conv', 'optimizer': 'sgd', 'epochs': 50})
    """
    return f"{'P' if stem == 'patchify' else 'C'}-{optimizer}@{epochs}", {
        "stem": stem, "optimizer": optimizer, "epochs": epochs}


def arms_peak(epochs: int) -> dict[str, dict]:
    """The arms of the peak finding.

    Args:
        epochs: the length.

    Returns:
        arm name -> fields: each stem with AdamW.
    """
    return dict(arm(s, "adamw", epochs) for s in ("patchify", "conv"))


def arms_optimizer(epochs: int) -> dict[str, dict]:
    """The arms of the optimizer finding.

    Args:
        epochs: the length.

    Returns:
        arm name -> fields: each stem with AdamW and with SGD.
    """
    return dict(arm(s, o, epochs) for s in ("patchify", "conv") for o in ("adamw", "sgd"))


def arms_epochs(short: int, long: int) -> dict[str, dict]:
    """The arms of the training-length finding.

    Args:
        short, long: the two lengths.

    Returns:
        arm name -> fields: each stem with AdamW at each length.
    """
    return dict(arm(s, "adamw", ep) for s in ("patchify", "conv") for ep in (short, long))


PEAK = Claim("peak", "Peak performance (§6, Fig. 6 and Table 2)",
             "with each model's best (lr, wd), ViT_C's error is lower than ViT_P's",
             "400 epochs: 4GF 18.6% (ViT_C) vs 19.6% (ViT_P); 1GF 24.7% vs 27.7%; RegNetY-4GF 18.7%",
             "ViT_P − ViT_C test error at each arm's selected config, mean over seeds", paper_effect=1.0)
OPTIMIZER = Claim("optimizer", "Optimizer: AdamW vs SGD (§5.2, Fig. 3 and Table 3)",
                  "the SGD − AdamW gap in error is larger for ViT_P than for ViT_C",
                  "4GF, 50 epochs: SGD − AdamW = 5.3 points for ViT_P, 0.7 for ViT_C (ViT_P up to ~10)",
                  "(SGD − AdamW) of ViT_P − (SGD − AdamW) of ViT_C, mean over seeds", paper_effect=4.6)
EPOCHS = Claim("epochs", "Training length (§5.1, Fig. 2)",
               "ViT_C converges faster: the ViT_P − ViT_C gap is larger at the shortest schedule than at the longest",
               "ViT_C's gain is largest at short schedules and shrinks as training lengthens (50 → 400 epochs)",
               "(P − C) at the shortest − (P − C) at the longest schedule, mean over seeds")
LR_WD = Claim("lr_wd", "Stability over lr and wd (§5.3, Figs. 4–5)",
              f"more ViT_C than ViT_P runs lie within x points of their own best (Δtop-1 EDF); headline x = {HEADLINE_X:g}",
              "ViT_C-18GF (SGD): ~60% of runs within 4 points of the best; ViT_P-18GF: < 20%",
              f"fraction of (lr, wd) points within {HEADLINE_X:g} points of the stem's best, conv − patchify",
              "fraction", paper_effect=0.4)


def finding_peak(reps: pd.DataFrame, epochs: int, longer: pd.DataFrame | None = None,
                 value: str = VALUE) -> Finding:
    """§6: at each stem's selected AdamW config, ViT_C's test error is lower.

    Args:
        reps: the replicate runs.
        epochs: the arms' length.
        longer: the runs at twice the length (the convergence check), if any.
        value: the error column.

    Returns:
        The ``Finding`` (not yet judged: ``judge``).
    """
    arms = arms_peak(epochs)
    table = seed_contrast(reps, arms, dict(zip(arms, (1, -1), strict=True)), value)
    conv, measured = convergence(reps, longer, arms, value)
    return _seed_finding(PEAK, table, arms, [conv, _chance(reps, arms, value)], measured, value)


def finding_optimizer(reps: pd.DataFrame, epochs: int, longer: pd.DataFrame | None = None,
                      value: str = VALUE) -> Finding:
    """§5.2: SGD costs ViT_P more than ViT_C (each optimizer at its selected lr).

    Args:
        reps: the replicate runs.
        epochs: the arms' length.
        longer: the runs at twice the length (the convergence check), if any.
        value: the error column.

    Returns:
        The ``Finding`` (not yet judged: ``judge``).
    """
    arms = arms_optimizer(epochs)
    table = seed_contrast(reps, arms, dict(zip(arms, (-1, 1, 1, -1), strict=True)), value)  # P-adamw, P-sgd, C-adamw, C-sgd
    conv, measured = convergence(reps, longer, arms, value)
    return _seed_finding(OPTIMIZER, table, arms, [conv, _chance(reps, arms, value)], measured, value)


def finding_epochs(reps: pd.DataFrame, short: int, long: int, longer: pd.DataFrame | None = None,
                   value: str = VALUE) -> Finding:
    """§5.1: ViT_C's lead over ViT_P is larger at the short schedule than at the long one.

    Args:
        reps: the replicate runs.
        short, long: the two lengths.
        longer: the runs at twice the long length (the convergence check), if any.
        value: the error column.

    Returns:
        The ``Finding`` (not yet judged: ``judge``).
    """
    arms = arms_epochs(short, long)
    table = seed_contrast(reps, arms, dict(zip(arms, (1, -1, -1, 1), strict=True)), value)  # P@short, P@long, C@short, C@long
    long_arms = {k: v for k, v in arms.items() if v["epochs"] == long}
    conv, measured = convergence(reps, longer, long_arms, value)
    return _seed_finding(EPOCHS, table, arms, [conv, _chance(reps, arms, value)],
                         f"schedules {short} and {long} epochs; {measured}".rstrip("; "), value)


def within_curve(a: np.ndarray, b: np.ndarray, x: Sequence[float] = X_GRID) -> np.ndarray:
    """The within-x curve of two arms over shared points.

    Args:
        a, b: errors per shared point of conv and of patchify.
        x: points.

    Returns:
        Per x, the fraction of ``a``'s points within x of ``a``'s best minus the same of ``b``;
        the best re-chosen from the arrays given (resamples re-choose it), among the runs that
        did not diverge (error ``DIVERGED_ERROR``: a diverged or pruned run is never within x, and
        a stem that diverged everywhere has none within x, not all).

    >>> within_curve(np.array([10.0, 11.0, 20.0]), np.array([10.0, 15.0, 20.0]), [1.0]).round(3).tolist()
    [0.333]
    >>> within_curve(np.array([10.0, 11.0, 20.0]), np.array([100.0, 100.0, 100.0]), [1.0]).round(3).tolist()
    [0.667]
    """
    x = np.asarray(x, float)[:, None]
    return (_to_best(a)[None, :] <= x).mean(1) - (_to_best(b)[None, :] <= x).mean(1)


def _to_best(err: np.ndarray) -> np.ndarray:
    """Each point's Δ to the best that did not diverge (``delta_to_best``; diverged: at 100)."""
    err = np.asarray(err, float)
    return delta_to_best(err, err >= DIVERGED_ERROR)


def _best(err: np.ndarray) -> float:
    """The best error that did not diverge (NaN when every point diverged)."""
    ok = np.asarray(err, float)[np.asarray(err, float) < DIVERGED_ERROR]
    return float(ok.min()) if len(ok) else float("nan")


PAIR_POINT = ("lr", "wd", "seed")


def lr_wd_pairs(runs: pd.DataFrame, value: str = VALUE) -> pd.DataFrame:
    """The lr/wd study's shared points, per stratum.

    Args:
        runs: the study's runs.
        value: the error column.

    Returns:
        One row per stratum and (lr, wd, seed) with both stems finished: the strata columns
        (``grouping.strata`` of the finished runs: optimizer, sweep, epochs, size ... where they
        vary; a missing value is a value of its own), ``lr``, ``wd``, ``seed``, ``conv`` and
        ``patchify`` (errors; diverged at 100). AdamW and SGD runs at the same (lr, wd, seed) are
        two rows, never one (``finding_lr_wd`` refuses more than one stratum).

    Raises:
        ValueError: two finished runs of one stem at the same point of one stratum (the runs
            table repeats a run): which to keep would be a silent choice.
    """
    df = _finished(with_design(runs), value) if len(runs) else _finished(runs, value)
    axes = strata(df) if len(df) else []
    keys = [*axes, *PAIR_POINT]
    if not len(df):
        return pd.DataFrame(columns=[*keys, "conv", "patchify"])
    # a merge on the keys, not a pivot: a pivot's groupby drops a missing stratum value (NaN),
    # and its aggfunc would pick one of two runs at a point without saying so
    sides = {}
    for stem in ("conv", "patchify"):
        side = df.loc[df["stem"] == stem, [*keys, "err"]].rename(columns={"err": stem})
        if (dup := side.duplicated(keys, keep=False)).any():
            raise ValueError(f"lr_wd_pairs: {int(dup.sum())} finished {stem} runs share a point with another "
                             f"({groups_of(side[dup], keys, limit=3)}): one run per point and stratum expected")
        sides[stem] = side
    return sides["conv"].merge(sides["patchify"], on=keys, how="inner").reset_index(drop=True)


def finding_lr_wd(runs: pd.DataFrame, x: float = HEADLINE_X, value: str = VALUE,
                  n_boot: int = 2000, n_perm: int = 2000) -> Finding:
    """Figs. 4–5: over the shared (lr, wd) points, more ViT_C runs lie within ``x`` points of
    their own best than ViT_P runs.

    Points are resampled as pairs (each stem's best re-chosen) for a descriptive band over x in
    ``X_GRID``; the p-value permutes the stem labels within each point and recomputes the same
    statistic. The points are one stratum's: runs of several (two optimizers, sweeps, lengths or
    sizes at the same points) are refused with a note naming them, never pooled into one
    statistic; judge each stratum's runs on their own.

    Args:
        runs: the lr/wd study's runs.
        x: the headline x.
        value: the error column.
        n_boot, n_perm: bootstrap resamples and label permutations.

    Returns:
        The ``Finding`` with its ``curve`` over x (not yet judged: ``judge``); inconclusive with
        no effect, saying why, when the runs hold more than one stratum or repeat a run
        (``lr_wd_pairs``' ``ValueError``).
    """
    try:
        pairs = lr_wd_pairs(runs, value)
    except ValueError as e:  # a repeated run: no verdict rather than a report that fails to write
        return LR_WD.missing(str(e))
    if axes := [c for c in pairs.columns if c not in (*PAIR_POINT, "conv", "patchify")]:
        done = _finished(with_design(runs), value)
        return LR_WD.missing(f"the runs hold {done.groupby(axes, dropna=False).ngroups} strata, which would have "
                             f"been pooled into one statistic ({groups_of(done, axes)} finished runs): the lr/wd "
                             f"finding compares one stratum's shared points; judge each stratum's runs on their own")
    if "conv" not in pairs or "patchify" not in pairs or len(pairs) < 2:
        return LR_WD.missing("needs >= 2 (lr, wd) points with both stems finished")
    a, b = pairs["conv"].to_numpy(float), pairs["patchify"].to_numpy(float)
    if np.isnan(_best(a)) and np.isnan(_best(b)):
        return LR_WD.missing(f"both stems diverged at all {len(pairs)} shared points: no run of either is within x "
                             "of a best, so there is nothing to compare")
    grid = tuple(sorted({*X_GRID, float(x)}))
    at = grid.index(float(x))
    res = paired_best_of(a, b, lambda u, v: within_curve(u, v, grid), np.array(grid), CI, n_boot, n_perm,
                         bounds=(-1.0, 1.0))
    sd, null = float(res.null_sd[at]), tuple(res.perms[:, at])
    mde = _mde_permutation(null, len(pairs), ALPHA / N_FINDINGS, float(res.effect[at]))
    curve = ", ".join(f"{g:g}: {e:+.2f}" for g, e in zip(grid, res.effect, strict=True) if g in (0, 1, 2, 4, 6, 10))
    details = (f"{len(pairs)} shared points; best conv {_best(a):.2f}, patchify {_best(b):.2f} (of the runs that "
               f"did not diverge); within {x:g}: conv {np.mean(_to_best(a) <= x):.0%}, patchify "
               f"{np.mean(_to_best(b) <= x):.0%}; curve (x: conv − patchify) {curve}; "
               f"descriptive {CI:.0%} band over x = 0…10 (a bootstrap of a best-relative statistic: not a test)")
    eff = float(res.effect[at])
    regime = [r for r in (_chance(runs, {"ViT_P": {"stem": "patchify"}, "ViT_C": {"stem": "conv"}}, value),
                          _magnitude(eff, LR_WD.paper_effect),
                          _lr_wd_regime(runs)) if r]
    fa = [float(np.mean(_to_best(a) <= g)) for g in grid]
    fb = [float(np.mean(_to_best(b) <= g)) for g in grid]
    rows = tuple({"x": g, "conv": fa[i], "patchify": fb[i], "diff": float(res.effect[i]), "lo": float(res.lo[i]),
                  "hi": float(res.hi[i]), "p": float(res.p[i])} for i, g in enumerate(grid) if float(g).is_integer())
    return Finding(**asdict(LR_WD), curve=rows, value=value, effect=eff + 0.0, lo=float(res.lo[at]) + 0.0,
                   hi=float(res.hi[at]) + 0.0, p=float(res.p[at]), p_other=float(res.p_less[at]),
                   p_test="permutation of stem labels within points, best re-chosen", n=len(pairs),
                   n_text=f"{len(pairs)} shared (lr, wd) points x 2 stems"
                   + (" (per seed)" if pairs["seed"].nunique() > 1 else ", one seed each"), sd=sd, mde=mde, null=null,
                   regime="; ".join(regime), details=details)


def _lr_wd_regime(runs: pd.DataFrame) -> str:
    """The paper's headline number is for SGD at 18GF: another optimizer is another regime."""
    opts = sorted(set(runs["optimizer"].dropna())) if "optimizer" in runs else []
    return "" if opts == ["sgd"] else f"optimizer {', '.join(opts) or '?'} (the paper's headline is SGD)"
