"""How the runs of each stem ended, per stratum, and the stem comparison only where it means something.

``stem_outcomes`` is the findings view's table (dashboard Overview, ``stability report``,
``grid status``): per stratum (sweep x optimizer x epochs ...: never pooled) and stem, the
finished runs, how many diverged, how many were pruned (stopped early by the run's pruner as
doomed: counted apart, scored at 100 as ``errors`` does by default, never as completed) and how
many are stuck at chance (``findings.at_chance``: the report's one definition), the median error
with n, and ``never_left_chance`` where no run of the stem learned anything.

``stem_verdicts`` turns ``compare`` into verdicts with a rule that was checked against its null
(tests/test_stems.py simulates stems drawn from one distribution, and from one centre with
different spreads):

- the statistic is ``prob_b_lower``, how often b's error is below a's over all pairs of their runs
  (ties one half; diverged and pruned runs at 100), with the median error of b minus that of a and
  its 90% bootstrap interval from ``compare`` as the effect in points;
- the test is Brunner–Munzel's studentized permutation test of ``prob_b_lower`` = 0.5
  (``stats.bm_perm_p``), two-sided, Holm-adjusted over the strata of the call (a family: one
  stratum per sweep x optimizer x epochs ...), verdict at ``ALPHA`` on the side b tends to. Not
  a permutation test of the median difference: that one's null is "one distribution", so stems
  with one centre and different spreads (ViT_P's errors spread wider) got a side in 46 % of
  6 vs 6 draws;
- no verdict, saying why, when a side has fewer than ``MIN_RUNS`` finished runs or when both stems
  sit at chance, diverged or were pruned in every run (there is no learning to compare);
- a "no clear difference" whose test could not have passed says so: the smallest p any labelling
  of its values gives (``stats.min_bm_perm_p``: 2/70 = 0.029 for 4 vs 4 distinct values) above
  α/m, the level Holm asks of the first of m strata.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .compare import compare
from .edf import errors
from .findings import at_chance
from .grouping import require, strata, strata_groups, stratum_rows, with_design
from .stats import bm_perm_p, holm, min_bm_perm_p, prob_lower

ALPHA = 0.10  # family-wise error rate of the verdicts of one call (Holm over its strata)
MIN_RUNS = 4  # per side: 3 vs 3's smallest p is 2/20 = α itself, and 3 runs hardly estimate a spread
N_PERM = 4000


def chance_error(runs: pd.DataFrame) -> float:
    """The error of an untrained model for these runs.

    Args:
        runs: the runs table.

    Returns:
        The median ``init_top1_err`` (measured at step 0 on the validation split); NaN when the
        results predate it.
    """
    if "init_top1_err" not in runs:
        return float("nan")
    v = pd.to_numeric(runs["init_top1_err"], errors="coerce").dropna()
    return float(v.median()) if len(v) else float("nan")


def stem_outcomes(runs: pd.DataFrame, value: str = "top1_err", by: Sequence[str] | None = None,
                  group: str = "stem") -> pd.DataFrame:
    """How the runs of each stem ended, per stratum.

    Args:
        runs: the runs table.
        value: the error column.
        by: the strata; default ``strata(runs, exclude=(group,))``, every design axis that
            varies (nothing pooled). Consumers that name the strata pass them here.
        group: the column compared.

    Returns:
        One row per stratum (its ``by`` columns) and stem: ``runs`` finished (completed,
        diverged or pruned), ``diverged``, ``pruned``, ``at_chance`` (completed but stuck at
        chance), their percentages, ``learned`` (the rest: completed and off chance),
        ``median_err`` and ``best_err`` (diverged and pruned at 100), ``chance_err``
        (``chance_error``), ``never_left_chance`` (no run learned) and ``left_out`` (failed,
        preempted, running).

    >>> runs = pd.DataFrame({"stem": ["conv"] * 3 + ["patchify"] * 3,
    ...                      "status": ["completed", "completed", "diverged"] + ["completed"] * 3,
    ...                      "top1_err": [20.0, 30.0, None, 25.0, 35.0, 45.0]})
    >>> stem_outcomes(runs)[["stem", "runs", "diverged", "median_err", "best_err"]]
           stem  runs  diverged  median_err  best_err
    0      conv     3         1        30.0      20.0
    1  patchify     3         0        35.0      25.0
    """
    require(runs, ["status"], "runs")
    runs = with_design(runs)
    by = list(strata(runs, exclude=(group,)) if by is None else by)
    keys = [*by, group]
    cols = [*keys, "runs", "diverged", "pruned", "at_chance", "learned", "diverged_pct", "pruned_pct",
            "at_chance_pct", "median_err", "best_err", "chance_err", "never_left_chance", "left_out"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs = runs.assign(_chance=at_chance(runs, value).to_numpy(bool))
    df = errors(runs, value, False, keys)
    rows = []
    for key, g in strata_groups(runs, keys):
        done = df[df.index.isin(g.index)]  # errors() keeps the runs' index: this group's finished runs
        n = len(done)
        nd, npr = (int(done["diverged"].sum()), int(done["pruned"].sum())) if n else (0, 0)
        nc = int(g["_chance"].sum())
        learned = n - nd - npr - nc
        rows.append(dict(zip(keys, key, strict=True)) | {
            "runs": n, "diverged": nd, "pruned": npr, "at_chance": nc, "learned": learned,
            "diverged_pct": 100.0 * nd / n if n else np.nan, "pruned_pct": 100.0 * npr / n if n else np.nan,
            "at_chance_pct": 100.0 * nc / n if n else np.nan,
            "median_err": float(done["err"].median()) if n else np.nan,
            "best_err": float(done["err"].min()) if n else np.nan,
            "chance_err": chance_error(g), "never_left_chance": bool(n and learned == 0),
            "left_out": int(len(g) - n)})
    return pd.DataFrame(rows, columns=cols)


def stem_verdicts(runs: pd.DataFrame, value: str = "top1_err", n_boot: int = 1000, n_perm: int = N_PERM,
                  alpha: float = ALPHA, seed: int = 0) -> pd.DataFrame:
    """The stem comparison per stratum, with a verdict only where one means something.

    Args:
        runs: the runs table.
        value: the error column.
        n_boot: bootstrap resamples of ``compare``.
        n_perm: permutations of the verdict's test (``stats.bm_perm_p``).
        alpha: the family-wise level (Holm over the strata).
        seed: of both.

    Returns:
        ``compare(runs, by="stem")`` per stratum (its strata: ``strata(runs)``) with
        ``prob_b_lower`` (P(b < a) + P(tie) / 2 over pairs of runs), ``p`` (Brunner–Munzel
        permutation test of it = 0.5, two-sided), ``p_holm`` (over the rows), ``verdict`` ("<stem> lower", "no
        clear difference" or "none") and ``why`` (the reason in words: the test, or what is
        missing for one). Same rows and sign as ``compare``: effects are b − a.
    """
    runs = with_design(runs)
    keys = strata(runs, exclude=("stem",))  # the strata, named: compare's rows are per stratum
    cmp = compare(runs, by="stem", value=value, strata_by=keys, n_boot=n_boot, n_perm=min(n_perm, 2000), seed=seed)
    if cmp.empty:
        return cmp.assign(prob_b_lower=[], p=[], p_holm=[], verdict=[], why=[])
    out = stem_outcomes(runs, value, by=keys)
    df = errors(runs, value, False, [*keys, "stem"])
    ps, lower, floor, why = [], [], [], []
    for _, row in cmp.iterrows():
        where = {k: row[k] for k in keys}  # stratum_rows: a missing value (NaN) is a stratum too
        here = stratum_rows(df, where)
        ea = df.loc[here & df["stem"].eq(row["a"]).to_numpy(), "err"].to_numpy(float)
        eb = df.loc[here & df["stem"].eq(row["b"]).to_numpy(), "err"].to_numpy(float)
        o = out[stratum_rows(out, where)]
        dead = o[o["stem"].isin([row["a"], row["b"]])]["never_left_chance"]
        lower.append(prob_lower(ea, eb))
        if min(len(ea), len(eb)) < MIN_RUNS:
            ps.append(np.nan)
            why.append(f"n = {len(eb)} vs {len(ea)}: a verdict needs at least {MIN_RUNS} finished runs per stem")
        elif len(dead) == 2 and dead.all():
            ps.append(np.nan)
            why.append("both stems sit at chance (or diverged, or were pruned) in every run: nothing learned to "
                       "compare")
        else:
            ps.append(bm_perm_p(ea, eb, n_perm, seed))
            floor.append((len(ps) - 1, min_bm_perm_p(ea, eb)))
            why.append("")
    cmp = cmp.assign(prob_b_lower=lower, p=ps)
    tested = cmp["p"].notna().to_numpy()
    adj = np.full(len(cmp), np.nan)
    if tested.any():
        adj[tested] = holm(cmp.loc[tested, "p"].to_numpy(float))
    cmp["p_holm"] = adj
    smallest = dict(floor)
    verdicts = []
    for i, row in cmp.reset_index(drop=True).iterrows():
        if why[i]:
            verdicts.append("none")
            continue
        m = int(tested.sum())
        fam = f"Holm over {m} strata" if m > 1 else "one stratum"
        if adj[i] <= alpha:
            verdicts.append(f"{row['b'] if row['prob_b_lower'] > 0.5 else row['a']} lower")
            why[i] = f"Brunner–Munzel permutation p = {row['p']:.3g}, {fam}: {adj[i]:.3g} ≤ {alpha:g}"
        else:
            verdicts.append("no clear difference")
            why[i] = f"Brunner–Munzel permutation p = {row['p']:.3g}, {fam}: {adj[i]:.3g} > {alpha:g}"
            if (least := smallest.get(i, np.nan)) > alpha / m:  # it could not have passed: say so
                why[i] += (f"; with n = {int(row['n_b'])} vs {int(row['n_a'])} the test's smallest p is {least:.3g}, "
                           f"above α/{m} = {alpha / m:.3g}: more runs per stem could tell")
    cmp["verdict"], cmp["why"] = verdicts, why
    return cmp


def verdict_line(row: pd.Series | dict, unit: str = "points") -> str:
    """One line for a ``stem_verdicts`` row.

    Args:
        row: a row of ``stem_verdicts``.
        unit: of the errors.

    Returns:
        The verdict, the share of run pairs where one stem is lower (the test's statistic, named
        from the side it leans to), the median effect b − a with its interval and n, and why (or only why, where there
        is no verdict).
    """
    n = f"n = {int(row['n_b'])} vs {int(row['n_a'])}"
    if row["verdict"] == "none":
        return f"no verdict ({row['why']})"
    lo, hi = row["median_diff_lo"], row["median_diff_hi"]
    ci = f"[{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "[n/a]"
    b_lower = row["prob_b_lower"] >= 0.5  # the share named from the side it leans to: "conv below patchify in 83 %"
    low, high = (row["b"], row["a"]) if b_lower else (row["a"], row["b"])
    share = row["prob_b_lower"] if b_lower else 1 - row["prob_b_lower"]
    of = "" if b_lower else " (1 − prob_b_lower)"  # the table's column counts from b's side
    return (f"{row['verdict']}: {low} below {high} in {share:.0%} of run pairs{of}, median "
            f"{row['b']} − {row['a']} = {row['median_diff']:+.2f} {unit} {ci}, {n} ({row['why']})")


__all__ = ["ALPHA", "MIN_RUNS", "chance_error", "stem_outcomes", "stem_verdicts",
           "verdict_line"]
