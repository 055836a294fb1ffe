"""Error EDFs (Radosavovic et al. 2019) with pointwise and simultaneous bands.

The EDF of n errors e_i is F(e) = (1/n) * sum_i 1[e_i < e]. Diverged runs count at 100% error
(``DIVERGED_ERROR``): pycls and Optuna drop them, which hides exactly the instability we measure.
Runs that failed, were preempted or are still running are not errors of the model: they are left
out of the EDF and counted in ``summary`` (``outcomes``). Relative errors (Δ to the group's best)
are rounded to 1e-9 so that float subtraction never decides a tie: errors are multiples of
100 / n_val, and "within x points" means Δ ≤ x (``within_fraction``), the value of the EDF just
after x.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..store import DONE, RunStatus
from .grouping import pooled, strata, with_size

# Not results: counted per group, never in an EDF (plain strings: they name columns).
LEFT_OUT = tuple(map(str, (RunStatus.FAILED, RunStatus.PREEMPTED, RunStatus.RUNNING)))

DIVERGED_ERROR = 100.0
WITHIN = (1.0, 2.0, 5.0)


CHANCE = 0.9  # a finished run is stuck at chance when its error is >= 0.9 x its error at init


def at_chance(runs: pd.DataFrame, value: str) -> pd.Series:
    """Which completed runs are stuck at chance.

    Args:
        runs: the runs table.
        value: the error column judged.

    Returns:
        A boolean Series (``runs``' index): completed runs whose ``value`` is at least
        ``CHANCE`` x their error at initialisation (``init_top1_err``, about chance); without
        that column, the trainer's ``collapsed`` flag (final training loss near ln C, which a
        one-epoch run with label smoothing can trip while learning). Diverged runs are not "at
        chance": they diverged.
    """
    done = runs["status"].eq(RunStatus.COMPLETED)
    if "init_top1_err" in runs and value in runs and runs["init_top1_err"].notna().any():
        return done & (runs[value] >= CHANCE * runs["init_top1_err"])
    return done & runs.get("collapsed", pd.Series(False, index=runs.index)).fillna(False).astype(bool)


def delta_to_best(err: np.ndarray, diverged: np.ndarray, axis: int = -1) -> np.ndarray:
    """Δ to the best run that did not diverge.

    Args:
        err: errors.
        diverged: whether each run diverged.
        axis: the axis the best is taken along (1: one best per resample row).

    Returns:
        err − best, rounded to 1e-9; a diverged run's Δ is ``DIVERGED_ERROR`` (100 points)
        whatever the best, so every group's diverged runs sit at one common place. (100 − best
        would put the diverged runs of the group with the better best further right, and could
        reverse a comparison.)

    >>> delta_to_best(np.array([20.0, 25.0, 90.0]), np.array([False, False, True])).tolist()
    [0.0, 5.0, 100.0]
    """
    err, diverged = np.asarray(err, float), np.asarray(diverged, bool)
    best = np.where(diverged, np.inf, err).min(axis=axis, keepdims=True)
    best = np.where(np.isfinite(best), best, 0.0)
    return np.where(diverged, DIVERGED_ERROR, np.round(err - best, 9))


def errors(runs: pd.DataFrame, value: str = "top1_err", relative: bool = False,
           by: Sequence[str] = ("stem",)) -> pd.DataFrame:
    """The finished runs with their error.

    Args:
        runs: the runs table.
        value: the error column.
        relative: ``err`` is Δ to the best of the run's group (``delta_to_best``: diverged runs
            at Δ 100).
        by: the groups of ``relative``.

    Returns:
        The completed and diverged runs (their index kept) with ``diverged``, ``err`` (diverged
        at 100) and ``err_abs`` (the absolute error).

    >>> runs = pd.DataFrame({"stem": ["conv", "conv", "conv"], "status": ["completed", "diverged", "failed"],
    ...                      "top1_err": [20.0, None, None]})
    >>> errors(runs)[["err", "diverged"]]
         err  diverged
    0   20.0     False
    1  100.0      True
    """
    df = runs[runs["status"].isin(DONE)].copy()
    df["diverged"] = df["status"].eq(RunStatus.DIVERGED)
    df["err"] = np.where(df["diverged"], DIVERGED_ERROR, df[value].astype(float))
    df["err"] = df["err"].fillna(DIVERGED_ERROR)
    df["err_abs"] = df["err"]
    if relative and len(df):
        out = np.empty(len(df))
        for idx in df.groupby(list(by), observed=True).indices.values():
            out[idx] = delta_to_best(df["err"].to_numpy()[idx], df["diverged"].to_numpy()[idx])
        df["err"] = out
    return df


def within_fraction(delta: np.ndarray, x: float) -> float:
    """The fraction of runs within ``x`` points of their best.

    Args:
        delta: Δ to the best per run.
        x: points.

    Returns:
        The fraction with Δ ≤ x (Δ rounded to 1e-9); NaN without runs.

    >>> within_fraction(np.array([0.0, 1.0, 3.0, 100.0]), 1.0)
    0.5
    """
    delta = np.asarray(delta, dtype=float)
    return float(np.mean(np.round(delta, 9) <= x)) if len(delta) else float("nan")


def dkw_halfwidth(n: int, ci: float = 0.9) -> float:
    """The half-width of the DKW simultaneous band of an EDF.

    Args:
        n: runs.
        ci: the coverage.

    Returns:
        sqrt(ln(2 / (1 − ci)) / (2 n)) (Dvoretzky-Kiefer-Wolfowitz: P(sup|F_n − F| > eps) ≤
        2 exp(−2 n eps²)); NaN for n = 0.

    >>> round(dkw_halfwidth(16, 0.9), 3)
    0.306
    """
    return float(np.sqrt(np.log(2 / (1 - ci)) / (2 * n))) if n else float("nan")


def default_by(runs: pd.DataFrame, group: str = "stem") -> list[str]:
    """The grouping that pools nothing.

    Args:
        runs: the runs table.
        group: the column compared (the stem).

    Returns:
        Every design axis that varies (``grouping.strata``), then ``group``.
    """
    return [*strata(runs, exclude=(group,)), group]


def worst_runs(runs: pd.DataFrame, k: int = 1, by: Sequence[str] = ("stem",),
               value: str = "top1_err") -> pd.DataFrame:
    """The worst finished runs of each group.

    Args:
        runs: the runs table.
        k: runs per group.
        by: the groups.
        value: the error column.

    Returns:
        The ``k`` finished runs (``errors`` rows) with the highest error per group, worst first
        (diverged runs at 100).

    >>> runs = pd.DataFrame({"stem": ["conv"] * 3 + ["patchify"] * 3,
    ...                      "status": ["completed", "completed", "diverged"] + ["completed"] * 3,
    ...                      "top1_err": [20.0, 30.0, None, 25.0, 35.0, 45.0]})
    >>> worst_runs(runs, k=1)[["stem", "err", "diverged"]]
           stem    err  diverged
    2      conv  100.0      True
    5  patchify   45.0     False
    """
    df = errors(runs, value, False, by)
    return df.sort_values("err", ascending=False).groupby(list(by), observed=True).head(k)


def edf_at(values: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The (weighted) EDF of ``values`` at ``x``.

    Args:
        values: the sample.
        x: where to evaluate.
        weights: per value (default 1).

    Returns:
        F(x) = sum_i w_i 1[v_i < x] / sum_i w_i for every x (strict inequality, as the paper).

    >>> edf_at(np.array([10, 20, 20, 100]), np.array([0, 15, 20.5, 101])).tolist()
    [0.0, 0.25, 0.75, 1.0]
    """
    values = np.asarray(values, dtype=float)
    x = np.asarray(x, dtype=float)
    if weights is None:
        return np.searchsorted(np.sort(values), x, side="left") / max(len(values), 1)
    order = np.argsort(values)
    cw = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=float)[order])])
    return cw[np.searchsorted(values[order], x, side="left")] / cw[-1]


def edf(runs: pd.DataFrame, by: Sequence[str] | None = None, value: str = "top1_err",
        relative: bool = False, weights: str | None = None, n_boot: int = 200, ci: float = 0.9,
        seed: int = 0) -> pd.DataFrame:
    """EDF points per group with seeded bootstrap bands.

    Args:
        runs: the runs table.
        by: the groups; default ``default_by(runs)``: sweep, optimizer, epochs ... whichever
            vary, then the stem, so nothing is pooled unless asked.
        value: the error column.
        relative: errors as Δ to each group's best; each resample re-chooses its best run.
        weights: a column of per-run weights.
        n_boot: bootstrap resamples (0: no bands).
        ci: the bands' coverage.
        seed: of the resamples.

    Returns:
        One row per group (its ``by`` columns) and distinct error ``x``: ``F`` = F(x) (the
        fraction strictly below x), ``F_right`` = the fraction at or below x (the value just
        after the step at x), ``F_lo``/``F_hi`` the pointwise bootstrap band of ``F_right``,
        ``F_lo_sim``/``F_hi_sim`` a simultaneous band (the bootstrap quantile of sup|F* − F_n|,
        widened where needed to contain the pointwise band), ``dkw`` the DKW simultaneous
        half-width, ``n`` runs and ``n_diverged`` of them counted at 100 %, and ``pooled``, the
        design axes a given ``by`` pools ("" when none). Plot ``x`` vs ``F_right`` as a step
        function (``line_shape='hv'``).

    >>> runs = pd.DataFrame({"stem": ["conv"] * 3 + ["patchify"] * 3,
    ...                      "status": ["completed", "completed", "diverged"] + ["completed"] * 3,
    ...                      "top1_err": [20.0, 30.0, None, 25.0, 35.0, 45.0]})
    >>> edf(runs, n_boot=0)[["stem", "x", "F_right", "n", "n_diverged"]]
           stem      x   F_right  n  n_diverged
    0      conv   20.0  0.333333  3           1
    1      conv   30.0  0.666667  3           1
    2      conv  100.0  1.000000  3           1
    3  patchify   25.0  0.333333  3           0
    4  patchify   35.0  0.666667  3           0
    5  patchify   45.0  1.000000  3           0
    """

    runs = with_size(runs)
    by = list(default_by(runs) if by is None else by)
    pooled_axes = ",".join(pooled(runs, by))
    df = errors(runs, value, relative, by)
    rng = np.random.default_rng(seed)
    rows = []
    for key, g in df.groupby(list(by), observed=True, sort=True):
        e = g["err"].to_numpy(float)
        w = g[weights].to_numpy(float) if weights else None
        xs = np.unique(e)
        right = np.nextafter(xs, np.inf)
        f, f_right = edf_at(e, xs, w), edf_at(e, right, w)
        lo = hi = lo_sim = hi_sim = f_right
        if n_boot and len(e) > 1:
            # A resample is a multinomial count per run; its EDF at each distinct error is the
            # cumulative (weighted) count up to that error: all resamples at once, no sorting.
            counts = rng.multinomial(len(e), np.full(len(e), 1 / len(e)), size=n_boot).astype(float)
            if w is not None:
                counts *= w
            order = np.argsort(e, kind="stable")
            if relative:  # each resample's Δ is to its own best (diverged runs stay at 100)
                raw = g["err_abs"].to_numpy(float)[order]
                div = g["diverged"].to_numpy(bool)[order]
                c = counts[:, order]
                # runs a resample leaves out (count 0) take no part in its best, and weigh 0
                deltas = delta_to_best(np.where(c > 0, raw, np.inf), div | (c == 0), axis=1)
                boots = np.stack([edf_at(dv, np.nextafter(xs, np.inf), ci_) for dv, ci_ in zip(deltas, c, strict=True)])
            else:
                cum = np.cumsum(counts[:, order], axis=1)
                last = np.searchsorted(e[order], xs, side="right") - 1  # last run at or below x
                boots = cum[:, last] / cum[:, -1:]
            lo, hi = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
            sup = np.quantile(np.abs(boots - f_right).max(axis=1), ci)
            # A 90% sup band can be narrower at one x than that x's one-sided 95% quantile: take
            # the union, so the simultaneous band always contains the pointwise one.
            lo_sim = np.minimum(np.clip(f_right - sup, 0, 1), lo)
            hi_sim = np.maximum(np.clip(f_right + sup, 0, 1), hi)
        key = key if isinstance(key, tuple) else (key,)
        part = pd.DataFrame({"x": xs, "F": f, "F_right": f_right, "F_lo": lo, "F_hi": hi,
                             "F_lo_sim": lo_sim, "F_hi_sim": hi_sim, "dkw": dkw_halfwidth(len(e), ci),
                             "n": len(e), "n_diverged": int(g["diverged"].sum()), "pooled": pooled_axes})
        for col, value in zip(by, key, strict=True):
            part.insert(list(by).index(col), col, value)
        rows.append(part)
    cols = [*by, "x", "F", "F_right", "F_lo", "F_hi", "F_lo_sim", "F_hi_sim", "dkw", "n", "n_diverged",
            "pooled"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def summary(runs: pd.DataFrame, by: Sequence[str] | None = None, value: str = "top1_err",
            relative: bool = False, within: Sequence[float] = WITHIN) -> pd.DataFrame:
    """How the runs of each group ended.

    Args:
        runs: the runs table.
        by: the groups; default ``default_by(runs)`` (nothing pooled).
        value: the error column.
        relative: best, median and worst are Δ to the group's best (best is 0).
        within: in relative mode, ``within_<x>`` gives the fraction of runs at most x points
            from the best, for each x.

    Returns:
        One row per group: ``runs`` finished (the EDF's n), ``diverged`` and ``at_chance``
        (``at_chance``) among them, ``best``, ``median`` and ``worst`` error (diverged at 100),
        the runs left out of the EDF (failed, preempted, running: a column each), and
        ``pooled``, the design axes an explicit ``by`` pools.
    """

    runs = with_size(runs)
    by = list(default_by(runs) if by is None else by)
    df = errors(runs, value, relative, by)
    df["at_chance"] = at_chance(df, value).to_numpy(bool)
    g = df.groupby(by, observed=True)
    out = g.agg(runs=("err", "size"), diverged=("diverged", "sum"), at_chance=("at_chance", "sum"),
                best=("err", "min"), median=("err", "median"), worst=("err", "max")).reset_index()
    if relative:
        for x in within:
            fr = g["err"].agg(lambda d, x=x: within_fraction(d.to_numpy(), x))
            out[f"within_{x:g}"] = fr.to_numpy() if len(out) else []
    left = outcomes(runs, by)
    out = out.merge(left, on=by, how="outer").fillna(
        {c: 0 for c in ("runs", "diverged", "at_chance", *LEFT_OUT)})
    return out.assign(pooled=",".join(pooled(runs, by)))


def outcomes(runs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The runs of each group that are not results.

    Args:
        runs: the runs table.
        by: the groups.

    Returns:
        One row per group: how many runs failed, were preempted or are running (a column each:
        left out of every EDF).
    """
    cols = list(LEFT_OUT)
    if runs.empty:
        return pd.DataFrame(columns=[*by, *cols])
    counts = pd.crosstab([runs[c] for c in by], runs["status"])
    for c in cols:
        if c not in counts.columns:
            counts[c] = 0
    return counts[cols].reset_index().rename_axis(columns=None)
