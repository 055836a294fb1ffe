"""Is one stem more stable than another, by how much, and how sure: signed, paired statistics.

``compare`` answers per stratum (sweep x optimizer x epochs x ... : never pooled, see
``strata``; an explicit ``strata_by`` that pools says so in ``pooled``) and per pair of groups
(stems, a and b in alphabetical order: conv before patchify), with the sign convention
**b − a** everywhere: a negative ``median_diff`` means b has the lower error. Every effect comes with a percentile
bootstrap interval and every test with its n:

- ``median_diff``: median error of b minus that of a (unpaired bootstrap, groups resampled
  separately; in relative mode each resample re-chooses its group's best).
- ``within_<x>_diff``: fraction of b's runs within x points of b's best minus the same of a
  (the paper's Fig. 5 reading: Δ = error − best of the same group; "within" is Δ ≤ x).
- ``ks`` with ``ks_better`` (the group whose EDF lies above at the largest gap, i.e. more runs
  below that error) and ``ks_p`` from a label-permutation test, exact under ties (errors are
  multiples of 100/n_val, so the asymptotic and "exact" continuous p-values do not apply).
- When the design is paired (runs of a and b share lr, wd, optimizer, epochs, seed ...):
  ``n_pairs``, the paired median of d = e_b − e_a with its interval, the Wilcoxon signed-rank
  p-value (zero differences dropped, as Wilcoxon's original) and the sign-test p-value
  (binomial on the non-zero signs).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from .edf import WITHIN, delta_to_best, errors, scored_diverged, within_fraction
from .grouping import PAIR_KEYS, pooled, strata, strata_groups, with_design
from .stats import area_between, boot_ci, ks_permutation_p, ks_signed, paired_tests


def _resample(e: np.ndarray, div: np.ndarray, rng: np.random.Generator, n_boot: int,
              relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """``n_boot`` resamples of ``e`` (rows) and of its Δ to each resample's own best
    (``delta_to_best``: diverged runs at 100); the first is Δ too when ``relative``."""
    idx = rng.integers(0, len(e), size=(n_boot, len(e)))
    boots, bdiv = e[idx], div[idx]
    deltas = delta_to_best(boots, bdiv, axis=1)
    return (deltas if relative else boots), deltas


def paired_differences(df: pd.DataFrame, by: str, a: str, b: str,
                       keys: Sequence[str] = PAIR_KEYS) -> np.ndarray:
    """The paired differences of two groups over the design points both ran.

    Args:
        df: finished runs with ``err`` (``errors``).
        by: the column of the groups.
        a, b: the two groups.
        keys: the columns that make a design point (those present, ``by`` excluded).

    Returns:
        d = e_b − e_a, one per shared point (a point run more than once in a group is
        averaged), rounded to 1e-9; empty without a key column.
    """
    keys = [k for k in keys if k in df.columns and k != by]
    if not keys:
        return np.array([])

    def mean_err(group: str) -> pd.Series:
        return df[df[by] == group].groupby(keys, observed=True, dropna=False)["err"].mean()

    both = pd.concat([mean_err(a).rename("a"), mean_err(b).rename("b")], axis=1, join="inner")
    return np.round((both["b"] - both["a"]).to_numpy(float), 9)


def compare(runs: pd.DataFrame, by: str = "stem", value: str = "top1_err", relative: bool = False,
            within: Sequence[float] = WITHIN, strata_by: Sequence[str] | None = None,
            n_boot: int = 1000, n_perm: int = 2000, ci: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """Signed, paired comparisons of groups (stems) within each stratum.

    Args:
        runs: the runs table.
        by: the column of the groups compared.
        value: the error column.
        relative: errors as Δ to each group's best (within each stratum; diverged runs at Δ 100,
            see ``delta_to_best``, and pruned runs too: ``errors``' default); then best/median/worst
            are Δ too.
        within: the x of the ``within_<x>`` fractions (always on Δ).
        strata_by: the strata; default ``strata(runs, exclude=(by,))``, every design axis that
            varies: sweeps, optimizers, training lengths ... are compared within themselves,
            never pooled.
        n_boot, n_perm, ci, seed: of the bootstrap intervals and permutation tests.

    Returns:
        One row per stratum (its ``strata_by`` columns) and pair (a, b) of groups, a before b
        alphabetically: ``n_a``/``n_b``, best/median/worst per group, signed effects b − a with
        their bootstrap intervals (``median_diff``, ``within_<x>_diff``), the KS permutation test
        (``ks``, ``ks_better``, ``ks_p``), ``area`` between the EDFs, ``pooled`` and, for paired
        designs, paired tests (``stats.paired_tests``, ``paired_median_diff``). No rows, but
        those columns, where no stratum holds two groups (one stem, no runs).

    >>> runs = pd.DataFrame({"stem": ["conv"] * 4 + ["patchify"] * 4, "status": "completed",
    ...                      "top1_err": [20.0, 22, 24, 26, 30, 32, 34, 36]})
    >>> row = compare(runs, n_boot=200, n_perm=200).iloc[0]
    >>> row[["a", "b", "median_diff", "ks", "ks_better"]].to_dict()
    {'a': 'conv', 'b': 'patchify', 'median_diff': 10.0, 'ks': 1.0, 'ks_better': 'conv'}
    """
    runs = with_design(runs)
    strata_by = list(strata(runs, exclude=(by,)) if strata_by is None else strata_by)
    pooled_axes = ",".join(pooled(runs, [*strata_by, by]))
    df = errors(runs, value, False, [*strata_by, by])
    rng = np.random.default_rng(seed)
    rows = []
    for skey, part in strata_groups(df, strata_by):  # a missing value (an older row's warmup_epochs): its own
        groups = {k: (g["err"].to_numpy(float), scored_diverged(g))  # pruned runs at 100, as diverged ones
                  for k, g in part.groupby(by, observed=True, sort=True)}
        for a, b in combinations(sorted(groups), 2):
            (ea, diva), (eb, divb) = groups[a], groups[b]
            row: dict = dict(zip(strata_by, skey, strict=True)) | {"a": a, "b": b, "n_a": len(ea), "n_b": len(eb),
                                                                  "pooled": pooled_axes}
            da, db = delta_to_best(ea, diva), delta_to_best(eb, divb)
            va, vb = (da, db) if relative else (ea, eb)
            for name, v in (("a", va), ("b", vb)):  # in the unit of the mode: all Δ, or all absolute
                row |= {f"best_{name}": float(v.min()), f"median_{name}": float(np.median(v)),
                        f"worst_{name}": float(v.max())}
            (ba, ra), (bb, rb) = _resample(ea, diva, rng, n_boot, relative), _resample(eb, divb, rng, n_boot, relative)
            row["median_diff"] = float(np.median(vb) - np.median(va))
            row["median_diff_lo"], row["median_diff_hi"] = boot_ci(np.median(bb, 1) - np.median(ba, 1), ci)
            for t in within:
                fa, fb = within_fraction(da, t), within_fraction(db, t)
                row |= {f"within_{t:g}_a": fa, f"within_{t:g}_b": fb, f"within_{t:g}_diff": fb - fa}
                lo, hi = boot_ci((rb <= t).mean(1) - (ra <= t).mean(1), ci)
                row |= {f"within_{t:g}_diff_lo": lo, f"within_{t:g}_diff_hi": hi}
            d_ab, d_ba = ks_signed(va, vb)
            row["ks"] = max(d_ab, d_ba)
            row["ks_better"] = a if d_ab > d_ba else b if d_ba > d_ab else "tie"
            row["ks_p"] = ks_permutation_p(va, vb, n_perm, seed)
            row["area"] = area_between(va, vb)
            d = paired_differences(part, by, a, b)
            row |= paired_tests(d)
            if len(d):
                row["paired_median_diff"] = float(np.median(d))
                boots = np.median(d[rng.integers(0, len(d), size=(n_boot, len(d)))], axis=1)
                row["paired_median_diff_lo"], row["paired_median_diff_hi"] = boot_ci(boots, ci)
            rows.append(row)
    if not rows:  # no stratum holds two groups of ``by``: no row, but the columns a notebook indexes
        return pd.DataFrame(columns=[*strata_by, "a", "b", "n_a", "n_b", "pooled", "best_a", "median_a", "worst_a",
                                     "best_b", "median_b", "worst_b", "median_diff", "median_diff_lo",
                                     "median_diff_hi", "ks", "ks_better", "ks_p", "area"])
    return pd.DataFrame(rows)


def verdict_text(row: pd.Series | dict, unit: str = "points") -> str:
    """One descriptive line for a ``compare`` row: no verdict (an interval that excludes 0 named a
    side in 11.6 % of null 4 vs 4 comparisons, past the nominal 10 %, and no test checked it);
    ``stems.stem_verdicts`` and ``verdict_line`` give the tested one.

    Args:
        row: a row of ``compare``.
        unit: of the errors.

    Returns:
        The median difference b − a with its bootstrap interval and n.
    """
    lo, hi = row["median_diff_lo"], row["median_diff_hi"]
    return (f"median {row['b']} − {row['a']} = {row['median_diff']:+.2f} {unit} [{lo:+.2f}, {hi:+.2f}] "
            f"(90 % bootstrap, descriptive: analysis.stem_verdicts tests it), n = {row['n_b']} vs {row['n_a']}")
