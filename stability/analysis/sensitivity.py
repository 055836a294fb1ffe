"""The LR-sensitivity study of Wortsman et al. 2023 (pure pandas).

"Small-scale proxies for large-scale Transformer training instabilities" (arXiv 2309.14322),
§2.2: for runs that differ only in the peak lr η over a range [a, b],
``E_η[min(ℓ(η), ℓ₀) − ℓ*]``, with ℓ(η) the final validation loss, ℓ₀ the loss at initialisation
(measured at step 0) and ℓ* the best over the range. A diverged run (status diverged, or a loss
that is not finite) counts as ℓ₀ through the clip; so does a pruned run (stopped early by its
pruner as doomed: scored as diverged, as the EDF's default, and counted apart as ``pruned``). The expectation is the mean over the lrs the
runs were given (log-spaced in an lr grid, so E over log η). The same on top-1 error (ℓ₀ = the
error at init). Computed per (group, seed), then the mean over seeds with a percentile bootstrap
interval over seeds (``stats.boot_ci``).

A *group* is runs equal in everything but lr and seed (``grouping.fixed_axes``: sweeps,
optimizers, lengths, wd ... are never pooled); inside a group one line per (stem, fix)
(``grouping.fix_of``). Every function returns a ``tables.Table``: the rows, the columns naming
each row's group (``by``) and a ``note``. Results of any age are read: where the columns the
study needs are absent or null (results written before they were recorded) the table is empty
and the note says why, never an error. The attention-logit study of the same paper is
``attention``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from ..store import DONE, RunStatus
from .edf import CHANCE
from .grouping import NO_FIX, fixed_axes, require
from .stats import boot_ci, holm, median_perm_p, sign_flip_p
from .tables import (
    SERIES,
    Table,
    group_columns,
    group_text,
    groups_of,
    interval_text,
    missing_columns,
    naming_columns,
    noted,
    older_results,
    row_group,
)

# metric -> (final value, value at init); both from the runs table
METRICS = {"loss": ("final_val_loss", "init_val_loss"), "top1_err": ("top1_err", "init_top1_err")}
MIN_LRS = 3  # distinct lrs a (group, seed) needs: with 1 the sensitivity is 0 by construction
ALPHA = 0.10  # family-wise error rate of one call's less-sensitive verdicts (Holm over its rows)


def lr_curves(runs: pd.DataFrame, metric: str = "loss", lr_range: tuple[float, float] | None = None,
              common_lrs: bool = True, pool: Sequence[str] = (), min_lrs: int = 1) -> Table:
    """The final value of every finished run against its lr, clipped at the value at init.

    Args:
        runs: the runs table (``config_json`` gives the fixed hyper-parameters of a group).
        metric: a key of ``METRICS``: "loss" (final validation loss) or "top1_err".
        lr_range: keeps the runs with lr in [a, b].
        common_lrs: keeps, per group, the lrs every line (stem, fix) of it ran, so lines are
            compared over one range (runs dropped so are counted in the note).
        pool: group axes to pool on purpose (wd in an lr x wd sweep, say).
        min_lrs: keeps only (group, line, seed)s with that many distinct lrs (``MIN_LRS``: the
            curves behind an ``lr_sensitivity`` table).

    Returns:
        A ``Table``, one row per run: its group axes (``by``), ``stem``, ``fix``, ``seed``,
        ``lr``, the raw final ``value``, ``l0`` (the value at init of its (group, line, seed):
        the median over its runs, which share one initialisation), ``clipped`` = min(value, l0)
        with a diverged, non-finite or pruned run at l0, ``diverged`` and ``pruned`` (apart: a
        pruned run is never ``diverged``); ``pooled``: the axes of ``pool`` that varied.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: allowed {', '.join(map(repr, METRICS))}")
    final, init = METRICS[metric]
    require(runs, ["status"], "runs")  # every results version has it: without, another table (not older results)
    if not len(runs):
        return noted(pd.DataFrame(columns=[*SERIES, "seed", "lr", "value", "l0", "clipped", "diverged", "pruned"]), (),
                     "No runs.")
    miss = missing_columns(runs, ["lr", "seed"])
    axes: list[str] = []
    if not miss:
        df = runs[runs["status"].isin(DONE)]
        # a run that diverged or was pruned before its first validation has no final value and
        # needs none (it counts as l0): only the runs that completed must have one
        ended = df["status"].isin([RunStatus.DIVERGED, RunStatus.PRUNED])
        done = df[~ended]
        miss = [final] if final not in df.columns or (len(done) and done[final].isna().all()) else []
        miss += missing_columns(df, [init])
    if miss:
        return noted(pd.DataFrame(columns=[*SERIES, "seed", "lr", "value", "l0", "clipped", "diverged", "pruned"]), (),
                     older_results(miss, "LR sensitivity"))
    df, axes = fixed_axes(df, SERIES)
    pooled_axes = [a for a in axes if a in pool]
    axes = [a for a in axes if a not in pool]
    keys = [*axes, *SERIES, "seed"]
    notes = []
    if lr_range is not None:
        lo, hi = lr_range
        keep = df["lr"].between(lo * (1 - 1e-9), hi * (1 + 1e-9))
        df = df[keep]
    df = df.copy()
    df["value"] = df[final].astype(float)
    df["l0"] = df.groupby(keys, observed=True, dropna=False)[init].transform("median").astype(float)
    no_init = df["l0"].isna()
    if no_init.any():
        notes.append(f"{int(no_init.sum())} run(s) without {init} left out ({groups_of(df[no_init], naming_columns(df, axes))}).")
        df = df[~no_init]
    df["pruned"] = df["status"].eq(RunStatus.PRUNED)
    df["diverged"] = (df["status"].eq(RunStatus.DIVERGED) | ~np.isfinite(df["value"].to_numpy(float))) & ~df["pruned"]
    df["clipped"] = np.where(df["diverged"] | df["pruned"], df["l0"], np.minimum(df["value"], df["l0"]))
    if common_lrs and len(df):
        df = df.assign(_line=df.groupby(list(SERIES), observed=True, dropna=False).ngroup())  # one id per line
        n_lines = (df.groupby(axes, observed=True, dropna=False)["_line"].transform("nunique") if axes
                   else pd.Series(df["_line"].nunique(), index=df.index))
        per_lr = df.groupby([*axes, "lr"], observed=True, dropna=False)["_line"].transform("nunique")
        common = per_lr.eq(n_lines)
        if (~common).any():
            notes.append(f"{int((~common).sum())} run(s) at lrs not every line of their group ran were "
                         f"left out (common_lrs): {groups_of(df[~common], naming_columns(df, axes))}.")
        df = df[common].drop(columns="_line")
    if min_lrs > 1 and len(df):
        df = df[df.groupby(keys, observed=True, dropna=False)["lr"].transform("nunique") >= min_lrs]
    cols = [c for c in ("sweep", "run_id") if c in df.columns]
    out = df[[*cols, *[a for a in axes if a not in cols], *SERIES, "seed", "lr", "status", "value", "l0",
              "clipped", "diverged", "pruned"]].reset_index(drop=True)
    return noted(out, group_columns(df, axes), *notes, pooled=pooled_axes)


def lr_sensitivity_per_seed(runs: pd.DataFrame, metric: str = "loss", lr_range: tuple[float, float] | None = None,
                            common_lrs: bool = True, min_lrs: int = MIN_LRS, pool: Sequence[str] = ()) -> Table:
    """The LR sensitivity of each (group, line, seed).

    Args:
        runs, metric, lr_range, common_lrs, pool: as ``lr_curves``.
        min_lrs: lines with fewer distinct lrs are left out (named in the note).

    Returns:
        A ``Table``, one row per (group, line, seed): ``sensitivity`` = mean over its lrs of
        clipped − ℓ* (runs at one lr averaged first), ``l_star`` (ℓ*, the min of the clipped
        values), ``l0``, ``n_lr``, ``lr_min``, ``lr_max``, ``n_runs``, ``n_diverged``,
        ``n_pruned``.
    """
    res = lr_curves(runs, metric, lr_range, common_lrs, pool)
    curves = res.table
    cols = ["stem", "fix", "seed", "sensitivity", "l_star", "l0", "n_lr", "lr_min", "lr_max", "n_runs", "n_diverged",
            "n_pruned"]
    if curves.empty:
        return noted(pd.DataFrame(columns=cols), (), res.note or "No finished runs.")
    axes = list(res.by)
    keys = [*axes, *SERIES, "seed"]
    rows, thin = [], []
    for key, g in curves.groupby(keys, observed=True, dropna=False, sort=True):
        per_lr = g.groupby("lr")["clipped"].mean()
        row = dict(zip(keys, key, strict=True))
        if len(per_lr) < min_lrs:
            thin.append(f"{group_text(row)}: {len(per_lr)} lr" + ("" if len(per_lr) == 1 else "s"))
            continue
        l_star = float(per_lr.min())
        rows.append(row | {"sensitivity": float((per_lr - l_star).mean()), "l_star": l_star,
                           "l0": float(g["l0"].iloc[0]), "n_lr": len(per_lr), "lr_min": float(per_lr.index.min()),
                           "lr_max": float(per_lr.index.max()), "n_runs": len(g),
                           "n_diverged": int(g["diverged"].sum()), "n_pruned": int(g["pruned"].sum())})
    notes = [res.note]
    split = [a for a in axes if curves[a].nunique(dropna=False) > 1]
    if thin and not rows and split:  # say so only where an axis really splits the groups
        notes.append("A group is runs equal in everything but lr and seed; here groups are split by "
                     f"{', '.join(split)} (pool= pools an axis on purpose).")
    if thin:
        more = f" … ({len(thin)} in all)" if len(thin) > 6 else ""
        notes.append(f"Left out, fewer than {min_lrs} lrs: {'; '.join(thin[:6])}{more}.")
    return noted(pd.DataFrame(rows, columns=[*axes, *cols]), axes, *notes, pooled=res.pooled)


def lr_sensitivity(runs: pd.DataFrame, metric: str = "loss", lr_range: tuple[float, float] | None = None,
                   common_lrs: bool = True, min_lrs: int = MIN_LRS, pool: Sequence[str] = (), n_boot: int = 1000,
                   ci: float = 0.9, seed: int = 0) -> Table:
    """The LR sensitivity of each line of each group, with its interval over seeds.

    Args:
        runs, metric, lr_range, common_lrs, min_lrs, pool: as ``lr_sensitivity_per_seed``.
        n_boot: bootstrap resamples of the seeds.
        ci: the interval's coverage.
        seed: of the resamples.

    Returns:
        A ``Table``, one row per (group, line): ``sensitivity`` = the mean over seeds of the
        per-seed LR sensitivity, ``lo``/``hi`` its percentile bootstrap interval over seeds
        (NaN with one seed: there is nothing to resample), ``n_seeds``, ``n_lr`` (distinct lrs),
        the lr range, ``n_runs``, ``n_diverged``, ``n_pruned``, mean ``l0`` and ``l_star``,
        ``never_learned`` (``never_learned``: at chance in some seed, said in the note), ``metric``
        and ``pooled`` (the axes of ``pool`` that varied: "" when nothing is pooled).

    Results written before the losses were recorded give an empty table that says why:

    >>> res = lr_sensitivity(pd.DataFrame({"status": ["completed"], "lr": [0.1], "seed": [0]}))
    >>> res.table.empty, res.note.split(" in these results")[0]
    (True, 'No final_val_loss, init_val_loss')
    """
    res = lr_sensitivity_per_seed(runs, metric, lr_range, common_lrs, min_lrs, pool)
    per = res.table
    cols = ["stem", "fix", "metric", "sensitivity", "lo", "hi", "n_seeds", "n_lr", "lr_min", "lr_max",
            "n_runs", "n_diverged", "n_pruned", "l0", "l_star", "never_learned", "pooled"]
    if per.empty:
        return noted(pd.DataFrame(columns=cols), (), res.note)
    axes = list(res.by)
    rng = np.random.default_rng(seed)
    rows = []
    for key, g in per.groupby([*axes, *SERIES], observed=True, dropna=False, sort=True):
        s = g["sensitivity"].to_numpy(float)
        lo = hi = np.nan
        if len(s) > 1:
            lo, hi = boot_ci(s[rng.integers(0, len(s), size=(n_boot, len(s)))].mean(1), ci)
        rows.append(dict(zip([*axes, *SERIES], key, strict=True)) | {
            "metric": metric, "sensitivity": float(s.mean()), "lo": lo, "hi": hi, "n_seeds": len(s),
            "n_lr": int(g["n_lr"].max()), "lr_min": float(g["lr_min"].min()), "lr_max": float(g["lr_max"].max()),
            "n_runs": int(g["n_runs"].sum()), "n_diverged": int(g["n_diverged"].sum()),
            "n_pruned": int(g["n_pruned"].sum()),
            "l0": float(g["l0"].mean()), "l_star": float(g["l_star"].mean()), "never_learned": never_learned(g),
            "pooled": ",".join(res.pooled)})
    out = pd.DataFrame(rows, columns=[*axes, *cols])
    one = out["n_seeds"].lt(2).any()
    stuck = out["never_learned"].sum()
    return noted(out, axes, res.note, "One seed per line: no interval (lo and hi left empty); run several seeds "
                                "for one." if one else "",
                 f"{stuck} line(s) stayed at chance in some seed (never_learned: best ≥ {CHANCE:g} × the value at "
                 "init): a low sensitivity there is nothing learned, not stability." if stuck else "",
                 pooled=res.pooled)


def never_learned(per_seed: pd.DataFrame) -> bool:
    """Whether a line stayed at chance in some seed: its best value ``l_star`` at least ``CHANCE``
    x its value at init ``l0`` (the runs' at-chance rule). Its sensitivity is then small because
    nothing was learned to lose, not because the line is stable: no verdict rests on it.

    Args:
        per_seed: one line's rows of ``lr_sensitivity_per_seed`` (``l_star``, ``l0``).

    Returns:
        True when any seed's best is at chance.
    """
    return bool((per_seed["l_star"] >= CHANCE * per_seed["l0"]).any())


def _pair_order(axis: str, values: Sequence) -> list:
    """a before b: the baseline fix ("none") first for ``fix``, else alphabetical (conv before
    patchify, as ``compare``)."""
    return sorted(values, key=lambda v: (v != NO_FIX, str(v)) if axis == "fix" else (0, str(v)))


def sensitivity_diff(runs: pd.DataFrame, axis: str = "stem", metric: str = "loss",
                     lr_range: tuple[float, float] | None = None, common_lrs: bool = True, min_lrs: int = MIN_LRS,
                     pool: Sequence[str] = (), n_boot: int = 1000, ci: float = 0.9, seed: int = 0) -> Table:
    """Signed differences of LR sensitivity between the lines of a group.

    Args:
        runs, metric, lr_range, common_lrs, min_lrs, pool: as ``lr_sensitivity_per_seed``.
        axis: "stem" (pairs of stems at one fix) or "fix" (pairs of fixes at one stem, "none" as a).
        n_boot, ci, seed: of the bootstrap over seeds.

    Returns:
        A ``Table``, one row per group, value of the other series axis and pair (a, b) of
        ``axis`` values (``by``: the group axes and that other axis): ``diff`` = sensitivity of
        b − that of a (negative: b is less sensitive), ``lo``/``hi`` its bootstrap interval over
        seeds (descriptive; resampled jointly where both lines ran the same seeds, ``paired``;
        separately otherwise; NaN with one seed each), ``n_a``/``n_b`` seeds, and the test the
        verdict rests on: ``p`` two-sided (an exact sign flip of the per-seed differences when
        paired, else a permutation of the seeds' labels), ``p_adj`` Holm over the table's rows,
        ``min_p`` the smallest p the test can give with these seeds, ``m`` the family's size.
    """
    res = lr_sensitivity_per_seed(runs, metric, lr_range, common_lrs, min_lrs, pool)
    per = res.table
    other = [s for s in SERIES if s != axis]
    cols = [*other, "a", "b", "metric", "sens_a", "sens_b", "diff", "lo", "hi", "n_a", "n_b", "paired"]
    if per.empty:
        return noted(pd.DataFrame(columns=cols), other, res.note)
    axes = list(res.by)
    rng = np.random.default_rng(seed)
    rows = []
    for key, part in per.groupby([*axes, *other], observed=True, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        lines, stuck = {}, {}
        for v, g in part.groupby(axis, observed=True):
            lines[v], stuck[v] = g.set_index("seed")["sensitivity"], never_learned(g)
        for a, b in combinations(_pair_order(axis, list(lines)), 2):
            sa, sb = lines[a], lines[b]
            paired = set(sa.index) == set(sb.index)
            va, vb = sa.to_numpy(float), sb.reindex(sa.index).to_numpy(float) if paired else sb.to_numpy(float)
            lo = hi = np.nan
            if paired and len(va) > 1:
                idx = rng.integers(0, len(va), size=(n_boot, len(va)))
                lo, hi = boot_ci((vb[idx] - va[idx]).mean(1), ci)
            elif not paired and len(va) > 1 and len(vb) > 1:
                ia, ib = rng.integers(0, len(va), (n_boot, len(va))), rng.integers(0, len(vb), (n_boot, len(vb)))
                lo, hi = boot_ci(vb[ib].mean(1) - va[ia].mean(1), ci)
            never = ", ".join(str(v) for v in (a, b) if stuck[v])
            p, min_p = _diff_test(va, vb, paired) if not never else (np.nan, np.nan)
            rows.append(dict(zip([*axes, *other], key, strict=True)) | {
                "a": a, "b": b, "metric": metric, "sens_a": float(va.mean()), "sens_b": float(vb.mean()),
                "diff": float(vb.mean() - va.mean()), "lo": lo, "hi": hi, "n_a": len(va), "n_b": len(vb),
                "paired": paired, "p": p, "min_p": min_p, "never_learned": never})
    out = pd.DataFrame(rows, columns=[*axes, *cols, "p", "min_p", "never_learned"])
    out["p_adj"] = holm(out["p"].to_numpy(float)) if len(out) else []
    out["m"] = int(out["p"].notna().sum())
    return noted(out, [*axes, *other], res.note)


def _diff_test(va: np.ndarray, vb: np.ndarray, paired: bool) -> tuple[float, float]:
    """The two-sided p of mean(b) − mean(a) over seeds and the smallest p the test can give:
    an exact sign flip of the paired differences (2^(1−k)), else a label permutation (about
    1 / C(n_a + n_b, n_a), twice that with equal sizes); NaN with fewer than 2 seeds a side."""
    if paired and len(va) > 1:
        return sign_flip_p(vb - va, "two-sided"), 2.0 ** (1 - len(va))
    if not paired and len(va) > 1 and len(vb) > 1:
        splits = math.comb(len(va) + len(vb), len(va))
        return median_perm_p(va, vb, center=np.mean), min(1.0, (2 if len(va) == len(vb) else 1) / splits)
    return np.nan, np.nan


def sensitivity_verdict(row: pd.Series | dict, by: Sequence[str]) -> str:
    """One line for a ``sensitivity_diff`` row.

    Args:
        row: a row of ``sensitivity_diff(...).table``.
        by: that table's ``by`` (the group axes and the line held fixed).

    Returns:
        Its group, which line is less LR-sensitive (where the Holm-adjusted p of the test over
        seeds is at most ``ALPHA``; the bootstrap interval alone decides nothing: with 2 seeds it
        excludes 0 in half of null tables), by how much, the interval ("n/a" where there is
        none), the p-values and n. Too few seeds for the test to pass says so.
    """
    lo, hi, p, p_adj = row["lo"], row["hi"], row.get("p", np.nan), row.get("p_adj", np.nan)
    m, min_p = int(row.get("m", 1) or 1), row.get("min_p", np.nan)
    if row.get("never_learned"):
        side = (f"no verdict ({row['never_learned']} stayed at chance in some seed (best ≥ {CHANCE:g} × its value "
                "at init): a line that learned nothing has nothing to lose, so its low sensitivity is no stability)")
    elif min(int(row["n_a"]), int(row["n_b"])) < 2:
        side = "no verdict (one seed)"
    elif pd.isna(p_adj):
        side = "no verdict"
    elif p_adj <= ALPHA:
        side = f"{row['b'] if row['diff'] < 0 else row['a']} less sensitive"
    elif min_p > ALPHA:  # no p these seeds can give passes, even alone
        side = f"no verdict (too few seeds: the test's smallest p, {min_p:.3g}, is above {ALPHA:g})"
    elif min_p * m > ALPHA:  # Holm asks α/m of the first row of the family
        side = (f"no clear difference (the test's smallest p, {min_p:.3g}, is above {ALPHA:g}/{m}: more seeds "
                "could tell)")
    else:
        side = "no clear difference"
    tested = "" if pd.isna(p) else f", p {p:.3g} -> Holm {p_adj:.3g} ({'sign flip' if row['paired'] else 'permutation'})"
    return (f"{row_group(row, by)}: {side}: LR sensitivity ({row['metric']}) {row['b']} − {row['a']} = "
            f"{row['diff']:+.3g} {interval_text(lo, hi)}{tested}, n = {row['n_b']} vs {row['n_a']} seeds")


def sensitivity_lines(diffs: Sequence[Table]) -> list[str]:
    """The verdict lines of the ``sensitivity_diff`` tables shown together, one Holm family.

    Args:
        diffs: ``sensitivity_diff`` results printed together (both metrics, stems and fixes).

    Returns:
        One ``sensitivity_verdict`` line per row, in order, each call's own ``p_adj`` replaced by
        the family's: a section's chance of naming some line under the null stays at ``ALPHA``.
    """
    rows = [(r.to_dict(), d.by) for d in diffs for _, r in d.table.iterrows()]
    adj = holm([r.get("p", np.nan) for r, _ in rows]) if rows else np.array([])
    m = int(np.isfinite(adj).sum())
    return [sensitivity_verdict(r | {"p_adj": adj[i], "m": m}, by) for i, (r, by) in enumerate(rows)]


__all__ = ["ALPHA", "METRICS", "MIN_LRS", "lr_curves", "lr_sensitivity", "lr_sensitivity_per_seed",
           "sensitivity_diff", "sensitivity_lines", "sensitivity_verdict"]
