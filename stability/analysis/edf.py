"""Error EDFs (Radosavovic et al. 2019) with pointwise and simultaneous bands.

The EDF of n errors e_i is F(e) = (1/n) * sum_i 1[e_i < e]. Diverged runs count at 100% error
(``DIVERGED_ERROR``): pycls and Optuna drop them, which hides exactly the instability we measure.
Pruned runs (stopped early by the run's pruner as doomed: they would have diverged or ended at
chance) are counted apart and scored by the ``pruned`` argument (``PRUNED_AS``): by default
"diverged", at 100% like a diverged run (Δ 100 in relative mode too), because dropping them
would hide exactly the instability we measure, as pycls and Optuna do with diverged runs, and
scoring them keeps the EDF's n equal to the runs planned; the pruner's wrong-stop rate, which
the replay measures, bounds how many of them would have ended well (docs/methodology.md,
"Pruning"). "last" scores one at its last recorded error (``top1_err``: the last epoch's, or the
error at init when it was pruned in its first epoch; 100 when null), "out" leaves it out of the
EDF (``summary`` still counts it). Runs that failed, were preempted or are still running are not
errors of the model: they are left out of the EDF and counted in ``summary`` (``outcomes``).
Relative errors (Δ to the group's best) are rounded to 1e-9 so that float subtraction never
decides a tie: errors are multiples of 100 / n_val, and "within x points" means Δ ≤ x
(``within_fraction``), the value of the EDF just after x.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..store import DONE, RunStatus
from .grouping import pooled, require, strata, with_design

# Not results: counted per group, never in an EDF (plain strings: they name columns).
LEFT_OUT = tuple(map(str, (RunStatus.FAILED, RunStatus.PREEMPTED, RunStatus.RUNNING)))

DIVERGED_ERROR = 100.0
WITHIN = (1.0, 2.0, 5.0)
# How a pruned run is scored (``errors``' ``pruned``): at DIVERGED_ERROR like a diverged run (the
# default, spelled as that status), at its last recorded error, or left out of the EDF.
PRUNED_AS = (str(RunStatus.DIVERGED), "last", "out")


def check_pruned(pruned: str) -> str:
    """A checked pruned-run policy.

    Args:
        pruned: how a pruned run is scored.

    Returns:
        ``pruned`` when it is one of ``PRUNED_AS``; a ValueError naming them otherwise.
    """
    if not isinstance(pruned, str) or pruned not in PRUNED_AS:
        raise ValueError(f"pruned={pruned!r}: allowed {', '.join(map(repr, PRUNED_AS))}")
    return pruned


def scored_diverged(df: pd.DataFrame, pruned: str = "diverged") -> np.ndarray:
    """Which runs sit at ``DIVERGED_ERROR`` as diverged runs.

    Args:
        df: ``errors`` rows (their ``diverged`` and ``pruned`` columns).
        pruned: the policy (``PRUNED_AS``).

    Returns:
        A boolean array: the diverged runs, and the pruned ones when ``pruned`` is "diverged"
        (they take no part in a group's best, and their Δ is 100: ``delta_to_best``).
    """
    as_diverged = check_pruned(pruned) == RunStatus.DIVERGED
    return (df["diverged"].to_numpy(bool) | (as_diverged & df["pruned"].to_numpy(bool))) if len(df) \
        else np.zeros(0, bool)


def pruned_counts(runs: pd.DataFrame, by: Sequence[str], name: str = "pruned") -> pd.DataFrame:
    """The pruned runs of each group, whatever the policy.

    Args:
        runs: the runs table.
        by: the groups (those of ``outcomes``).
        name: the count's column.

    Returns:
        One row per group: its ``by`` columns and ``name``, how many of its runs were pruned.
    """
    by = list(by)
    if runs.empty:
        return pd.DataFrame(columns=[*by, name])
    runs = with_design(runs)
    hit = runs["status"].eq(RunStatus.PRUNED).rename(name)
    # dropna=False: a missing value (an older row's warmup_epochs) is a stratum of its own, never dropped
    return hit.groupby([runs[c] for c in by], observed=True, dropna=False).sum().astype(int).reset_index()


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
        one-epoch run with label smoothing can trip while learning). Diverged and pruned runs are
        not "at chance": they diverged, or were stopped before they ended.
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
           by: Sequence[str] = ("stem",), pruned: str = "diverged") -> pd.DataFrame:
    """The finished runs with their error.

    Args:
        runs: the runs table.
        value: the error column.
        relative: ``err`` is Δ to the best of the run's group (``delta_to_best``: diverged runs
            at Δ 100).
        by: the groups of ``relative``.
        pruned: how a pruned run is scored (``PRUNED_AS``): "diverged" at 100 (Δ 100), "last" at
            its ``value`` (its last error; 100 when null), "out" left out.

    Returns:
        The completed, diverged and pruned runs (their index kept; no pruned one under "out")
        with ``diverged``, ``pruned``, ``err`` (diverged at 100) and ``err_abs`` (the absolute
        error). A completed run without ``value`` did not measure it and is left out (never at
        100); ``ValueError`` when no completed run has it, or ``value`` is no column.

    >>> runs = pd.DataFrame({"stem": ["conv", "conv", "conv"], "status": ["completed", "diverged", "failed"],
    ...                      "top1_err": [20.0, None, None]})
    >>> errors(runs)[["err", "diverged"]]
         err  diverged
    0   20.0     False
    1  100.0      True

    A pruned run under each policy (its last error was 85):

    >>> runs = pd.DataFrame({"stem": "conv", "status": ["completed", "diverged", "pruned"],
    ...                      "top1_err": [20.0, None, 85.0]})
    >>> errors(runs)[["err", "diverged", "pruned"]]
         err  diverged  pruned
    0   20.0     False   False
    1  100.0      True   False
    2  100.0     False    True
    >>> errors(runs, pruned="last")["err"].tolist(), errors(runs, pruned="out")["err"].tolist()
    ([20.0, 100.0, 85.0], [20.0, 100.0])
    """
    check_pruned(pruned)
    require(runs, ["status"], "runs")
    df = runs[runs["status"].isin(DONE)].copy()
    df["diverged"] = df["status"].eq(RunStatus.DIVERGED)
    df["pruned"] = df["status"].eq(RunStatus.PRUNED)
    if pruned == "out":
        df = df[~df["pruned"]].copy()
    if value not in runs.columns:
        errs = [c for c in runs.columns if str(c).endswith("_err")]
        raise ValueError(f"value={value!r}: not a column of the runs table; its error columns: "
                         f"{', '.join(errs) or 'none'}")
    top = scored_diverged(df, pruned)
    v = df[value].astype(float)
    finished = ~(df["diverged"] | df["pruned"]).to_numpy(bool)
    unmeasured = finished & v.isna().to_numpy()  # no test split, no EMA, an older row: no result for ``value``
    if unmeasured.any():
        if unmeasured.sum() == finished.sum():
            raise ValueError(f"value={value!r} is empty in every completed run ({int(finished.sum())}): they did not "
                             "measure it (test_* needs test_split, ema_* needs ema); choose a column they filled")
        keep = ~unmeasured
        df, top, v = df[keep].copy(), top[keep], v[keep]
    df["err"] = np.where(top, DIVERGED_ERROR, v)
    df["err"] = df["err"].fillna(DIVERGED_ERROR)  # a pruned run without its last error (``PRUNED_AS``)
    df["err_abs"] = df["err"]
    if relative and len(df):
        out = np.full(len(df), np.nan)  # NaN, never an uninitialised value, should a row fall in no group
        # dropna=False: a row whose stratum value is missing has a group (and a best) of its own
        for idx in df.groupby(list(by), observed=True, dropna=False).indices.values():
            out[idx] = delta_to_best(df["err"].to_numpy()[idx], top[idx])
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
    return df.sort_values("err", ascending=False).groupby(list(by), observed=True, dropna=False).head(k)


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
        seed: int = 0, pruned: str = "diverged") -> pd.DataFrame:
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
        pruned: how a pruned run is scored (``PRUNED_AS``; ``errors``).

    Returns:
        One row per group (its ``by`` columns) and distinct error ``x``: ``F`` = F(x) (the
        fraction strictly below x), ``F_right`` = the fraction at or below x (the value just
        after the step at x), ``F_lo``/``F_hi`` the pointwise bootstrap band of ``F_right``,
        ``F_lo_sim``/``F_hi_sim`` a simultaneous band (the bootstrap quantile of sup|F* − F_n|,
        widened where needed to contain the pointwise band), ``dkw`` the DKW simultaneous
        half-width, ``n`` runs and ``n_diverged`` of them counted at 100 %, ``n_pruned`` pruned
        runs of the group (in ``n`` unless ``pruned`` is "out"; at 100 % under "diverged"),
        ``pruned_as`` (the policy) and ``pooled``, the design axes a given ``by`` pools ("" when
        none). Plot ``x`` vs ``F_right`` as a step function (``line_shape='hv'``).

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

    runs = with_design(runs)
    by = list(default_by(runs) if by is None else by)
    pooled_axes = ",".join(pooled(runs, by))
    df = errors(runs, value, relative, by, pruned)
    rng = np.random.default_rng(seed)
    rows = []
    for key, g in df.groupby(list(by), observed=True, sort=True, dropna=False):  # a missing value: its own group
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
                div = scored_diverged(g, pruned)[order]
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
                             "n": len(e), "n_diverged": int(g["diverged"].sum()), "pruned_as": pruned,
                             "pooled": pooled_axes})
        for col, value in zip(by, key, strict=True):
            part.insert(list(by).index(col), col, value)
        rows.append(part)
    cols = [*by, "x", "F", "F_right", "F_lo", "F_hi", "F_lo_sim", "F_hi_sim", "dkw", "n", "n_diverged",
            "n_pruned", "pruned_as", "pooled"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.concat(rows, ignore_index=True)
    out = out.merge(pruned_counts(runs, by, "n_pruned"), on=by, how="left")  # "out" keeps them off ``n`` only
    out["n_pruned"] = out["n_pruned"].fillna(0).astype(int)
    return out[cols]


def summary(runs: pd.DataFrame, by: Sequence[str] | None = None, value: str = "top1_err",
            relative: bool = False, within: Sequence[float] = WITHIN, pruned: str = "diverged") -> pd.DataFrame:
    """How the runs of each group ended.

    Args:
        runs: the runs table.
        by: the groups; default ``default_by(runs)`` (nothing pooled).
        value: the error column.
        relative: best, median and worst are Δ to the group's best (best is 0).
        within: in relative mode, ``within_<x>`` gives the fraction of runs at most x points
            from the best, for each x.
        pruned: how a pruned run is scored (``PRUNED_AS``; ``errors``).

    Returns:
        One row per group: ``runs`` finished (the EDF's n: pruned runs in it unless ``pruned`` is
        "out"), ``diverged`` among them, ``pruned`` (the group's pruned runs, whatever the
        policy), ``at_chance`` (``at_chance``), ``best``, ``median`` and ``worst`` error
        (diverged at 100; pruned as the policy scores them), the runs left out of the EDF
        (failed, preempted, running: a column each), and ``pooled``, the design axes an
        explicit ``by`` pools.
    """

    runs = with_design(runs)
    by = list(default_by(runs) if by is None else by)
    df = errors(runs, value, relative, by, pruned)
    df["at_chance"] = at_chance(df, value).to_numpy(bool)
    g = df.groupby(by, observed=True, dropna=False)  # a missing stratum value is a group of its own (n/a)
    out = g.agg(runs=("err", "size"), diverged=("diverged", "sum"), at_chance=("at_chance", "sum"),
                best=("err", "min"), median=("err", "median"), worst=("err", "max")).reset_index()
    if relative:
        for x in within:
            fr = g["err"].agg(lambda d, x=x: within_fraction(d.to_numpy(), x))
            out[f"within_{x:g}"] = fr.to_numpy() if len(out) else []
    out = out.merge(pruned_counts(runs, by), on=by, how="outer").merge(outcomes(runs, by), on=by, how="outer")
    counts = ["runs", "diverged", "pruned", "at_chance", *LEFT_OUT]
    out[counts] = out[counts].fillna(0).astype(int)
    cols = list(out.columns)
    cols.insert(cols.index("diverged") + 1, cols.pop(cols.index("pruned")))
    return out[cols].assign(pooled=",".join(pooled(runs, by)))


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
    runs = with_design(runs)  # ``by`` may name a varying config field (default_by's strata)
    # a groupby, not crosstab: crosstab drops a missing stratum value, and with dropna=False it
    # fills in every combination of the ``by`` values, groups that have no run
    counts = runs.groupby([runs[c] for c in by], observed=True, dropna=False)["status"].value_counts().unstack(
        fill_value=0)
    for c in cols:
        if c not in counts.columns:
            counts[c] = 0
    return counts[cols].reset_index().rename_axis(columns=None)
