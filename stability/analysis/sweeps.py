"""Error against the swept knobs: lr and wd, optimizer, training length (pure pandas).

Every function scores runs as ``errors`` does by default: diverged and pruned runs at 100 (a
pruned run is flagged ``pruned``, never counted as completed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .edf import errors


def error_vs_hparams(runs: pd.DataFrame, value: str = "top1_err",
                     cols: Sequence[str] = ("stem", "optimizer", "epochs", "lr", "wd")) -> pd.DataFrame:
    """The error of every finished run against its knobs.

    Args:
        runs: the runs table.
        value: the error column.
        cols: the knobs kept (those present, after ``run_id`` and ``sweep``).

    Returns:
        One row per finished run: the knobs, ``err`` (diverged and pruned at 100), ``diverged``
        and ``pruned``.
    """
    df = errors(runs, value)
    keep = [c for c in dict.fromkeys(("run_id", "sweep", *cols)) if c in df.columns]
    return df[[*keep, "err", "diverged", "pruned"]].reset_index(drop=True)


def lr_wd_heatmap(runs: pd.DataFrame, bins: int = 6, value: str = "top1_err",
                  by: Sequence[str] = ("stem",), lr_range: tuple[float, float] | None = None,
                  wd_range: tuple[float, float] | None = None) -> pd.DataFrame:
    """Median error in log-spaced (lr, wd) bins per group.

    Args:
        runs: the runs table.
        bins: per axis.
        value: the error column.
        by: the groups.
        lr_range, wd_range: the span of the bins (e.g. the spec's sampling ranges); default the
            observed values of all groups together.

    Returns:
        by..., ``lr_bin``, ``wd_bin`` (bin centres), ``err``, ``n``, and ``clipped`` (runs
        outside the ranges, counted in the edge bins). Every group gets the same bins, all
        ``bins`` x ``bins`` of them (empty ones with n 0 and err NaN).
    """
    df = error_vs_hparams(runs, value, ("stem", "optimizer", "epochs", "lr", "wd", *by))  # any ``by`` column kept
    cols = [*by, "lr_bin", "wd_bin", "err", "n", "clipped"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = df.copy()
    centres = {}
    clipped = np.zeros(len(out), dtype=bool)
    for col, rng in (("lr", lr_range), ("wd", wd_range)):
        v = np.log10(out[col].clip(lower=1e-12).to_numpy(float))
        lo, hi = (np.log10(rng[0]), np.log10(rng[1])) if rng else (v.min(), v.max())
        edges = np.linspace(lo, hi + 1e-9, bins + 1)
        clipped |= (v < lo - 1e-9) | (v > hi + 1e-9)
        idx = np.clip(np.digitize(v, edges) - 1, 0, bins - 1)
        mids = 10 ** ((edges[:-1] + edges[1:]) / 2)
        out[f"{col}_bin"] = mids[idx]
        centres[col] = mids
    out["clipped"] = clipped
    g = out.groupby([*by, "lr_bin", "wd_bin"], observed=True, dropna=False)  # a missing ``by`` value: its own group
    agg = g.agg(err=("err", "median"), n=("err", "size"), clipped=("clipped", "sum")).reset_index()
    groups = out[list(by)].drop_duplicates()
    grid = pd.MultiIndex.from_product([centres["lr"], centres["wd"]], names=["lr_bin", "wd_bin"]).to_frame(index=False)
    full = groups.merge(grid, how="cross")
    res = full.merge(agg, on=[*by, "lr_bin", "wd_bin"], how="left")
    res["n"] = res["n"].fillna(0).astype(int)
    res["clipped"] = res["clipped"].fillna(0).astype(int)
    return res[cols]


def best_configs(runs: pd.DataFrame, by: Sequence[str] | None = None, value: str = "top1_err") -> pd.DataFrame:
    """The best finished run of each group.

    Args:
        runs: the runs table.
        by: the groups (any columns of ``runs``); default ``default_by(runs)``, nothing pooled.
        value: the error column.

    Returns:
        One row per group: the best run with its knobs, ``err``, ``diverged``, ``pruned``, ``n`` (the
        finished runs it was chosen from) and ``pooled``, the design axes an explicit ``by``
        pools.
    """
    from .edf import default_by
    from .grouping import pooled, with_design

    runs = with_design(runs)
    by = list(default_by(runs) if by is None else by)
    df = errors(runs, value, False, by)
    if df.empty:
        return df
    keep = list(dict.fromkeys(c for c in ("run_id", *by, "sweep", "model", "stem", "optimizer",
                                          "epochs", "lr", "wd", "seed") if c in df.columns))
    # dropna=False: a missing stratum value (an older row's warmup_epochs) is a group of its own
    n = df.groupby(by, observed=True, dropna=False)["err"].transform("size")
    df = df[keep + ["err", "diverged", "pruned"]].assign(n=n, pooled=",".join(pooled(runs, by)))
    return df.loc[df.groupby(by, observed=True, dropna=False)["err"].idxmin()].reset_index(drop=True)


def optimizer_gap(runs: pd.DataFrame, value: str = "top1_err") -> pd.DataFrame:
    """The cost of SGD against AdamW.

    Args:
        runs: the runs table.
        value: the error column.

    Returns:
        One row per stratum (sweep when several, epoch budget, and every other design axis
        that varies: image size, data ... never pooled) and stem: best (over each optimizer's
        own lr/wd runs, as the paper) and median error with AdamW and with SGD, ``n_`` runs
        behind each, and the gaps (SGD minus AdamW; the paper: up to ~10 points for ViT_P,
        < 0.2 for ViT_C).
    """
    from .grouping import strata, with_design

    runs = with_design(runs)
    axes = [a for a in strata(runs, exclude=("stem", "optimizer")) if a != "epochs"]
    df = error_vs_hparams(runs, value, ("stem", "optimizer", "epochs", *[a for a in axes if a != "sweep"]))
    if df.empty:
        return pd.DataFrame(columns=["stem", "epochs"])
    keys = [*[a for a in axes if a in df.columns], "stem", "epochs"]
    g = df.groupby([*keys, "optimizer"], observed=True, dropna=False)["err"].agg(["min", "median", "size"])
    wide = g.unstack("optimizer")
    wide.columns = [f"{stat}_{opt}" for stat, opt in wide.columns]
    wide = wide.rename(columns=lambda c: c.replace("min_", "best_").replace("size_", "n_"))
    if {"best_adamw", "best_sgd"} <= set(wide.columns):
        wide["gap_best"] = wide["best_sgd"] - wide["best_adamw"]
        wide["gap_median"] = wide["median_sgd"] - wide["median_adamw"]
    return wide.reset_index()


def training_length(runs: pd.DataFrame, value: str = "top1_err",
                    by: Sequence[str] | None = None) -> pd.DataFrame:
    """Best error against the training length.

    Args:
        runs: the runs table.
        value: the error column.
        by: the groups; default every design axis that varies except epochs, then the stem.

    Returns:
        One row per group and epoch budget: ``best``, ``median``, ``n`` and ``vs_longest``, the
        best's gap to the longest budget of the group (the paper's "error relative to the
        400-epoch run").
    """
    from .grouping import strata, with_design

    runs = with_design(runs)
    by = list([*strata(runs, exclude=("stem", "epochs")), "stem"] if by is None else by)
    df = errors(runs, value, False, by)
    if df.empty:
        return pd.DataFrame(columns=[*by, "epochs", "best", "median", "n", "vs_longest"])
    # dropna=False: a missing value (of a stratum, or an older row's epochs) is a group of its own
    g = df.groupby([*by, "epochs"], observed=True, dropna=False)["err"].agg(best="min", median="median", n="size")
    out = g.reset_index().sort_values([*by, "epochs"])
    longest = out.groupby(list(by), observed=True, dropna=False)["best"].transform("last")
    out["vs_longest"] = out["best"] - longest
    return out.reset_index(drop=True)


def hparam_importance(runs: pd.DataFrame, params: Sequence[str] = ("lr", "wd", "optimizer", "epochs"),
                      by: Sequence[str] = ("stem",), value: str = "top1_err", seed: int = 0,
                      max_runs: int = 1000) -> pd.DataFrame:
    """How much each knob explains the error, per group.

    Optuna's fANOVA importance evaluator on the finished runs (diverged and pruned at 100, so instability
    counts), over the knobs that vary in the group.

    Args:
        runs: the runs table.
        params: the knobs.
        by: the groups.
        value: the error column.
        seed: of the evaluator and the subsample.
        max_runs: a larger group is subsampled to that many (the evaluator's forest grows with
            n and the importances settle long before).

    Returns:
        by..., ``param``, ``importance`` (summing to 1 per group), ``n`` (runs in the group),
        ``n_used``. No rows for a group of fewer than 4 runs, with no knob that varies, or whose
        errors are all equal (every run diverged: there is no variance to explain).
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    df = errors(runs, value)
    rows = []
    for key, g in df.groupby(list(by), observed=True, sort=True, dropna=False):  # a missing value: its own group
        key = key if isinstance(key, tuple) else (key,)
        knobs = [p for p in params if p in g and g[p].nunique() > 1]
        if not knobs or len(g) < 4:
            continue
        n = len(g)
        if n > max_runs:
            g = g.sample(max_runs, random_state=seed)
        if g["err"].nunique() < 2:
            continue  # every error equal (all diverged, say): no variance for a knob to explain
        dists = {}
        for p in knobs:
            if p in ("lr", "wd") and (g[p] > 0).all():
                dists[p] = FloatDistribution(float(g[p].min()), float(g[p].max()), log=True)
            else:
                dists[p] = CategoricalDistribution(sorted(g[p].astype(str).unique()))
        trials = [optuna.trial.create_trial(
            params={p: (float(r[p]) if isinstance(dists[p], FloatDistribution) else str(r[p])) for p in knobs},
            distributions=dists, value=float(r["err"])) for _, r in g.iterrows()]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study()
        study.add_trials(trials)
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), normalize=True)
        for p, v in imp.items():
            rows.append({**dict(zip(by, key, strict=True)), "param": p, "importance": float(v), "n": n,
                         "n_used": len(g)})
    return pd.DataFrame(rows, columns=[*by, "param", "importance", "n", "n_used"])
