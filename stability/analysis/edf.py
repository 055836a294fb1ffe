"""Error EDFs (Radosavovic et al. 2019) and their comparison between groups (e.g. stems).

The EDF of n errors e_i is F(e) = (1/n) * sum_i 1[e_i < e]. Diverged runs count at 100% error
(``DIVERGED_ERROR``): pycls and Optuna drop them, which hides exactly the instability we measure.
Runs that failed or have not finished are not errors of the model and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

DIVERGED_ERROR = 100.0
WITHIN = (1.0, 2.0, 5.0)


def errors(runs: pd.DataFrame, value: str = "top1_err", relative: bool = False,
           by: Sequence[str] = ("stem",)) -> pd.DataFrame:
    """Finished runs with an ``err`` column: diverged at 100; ``relative``: minus the group's best.

    Keeps completed and diverged runs only; ``diverged`` marks the latter.
    """
    df = runs[runs["status"].isin(["completed", "diverged"])].copy()
    df["diverged"] = df["status"].eq("diverged")
    df["err"] = np.where(df["diverged"], DIVERGED_ERROR, df[value].astype(float))
    df["err"] = df["err"].fillna(DIVERGED_ERROR)
    if relative and len(df):
        df["err"] = df["err"] - df.groupby(list(by), observed=True)["err"].transform("min")
    return df


def worst_runs(runs: pd.DataFrame, k: int = 1, by: Sequence[str] = ("stem",),
               value: str = "top1_err") -> pd.DataFrame:
    """The ``k`` finished runs with the highest error per group (diverged first, at 100)."""
    df = errors(runs, value, False, by)
    return df.sort_values("err", ascending=False).groupby(list(by), observed=True).head(k)


def edf_at(values: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """F(x) = sum_i w_i 1[v_i < x] / sum_i w_i for every x (strict inequality, as the paper)."""
    values = np.asarray(values, dtype=float)
    x = np.asarray(x, dtype=float)
    if weights is None:
        return np.searchsorted(np.sort(values), x, side="left") / max(len(values), 1)
    order = np.argsort(values)
    cw = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=float)[order])])
    return cw[np.searchsorted(values[order], x, side="left")] / cw[-1]


def edf(runs: pd.DataFrame, by: Sequence[str] = ("stem",), value: str = "top1_err",
        relative: bool = False, weights: str | None = None, n_boot: int = 200, ci: float = 0.9,
        seed: int = 0) -> pd.DataFrame:
    """EDF points per group with a seeded bootstrap band.

    Returns one row per group and distinct error ``x``: ``F`` = F(x) (the fraction strictly
    below x), ``F_right`` = the fraction at or below x (the value just after the step at x),
    ``F_lo``/``F_hi`` the bootstrap band of ``F_right``, ``n`` runs and ``n_diverged`` of them
    counted at 100%. Plot ``x`` vs ``F_right`` as a step function (``line_shape='hv'``).
    """
    df = errors(runs, value, relative, by)
    rng = np.random.default_rng(seed)
    rows = []
    for key, g in df.groupby(list(by), observed=True, sort=True):
        e = g["err"].to_numpy(float)
        w = g[weights].to_numpy(float) if weights else None
        xs = np.unique(e)
        right = np.nextafter(xs, np.inf)
        f, f_right = edf_at(e, xs, w), edf_at(e, right, w)
        lo = hi = f_right
        if n_boot and len(e) > 1:
            # A resample is a multinomial count per run; its EDF at each distinct error is the
            # cumulative (weighted) count up to that error: all resamples at once, no sorting.
            counts = rng.multinomial(len(e), np.full(len(e), 1 / len(e)), size=n_boot).astype(float)
            if w is not None:
                counts *= w
            order = np.argsort(e, kind="stable")
            cum = np.cumsum(counts[:, order], axis=1)
            last = np.searchsorted(e[order], xs, side="right") - 1  # last run at or below x
            boots = cum[:, last] / cum[:, -1:]
            lo, hi = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
        key = key if isinstance(key, tuple) else (key,)
        part = pd.DataFrame({"x": xs, "F": f, "F_right": f_right, "F_lo": lo, "F_hi": hi,
                             "n": len(e), "n_diverged": int(g["diverged"].sum())})
        for col, value in zip(by, key, strict=True):
            part.insert(list(by).index(col), col, value)
        rows.append(part)
    cols = [*by, "x", "F", "F_right", "F_lo", "F_hi", "n", "n_diverged"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def area_between(a: np.ndarray, b: np.ndarray) -> float:
    """Integral of |F_a(e) - F_b(e)| de over the errors (in error points, e.g. percent)."""
    xs = np.unique(np.concatenate([a, b]))
    if len(xs) < 2:
        return 0.0
    diff = np.abs(edf_at(a, np.nextafter(xs[:-1], np.inf)) - edf_at(b, np.nextafter(xs[:-1], np.inf)))
    return float(np.sum(diff * np.diff(xs)))


def compare(runs: pd.DataFrame, by: str = "stem", value: str = "top1_err", relative: bool = False,
            within: Sequence[float] = WITHIN) -> pd.DataFrame:
    """One row per pair of groups: KS distance and p-value, area between the EDFs, and per group
    the fraction of runs within x points of the best run of either group, best/median/worst."""
    from scipy.stats import ks_2samp

    df = errors(runs, value, relative, (by,))
    groups = {k: g["err"].to_numpy(float) for k, g in df.groupby(by, observed=True, sort=True)}
    rows = []
    for a, b in combinations(sorted(groups), 2):
        ea, eb = groups[a], groups[b]
        # exact p-values cost O(n*m) and more; past 10^4 pairs the asymptotic one is accurate
        ks = ks_2samp(ea, eb, method="exact" if len(ea) * len(eb) <= 10_000 else "asymp")
        best = min(ea.min(), eb.min())
        row = {"a": a, "b": b, "n_a": len(ea), "n_b": len(eb), "ks": float(ks.statistic),
               "ks_p": float(ks.pvalue), "area": area_between(ea, eb)}
        for name, e in (("a", ea), ("b", eb)):
            row |= {f"best_{name}": float(e.min()), f"median_{name}": float(np.median(e)),
                    f"worst_{name}": float(e.max())}
            for t in within:
                row[f"within_{t:g}_{name}"] = float(np.mean(e <= best + t))
        rows.append(row)
    return pd.DataFrame(rows)


def summary(runs: pd.DataFrame, by: Sequence[str] = ("stem",), value: str = "top1_err") -> pd.DataFrame:
    """Per group: runs, diverged, best, median and worst error (diverged at 100)."""
    df = errors(runs, value, False, by)
    g = df.groupby(list(by), observed=True)
    out = g.agg(runs=("err", "size"), diverged=("diverged", "sum"), best=("err", "min"),
                median=("err", "median"), worst=("err", "max"))
    return out.reset_index()
