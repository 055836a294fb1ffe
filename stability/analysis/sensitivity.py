"""Instability signals of later work: LR sensitivity and attention-logit growth (pure pandas).

Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities"
(arXiv 2309.14322):

- **LR sensitivity** (§2.2). For runs that differ only in the peak lr η over a range [a, b]:
  ``E_η[min(ℓ(η), ℓ₀) − ℓ*]``, with ℓ(η) the final validation loss, ℓ₀ the loss at
  initialisation (measured at step 0) and ℓ* the best over the range. A diverged run (status
  diverged, or a loss that is not finite) counts as ℓ₀ through the clip. The expectation is the
  mean over the lrs the runs were given (log-spaced in an lr grid, so E over log η). The same on
  top-1 error (ℓ₀ = the error at init). Computed per (group, seed), then the mean over seeds
  with a percentile bootstrap interval over seeds (``compare._boot_ci``).
- **Attention logits** (§3.3): does the max attention logit q·k/√d_h at an early step predict
  divergence? Per run, the max over layers of ``attn_logit_max`` at the first traced step at or
  after a given step; then the fraction of runs with the outcome among those above a threshold vs
  those below, each with its n and a Wilson interval, and the difference with Newcombe's interval
  (``attn_logit_divergence``); and, threshold-free, the AUC of that logit for the outcome over all
  runs and over pairs at one lr only (``attn_logit_auc``: high lr brings both large logits and
  divergence, so only the within-lr AUC says whether the logit tells more than the lr). The
  outcome (``OUTCOMES``) is ``diverged`` or ``unstable``: diverged or collapsed (never left
  chance), the small-model instability of Wortsman et al., whose high-lr runs end at a loss near
  ℓ₀ rather than a non-finite one.

A *group* is runs equal in everything but lr and seed (``grouping.fixed_axes``: sweeps,
optimizers, lengths, wd ... are never pooled); inside a group one line per (stem, fix)
(``grouping.fix_of``). Every function takes results of any age: where the columns these
signals need are absent or null (results written before they were recorded) it returns an
empty frame whose ``attrs["note"]`` says why (``note``), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from statistics import NormalDist

import numpy as np
import pandas as pd

from ..store import DONE, RunStatus
from .compare import _boot_ci
from .grouping import NO_FIX, fixed_axes

# metric -> (final value, value at init); both from the runs table
METRICS = {"loss": ("final_val_loss", "init_val_loss"), "top1_err": ("top1_err", "init_top1_err")}
SERIES = ("stem", "fix")  # the lines inside a group
MIN_LRS = 3  # distinct lrs a (group, seed) needs: with 1 the sensitivity is 0 by construction
# Thresholds of the attention-logit table: fixed in advance (never chosen on the data they
# judge), from ~2x the logits of an initialised vit_tiny (2.1-2.5, measured: docs/methodology.md)
# to Wortsman's 1e4 at large scale.
THRESHOLDS = (5.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4)
ATTN_FRACTION = 0.1  # "early": the first traced step after 10% of the group's training, for any length
MIN_AUC_RUNS = 3  # runs with and without the outcome an AUC interval needs, each
MIN_BOOT = 100  # fewer shuffles cannot give a p-value below 0.01 nor a stable 90% interval
# what "went wrong" means in the attention-logit tables
OUTCOMES = {"diverged": "a non-finite loss, or one above the divergence bound",
            "unstable": "diverged, or collapsed by the trainer's loss flag: the final training loss still "
                        "≥ 0.9 ln(classes) (at high lr an instability; at low lr it can be learning too slowly "
                        "for the schedule). Looser than the findings' \"at chance\" (error ≥ 0.9 × the error at "
                        "init): a run can learn to 60 % error and still trip it"}


def note(df: pd.DataFrame) -> str:
    """What a function of this module left out, or why its frame is empty ("" when nothing)."""
    return str(df.attrs.get("note", ""))


def _noted(df: pd.DataFrame, *notes: str) -> pd.DataFrame:
    df.attrs["note"] = " ".join(n for n in notes if n)
    return df


def _missing(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """The columns of ``cols`` that ``df`` lacks or holds only nulls in."""
    return [c for c in cols if c not in df.columns or df[c].isna().all()]


def _older(cols: Sequence[str], what: str) -> str:
    return (f"No {', '.join(cols)} in these results (written before they were recorded, or no "
            f"finished run): {what} needs them; rerun the runs with the current trainer.")


def value_text(v) -> str:
    """A value of a group axis as the report and dashboard print it: floats (lr, wd ...) with 3
    significant digits, everywhere the same; "n/a" for a missing one."""
    if v is None or (isinstance(v, float | np.floating) and np.isnan(v)):
        return "n/a"
    if isinstance(v, float | np.floating):
        return f"{float(v):.3g}"
    return str(v)


def group_text(values: dict) -> str:
    """A group named by its axes: "sweep s, wd 0.00141, stem conv, fix none" ("all runs" when
    there is no axis)."""
    return ", ".join(f"{k} {value_text(v)}" for k, v in values.items()) or "all runs"


def _groups_of(df: pd.DataFrame, cols: Sequence[str], limit: int = 6) -> str:
    """The groups (by ``cols``) the rows of ``df`` fall in, each with its row count."""
    if df.empty:
        return ""
    if not cols:
        return f"all runs: {len(df)}"
    counts = df.groupby(list(cols), observed=True, dropna=False, sort=True).size()
    items = [f"{group_text(dict(zip(cols, k if isinstance(k, tuple) else (k,), strict=True)))}: {n}"
             for k, n in counts.items()]
    more = f" … ({len(items)} groups in all)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _named(df: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The columns that name a run's group and line: the sweep (even when it does not vary), the
    group axes, stem and fix."""
    return [*[c for c in ("sweep",) if c in df.columns and c not in axes], *axes,
            *[c for c in SERIES if c in df.columns]]


def row_group(row: pd.Series | dict, stop: str) -> str:
    """The group of a row of these tables: its columns before ``stop`` (the group axes, then the
    line held fixed), named by ``group_text``; what it pools (``pooled``) said after."""
    keys = list(row.index if isinstance(row, pd.Series) else row.keys())
    cols = keys[:keys.index(stop)] if stop in keys else []
    text = group_text({c: row[c] for c in cols if c != "run_id"})
    pooled = row.get("pooled", "") if hasattr(row, "get") else ""
    if isinstance(pooled, str) and pooled:
        text += f" (pooled over {pooled.replace(',', ', ')})"
    return text


def _interval(lo: float, hi: float, fmt: str = "+.3g") -> str:
    """"[lo, hi]", or "[n/a]" where the interval is undefined (as ``stems.verdict_line``)."""
    if pd.isna(lo) or pd.isna(hi):
        return "[n/a]"
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def lr_curves(runs: pd.DataFrame, metric: str = "loss", lr_range: tuple[float, float] | None = None,
              common_lrs: bool = True, pool: Sequence[str] = (), min_lrs: int = 1) -> pd.DataFrame:
    """One row per finished run: its group's axes, ``stem``, ``fix``, ``seed``, ``lr``, the raw
    final ``value``, ``l0`` (the value at init of its (group, line, seed): the median over its
    runs, which share one initialisation), ``clipped`` = min(value, l0) with a diverged or
    non-finite run at l0, and ``diverged``. ``lr_range`` keeps a range [a, b]; ``common_lrs``
    keeps, per group, the lrs every line (stem, fix) of it ran, so lines are compared over one
    range (runs dropped so are counted in the note). ``pool`` names group axes to pool on
    purpose (wd in an lr x wd sweep, say): ``attrs["pooled"]`` says which of them varied.
    ``min_lrs`` keeps only (group, line, seed)s with that many distinct lrs (``MIN_LRS``: the
    curves behind an ``lr_sensitivity`` table)."""
    final, init = METRICS[metric]
    need = ["status", "lr", "seed", final, init]
    miss = _missing(runs, need)
    axes: list[str] = []
    if not miss:
        df = runs[runs["status"].isin(DONE)]
        miss = _missing(df, [final, init])
    if miss:
        return _noted(pd.DataFrame(columns=[*SERIES, "seed", "lr", "value", "l0", "clipped", "diverged"]),
                      _older(miss, "LR sensitivity"))
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
        notes.append(f"{int(no_init.sum())} run(s) without {init} left out ({_groups_of(df[no_init], _named(df, axes))}).")
        df = df[~no_init]
    df["diverged"] = df["status"].eq(RunStatus.DIVERGED) | ~np.isfinite(df["value"].to_numpy(float))
    df["clipped"] = np.where(df["diverged"], df["l0"], np.minimum(df["value"], df["l0"]))
    if common_lrs and len(df):
        df = df.assign(_line=df[list(SERIES)].astype(str).agg(" / ".join, axis=1))
        n_lines = (df.groupby(axes, observed=True, dropna=False)["_line"].transform("nunique") if axes
                   else pd.Series(df["_line"].nunique(), index=df.index))
        per_lr = df.groupby([*axes, "lr"], observed=True, dropna=False)["_line"].transform("nunique")
        common = per_lr.eq(n_lines)
        if (~common).any():
            notes.append(f"{int((~common).sum())} run(s) at lrs not every line of their group ran were "
                         f"left out (common_lrs): {_groups_of(df[~common], _named(df, axes))}.")
        df = df[common].drop(columns="_line")
    if min_lrs > 1 and len(df):
        df = df[df.groupby(keys, observed=True, dropna=False)["lr"].transform("nunique") >= min_lrs]
    cols = [c for c in ("sweep", "run_id") if c in df.columns]
    out = df[[*cols, *[a for a in axes if a not in cols], *SERIES, "seed", "lr", "status", "value", "l0",
              "clipped", "diverged"]].reset_index(drop=True)
    out.attrs["pooled"] = ",".join(pooled_axes)
    return _noted(out, *notes)


def _axes_of(curves: pd.DataFrame) -> list[str]:
    """The group axes of an ``lr_curves`` frame: its columns before ``stem``, but the run's id."""
    cols = list(curves.columns)
    return [c for c in cols[:cols.index("stem")] if c != "run_id"]


def lr_sensitivity_per_seed(runs: pd.DataFrame, metric: str = "loss", lr_range: tuple[float, float] | None = None,
                            common_lrs: bool = True, min_lrs: int = MIN_LRS, pool: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (group, line, seed): ``sensitivity`` = mean over its lrs of clipped − ℓ*
    (runs at one lr averaged first), ``l_star`` (ℓ*, the min of the clipped values), ``l0``,
    ``n_lr``, ``lr_min``, ``lr_max``, ``n_runs``, ``n_diverged``. Lines with fewer than
    ``min_lrs`` distinct lrs are left out (named in the note); ``pool`` as ``lr_curves``."""
    curves = lr_curves(runs, metric, lr_range, common_lrs, pool)
    cols = ["stem", "fix", "seed", "sensitivity", "l_star", "l0", "n_lr", "lr_min", "lr_max", "n_runs", "n_diverged"]
    if curves.empty:
        return _noted(pd.DataFrame(columns=cols), note(curves) or "No finished runs.")
    axes = _axes_of(curves)
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
                           "n_diverged": int(g["diverged"].sum())})
    notes = [note(curves)]
    if thin and not rows and axes:
        notes.append("A group is runs equal in everything but lr and seed; here groups are split by "
                     f"{', '.join(a for a in axes if curves[a].nunique(dropna=False) > 1)} (pool= pools "
                     "an axis on purpose).")
    if thin:
        more = f" … ({len(thin)} in all)" if len(thin) > 6 else ""
        notes.append(f"Left out, fewer than {min_lrs} lrs: {'; '.join(thin[:6])}{more}.")
    out = pd.DataFrame(rows, columns=[*axes, *cols])
    out.attrs["pooled"] = curves.attrs.get("pooled", "")
    return _noted(out, *notes)


def lr_sensitivity(runs: pd.DataFrame, metric: str = "loss", lr_range: tuple[float, float] | None = None,
                   common_lrs: bool = True, min_lrs: int = MIN_LRS, pool: Sequence[str] = (), n_boot: int = 1000,
                   ci: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """One row per (group, line): ``sensitivity`` = the mean over seeds of the per-seed LR
    sensitivity, ``lo``/``hi`` its ``ci`` percentile bootstrap interval over seeds (NaN with
    one seed: there is nothing to resample), ``n_seeds``, ``n_lr`` (distinct lrs), the lr range,
    ``n_runs``, ``n_diverged``, mean ``l0`` and ``l_star``, ``metric`` and ``pooled`` (the axes
    of ``pool`` that varied: "" when nothing is pooled)."""
    per = lr_sensitivity_per_seed(runs, metric, lr_range, common_lrs, min_lrs, pool)
    cols = ["stem", "fix", "metric", "sensitivity", "lo", "hi", "n_seeds", "n_lr", "lr_min", "lr_max",
            "n_runs", "n_diverged", "l0", "l_star", "pooled"]
    if per.empty:
        return _noted(pd.DataFrame(columns=cols), note(per))
    axes = list(per.columns[:list(per.columns).index("stem")])
    rng = np.random.default_rng(seed)
    rows = []
    for key, g in per.groupby([*axes, *SERIES], observed=True, dropna=False, sort=True):
        s = g["sensitivity"].to_numpy(float)
        lo = hi = np.nan
        if len(s) > 1:
            lo, hi = _boot_ci(s[rng.integers(0, len(s), size=(n_boot, len(s)))].mean(1), ci)
        rows.append(dict(zip([*axes, *SERIES], key, strict=True)) | {
            "metric": metric, "sensitivity": float(s.mean()), "lo": lo, "hi": hi, "n_seeds": len(s),
            "n_lr": int(g["n_lr"].max()), "lr_min": float(g["lr_min"].min()), "lr_max": float(g["lr_max"].max()),
            "n_runs": int(g["n_runs"].sum()), "n_diverged": int(g["n_diverged"].sum()),
            "l0": float(g["l0"].mean()), "l_star": float(g["l_star"].mean()), "pooled": per.attrs.get("pooled", "")})
    out = pd.DataFrame(rows, columns=[*axes, *cols])
    one = out["n_seeds"].lt(2).any()
    return _noted(out, note(per), "One seed per line: no interval (lo and hi left empty); run several seeds "
                                  "for one." if one else "")


def _pair_order(axis: str, values: Sequence) -> list:
    """a before b: the baseline fix ("none") first for ``fix``, else alphabetical (conv before
    patchify, as ``compare``)."""
    return sorted(values, key=lambda v: (v != NO_FIX, str(v)) if axis == "fix" else (0, str(v)))


def sensitivity_diff(runs: pd.DataFrame, axis: str = "stem", metric: str = "loss",
                     lr_range: tuple[float, float] | None = None, common_lrs: bool = True, min_lrs: int = MIN_LRS,
                     pool: Sequence[str] = (), n_boot: int = 1000, ci: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """Per group, value of the other series axis and pair (a, b) of ``axis`` values (stems, or
    fixes with "none" as a): ``diff`` = sensitivity of b − that of a (negative: b is less
    sensitive), ``lo``/``hi`` its bootstrap interval over seeds (resampled jointly where both
    lines ran the same seeds, ``paired``; separately otherwise; NaN with one seed each), and
    ``n_a``/``n_b`` seeds."""
    per = lr_sensitivity_per_seed(runs, metric, lr_range, common_lrs, min_lrs, pool)
    other = [s for s in SERIES if s != axis]
    cols = [*other, "a", "b", "metric", "sens_a", "sens_b", "diff", "lo", "hi", "n_a", "n_b", "paired"]
    if per.empty:
        return _noted(pd.DataFrame(columns=cols), note(per))
    axes = list(per.columns[:list(per.columns).index("stem")])
    rng = np.random.default_rng(seed)
    rows = []
    for key, part in per.groupby([*axes, *other], observed=True, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        lines = {v: g.set_index("seed")["sensitivity"] for v, g in part.groupby(axis, observed=True)}
        for a, b in combinations(_pair_order(axis, list(lines)), 2):
            sa, sb = lines[a], lines[b]
            paired = set(sa.index) == set(sb.index)
            va, vb = sa.to_numpy(float), sb.reindex(sa.index).to_numpy(float) if paired else sb.to_numpy(float)
            lo = hi = np.nan
            if paired and len(va) > 1:
                idx = rng.integers(0, len(va), size=(n_boot, len(va)))
                lo, hi = _boot_ci((vb[idx] - va[idx]).mean(1), ci)
            elif not paired and len(va) > 1 and len(vb) > 1:
                ia, ib = rng.integers(0, len(va), (n_boot, len(va))), rng.integers(0, len(vb), (n_boot, len(vb)))
                lo, hi = _boot_ci(vb[ib].mean(1) - va[ia].mean(1), ci)
            rows.append(dict(zip([*axes, *other], key, strict=True)) | {
                "a": a, "b": b, "metric": metric, "sens_a": float(va.mean()), "sens_b": float(vb.mean()),
                "diff": float(vb.mean() - va.mean()), "lo": lo, "hi": hi, "n_a": len(va), "n_b": len(vb),
                "paired": paired})
    return _noted(pd.DataFrame(rows, columns=[*axes, *cols]), note(per))


def sensitivity_verdict(row: pd.Series | dict) -> str:
    """One line for a ``sensitivity_diff`` row: its group (the group axes and the line held
    fixed), which line is less LR-sensitive, by how much, with the interval ("n/a" where there
    is none) and n."""
    lo, hi = row["lo"], row["hi"]
    if pd.isna(lo) or pd.isna(hi):
        few = min(int(row["n_a"]), int(row["n_b"])) < 2
        side = "no interval (one seed)" if few else "no interval"
    else:
        side = f"{row['b']} less sensitive" if hi < 0 else f"{row['a']} less sensitive" if lo > 0 \
            else "no clear difference"
    return (f"{row_group(row, 'a')}: {side}: LR sensitivity ({row['metric']}) {row['b']} − {row['a']} = "
            f"{row['diff']:+.3g} {_interval(lo, hi)}, n = {row['n_b']} vs {row['n_a']} seeds")


def _check_early(step: int | None, fraction: float | None) -> None:
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step={step!r}: allowed an integer ≥ 0, or None (then fraction)")
    elif fraction is None or not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: allowed 0 < fraction ≤ 1 (or give step)")


def attn_logit_at(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = None,
                  fraction: float | None = ATTN_FRACTION, steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished run: its group axes, line, ``seed``, ``lr``, ``diverged``, ``unstable``
    (diverged or collapsed; null where the runs table has no ``collapsed``), ``at_step`` (the
    first traced step at or after ``step``, or when ``step`` is None after ``fraction`` of the
    group's training: ``fraction`` × the last traced step of its completed runs) and
    ``logit_max`` (the max over layers of ``attn_logit_max`` there); with ``steps`` (the steps
    table) also ``loss_at``, the training loss at that step (a baseline predictor). A diverged
    run without a logit there has ``ended_before`` True: nothing can warn of it at
    that step (it diverged before the step or before the next traced step, or was not traced).
    A completed run not traced that far has no logit either (said in the note)."""
    _check_early(step, fraction)
    cols = ["stem", "fix", "seed", "lr", "diverged", "unstable", "at_step", "logit_max", "ended_before"]
    miss = _missing(runs, ["run_id", "status", "lr"]) + _missing(grad_norms, ["run_id", "step", "attn_logit_max"])
    if miss:
        return _noted(pd.DataFrame(columns=cols), _older(miss, "the attention-logit table"))
    df, axes = fixed_axes(runs[runs["status"].isin(DONE)], SERIES)
    if "seed" not in df.columns:
        df = df.assign(seed=0)
    join = [c for c in ("sweep", "run_id") if c in df.columns and c in grad_norms.columns]
    gn = grad_norms.loc[grad_norms["attn_logit_max"].notna(), [*join, "step", "attn_logit_max"]]
    per_step = gn.groupby([*join, "step"], observed=True)["attn_logit_max"].max().reset_index()
    last = per_step.groupby(join, observed=True)["step"].max().rename("_last").reset_index()
    df = df.merge(last, on=join, how="left")
    df["diverged"] = df["status"].eq(RunStatus.DIVERGED)
    collapsed = (df["collapsed"] if "collapsed" in df.columns else pd.Series(pd.NA, index=df.index)).astype("boolean")
    df["unstable"] = collapsed.mask(df["diverged"], True)  # null: collapse not recorded
    if step is None:
        ref = df["_last"].where(~df["diverged"])
        total = (ref.groupby([df[a] for a in axes], dropna=False).transform("max") if axes
                 else pd.Series(ref.max(), index=df.index))
        df["_at"] = np.ceil(fraction * total.fillna(df["_last"]))
    else:
        df["_at"] = float(step)
    merged = per_step.merge(df[[*join, "_at"]], on=join)
    first = merged[merged["step"] >= merged["_at"]].sort_values("step").groupby(join, observed=True).head(1)
    df = df.merge(first[[*join, "step", "attn_logit_max"]].rename(
        columns={"step": "at_step", "attn_logit_max": "logit_max"}), on=join, how="left")
    df["ended_before"] = df["logit_max"].isna() & df["diverged"]
    if steps is not None and not _missing(steps, ["run_id", "step", "loss"]):
        sj = [c for c in join if c in steps.columns]
        loss = steps[[*sj, "step", "loss"]].rename(columns={"step": "at_step", "loss": "loss_at"})
        df = df.merge(loss.drop_duplicates([*sj, "at_step"]), on=[*sj, "at_step"], how="left")
        cols.append("loss_at")
    keep = [*[c for c in ("sweep", "run_id") if c in df.columns], *[a for a in axes if a != "sweep"], *cols]
    out = df[keep].reset_index(drop=True)
    untraced = df["_last"].isna()
    short = df["logit_max"].isna() & ~df["diverged"] & ~untraced
    return _noted(out, f"{int(untraced.sum())} run(s) have no attention-logit trace "
                       f"({_groups_of(df[untraced], _named(df, axes))})." if untraced.any() else "",
                  f"{int(short.sum())} completed run(s) were not traced that far "
                  f"({_groups_of(df[short], _named(df, axes))})." if short.any() else "")


def wilson(k: int, n: int, ci: float = 0.9) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN when n is 0)."""
    if n == 0:
        return np.nan, np.nan
    z = NormalDist().inv_cdf((1 + ci) / 2)
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, mid - half)), float(min(1.0, mid + half))


def newcombe(k1: int, n1: int, k2: int, n2: int, ci: float = 0.9) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 − p2 from the two Wilson intervals."""
    if n1 == 0 or n2 == 0:
        return np.nan, np.nan
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1, ci), wilson(k2, n2, ci)
    d = p1 - p2
    return float(d - np.hypot(p1 - l1, u2 - p2)), float(d + np.hypot(u1 - p1, p2 - l2))


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome={outcome!r}: allowed {', '.join(OUTCOMES)}")


def _attn_groups(at: pd.DataFrame, by: Sequence[str] | str | None) -> tuple[list[str], list[str]]:
    """The grouping of an attention table (default: every group axis and the line, nothing pooled)
    and the axes an explicit ``by`` pools (those that vary)."""
    axes = [c for c in list(at.columns)[:list(at.columns).index("stem")] if c != "run_id"]
    by = [by] if isinstance(by, str) else list([*axes, *SERIES] if by is None else by)
    if bad := [c for c in by if c not in at.columns]:
        raise ValueError(f"by: {bad[0]!r} is not a column (allowed: {', '.join([*axes, *SERIES, 'seed', 'lr'])})")
    return by, [c for c in [*axes, *SERIES] if c not in by and at[c].nunique(dropna=False) > 1]


def _outcome_of(at: pd.DataFrame, outcome: str) -> str:
    """Why the outcome cannot be judged on these runs ('' when it can)."""
    if outcome == "unstable" and len(at) and at["unstable"].isna().any():
        return ("No collapsed flag for some runs (results written before it was recorded): "
                "outcome 'unstable' needs it; use outcome='diverged'.")
    return ""


def _where(at: pd.DataFrame, step: int | None, fraction: float | None) -> tuple[str, str]:
    """(how the step was chosen, the traced steps it gave)."""
    how = f"first traced step ≥ {int(step)}" if step is not None else f"first traced step ≥ {fraction:g} of training"
    s = at["at_step"].dropna()
    return how, ("" if s.empty else f"{int(s.min())}" if s.min() == s.max() else f"{int(s.min())}–{int(s.max())}")


def attn_logit_divergence(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = None,
                          fraction: float | None = ATTN_FRACTION, thresholds: Sequence[float] = THRESHOLDS,
                          by: Sequence[str] | str | None = None, ci: float = 0.9,
                          outcome: str = "diverged") -> pd.DataFrame:
    """Does a large attention logit early on predict divergence? Per group (``by``: default every
    group axis and the line, nothing pooled; ``pooled`` names what an explicit ``by`` pools) and
    threshold t: among runs whose ``logit_max`` (``attn_logit_at``) is above t, ``n_above``,
    ``out_above`` of them had the ``outcome`` (``OUTCOMES``), ``frac_above`` with its Wilson
    interval; the same below (at or under t); ``diff`` = frac_above − frac_below (> 0: a large
    logit goes with the outcome) with Newcombe's interval; ``n_ended_before``: runs that diverged
    before the step (left out: no warning at that step comes in time)."""
    _check_outcome(outcome)
    at = attn_logit_at(runs, grad_norms, step, fraction)
    cols = ["outcome", "threshold", "n", "n_above", "out_above", "frac_above", "frac_above_lo", "frac_above_hi",
            "n_below", "out_below", "frac_below", "frac_below_lo", "frac_below_hi", "diff", "diff_lo", "diff_hi",
            "n_ended_before", "step", "at_steps", "pooled"]
    if at.empty or _outcome_of(at, outcome):
        return _noted(pd.DataFrame(columns=cols), note(at) or _outcome_of(at, outcome) or "No finished runs.")
    by, pooled = _attn_groups(at, by)
    rows = []
    for keys, g, seen in _each_group(at, by):
        x, hit = seen["logit_max"].to_numpy(float), seen[outcome].to_numpy(bool)
        how, at_steps = _where(seen, step, fraction)
        for t in thresholds:
            up = x > t
            ka, na, kb, nb = int(hit[up].sum()), int(up.sum()), int(hit[~up].sum()), int((~up).sum())
            fa, fb = (ka / na if na else np.nan), (kb / nb if nb else np.nan)
            (la, ha), (lb, hb), (ld, hd) = wilson(ka, na, ci), wilson(kb, nb, ci), newcombe(ka, na, kb, nb, ci)
            rows.append(keys | {
                "outcome": outcome, "threshold": float(t), "n": len(x), "n_above": na, "out_above": ka,
                "frac_above": fa, "frac_above_lo": la, "frac_above_hi": ha, "n_below": nb, "out_below": kb,
                "frac_below": fb, "frac_below_lo": lb, "frac_below_hi": hb, "diff": fa - fb, "diff_lo": ld,
                "diff_hi": hd, "n_ended_before": int(g["ended_before"].sum()), "step": how, "at_steps": at_steps,
                "pooled": ",".join(pooled)})
    return _finish(pd.DataFrame(rows, columns=[*by, *cols]), at)


def _each_group(at: pd.DataFrame, by: list[str]):
    """(the group's ``by`` values, its runs, those of them with a logit) per group."""
    for key, g in (at.groupby(by, observed=True, dropna=False, sort=True) if by else [((), at)]):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(by, key, strict=True)), g, g[g["logit_max"].notna()]


def _finish(out: pd.DataFrame, at: pd.DataFrame) -> pd.DataFrame:
    """An attention table with the note of its runs; empty, saying why, when no run had a logit."""
    if out["n"].eq(0).all():
        return _noted(out.iloc[:0], note(at), "No run has an attention logit at or after that step: their traces "
                      "end before it (choose an earlier step, or fraction=).")
    return _noted(out, note(at))


def _cells(strata: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(strata == v) for v in np.unique(strata)]


def _weighted_auc(x: np.ndarray, strata: np.ndarray, w_with: np.ndarray, w_without: np.ndarray):
    """(AUC, weight of the pairs) for each row of the run weights (k, n): the sum over pairs in one
    stratum of w_with_i · w_without_j · ([x_i > x_j] + ½[x_i = x_j]) over the sum of
    w_with_i · w_without_j. One sort per stratum and cumulative sums: O(k·n), no n × n matrix.
    Weights 0/1 give the Mann-Whitney AUC; shuffled outcomes, a permutation's; resample counts
    times the outcome, a bootstrap resample's."""
    u, den = np.zeros(len(w_with)), np.zeros(len(w_with))
    for c in _cells(strata):
        order = c[np.argsort(x[c], kind="stable")]
        xs, wi, wo = x[order], w_with[:, order], w_without[:, order]
        first, past = np.searchsorted(xs, xs, "left"), np.searchsorted(xs, xs, "right")  # each one's ties
        cum = np.concatenate([np.zeros((len(wo), 1)), np.cumsum(wo, axis=1)], axis=1)
        u += (wi * (cum[:, first] + 0.5 * (cum[:, past] - cum[:, first]))).sum(1)
        den += wi.sum(1) * wo.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, u / den, np.nan), den


def auc(x: np.ndarray, bad: np.ndarray, strata: np.ndarray | None = None) -> tuple[float, int]:
    """(AUC, pairs): the probability that a run with the outcome has the larger ``x`` than one
    without (ties count half; Mann-Whitney), over all such pairs, or over pairs in one stratum
    only when ``strata`` is given. Runs whose ``x`` is NaN (not measured) are left out. NaN
    without a pair."""
    x, bad = np.asarray(x, float), np.asarray(bad, bool)
    strata = np.zeros(len(x), int) if strata is None else np.asarray(strata)
    keep = ~np.isnan(x)
    a, n = _weighted_auc(x[keep], strata[keep], bad[keep][None].astype(float), (~bad[keep])[None].astype(float))
    return float(a[0]), int(n[0])


def _auc_stats(x: np.ndarray, bad: np.ndarray, strata: np.ndarray, within: bool, ci: float, n_boot: int,
               rng: np.random.Generator) -> tuple[float, int, float, float, float]:
    """(AUC, pairs, lo, hi, p). p: two-sided permutation p-value of AUC = 0.5, the outcomes
    shuffled inside each stratum (``within``) or over all runs. (lo, hi): percentile bootstrap
    over runs resampled the same way (inside each stratum, or over all runs); none when the AUC
    is 0 or 1 (the percentile bootstrap cannot leave it) or fewer than ``MIN_AUC_RUNS`` runs
    stand on either side of the pairs. NaN ``x`` are left out."""
    keep = ~np.isnan(x)
    x, bad = x[keep], bad[keep]
    strata = strata[keep] if within else np.zeros(len(x), int)
    a, n = auc(x, bad, strata)
    if not n:
        return a, n, np.nan, np.nan, np.nan
    cells = _cells(strata)
    mixed = [c for c in cells if 0 < bad[c].sum() < len(c)]
    shuffled = np.zeros((n_boot, len(x)))
    for c in mixed:
        shuffled[:, c] = bad[c][np.argsort(rng.random((n_boot, len(c))), axis=1)]
    null, _den = _weighted_auc(x, strata, shuffled, 1 - shuffled)
    p = (int(np.sum(np.abs(null - 0.5) >= abs(a - 0.5) - 1e-12)) + 1) / (n_boot + 1)
    used = np.concatenate(mixed)
    if a in (0.0, 1.0) or min(bad[used].sum(), (~bad[used]).sum()) < MIN_AUC_RUNS:
        return a, n, np.nan, np.nan, p
    counts = np.zeros((n_boot, len(x)))
    for c in cells:
        counts[:, c] = rng.multinomial(len(c), np.full(len(c), 1 / len(c)), size=n_boot)
    vals, den = _weighted_auc(x, strata, counts * bad, counts * ~bad)
    vals = vals[den > 0]
    if len(vals) < n_boot / 2:  # most resamples lack a pair: no interval
        return a, n, np.nan, np.nan, p
    return a, n, float(np.quantile(vals, (1 - ci) / 2)), float(np.quantile(vals, (1 + ci) / 2)), p


def attn_logit_auc(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = None,
                   fraction: float | None = ATTN_FRACTION, outcome: str = "diverged",
                   by: Sequence[str] | str | None = None, within: str = "lr", steps: pd.DataFrame | None = None,
                   ci: float = 0.9, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Threshold-free: how well does the early attention logit (``attn_logit_at``) separate runs
    with the ``outcome`` from runs without? Per group (``by`` as in ``attn_logit_divergence``):
    ``auc`` over every (with, without) pair, and ``auc_within`` over pairs equal in ``within``
    (the lr) and in every axis ``by`` pools (a pooled stem or fix is held fixed too), each with
    its pairs, a percentile bootstrap interval and a permutation p-value (``_auc_stats``). 0.5:
    no information; > 0.5: runs with the outcome had larger logits. The lr drives both logit and
    outcome, so ``auc`` may be all lr; ``auc_within`` is what the logit tells beyond it. With
    ``steps`` (the steps table), ``loss_auc`` and ``loss_auc_within`` (with ``loss_p_within``):
    the same for the training loss at that step, the baseline the logit should beat."""
    _check_outcome(outcome)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < MIN_BOOT:
        raise ValueError(f"n_boot={n_boot!r}: allowed an integer ≥ {MIN_BOOT} (shuffles and resamples each)")
    at = attn_logit_at(runs, grad_norms, step, fraction, steps=steps)
    cols = ["outcome", "n", "n_outcome", "auc", "auc_lo", "auc_hi", "p", "n_pairs", "auc_within", "auc_within_lo",
            "auc_within_hi", "p_within", "n_pairs_within", "n_ended_before", "step", "at_steps", "strata", "pooled"]
    if steps is not None:
        cols[cols.index("n_ended_before"):cols.index("n_ended_before")] = ["loss_auc", "loss_auc_within",
                                                                          "loss_p_within"]
    if at.empty or _outcome_of(at, outcome):
        return _noted(pd.DataFrame(columns=cols), note(at) or _outcome_of(at, outcome) or "No finished runs.")
    if within not in at.columns:
        raise ValueError(f"within={within!r}: allowed a column of the runs: lr, seed, stem, fix")
    by, pooled = _attn_groups(at, by)
    strata_cols = [within, *[c for c in pooled if c != within]]
    rng = np.random.default_rng(seed)
    rows = []
    for keys, g, seen in _each_group(at, by):
        x, bad = seen["logit_max"].to_numpy(float), seen[outcome].to_numpy(bool)
        s = seen[strata_cols].astype(str).agg("|".join, axis=1).to_numpy()
        a, n_pairs, lo, hi, p = _auc_stats(x, bad, s, False, ci, n_boot, rng)
        aw, n_within, wlo, whi, pw = _auc_stats(x, bad, s, True, ci, n_boot, rng)
        how, at_steps = _where(seen, step, fraction)
        row = keys | {
            "outcome": outcome, "n": len(x), "n_outcome": int(bad.sum()), "auc": a, "auc_lo": lo, "auc_hi": hi,
            "p": p, "n_pairs": n_pairs, "auc_within": aw, "auc_within_lo": wlo, "auc_within_hi": whi,
            "p_within": pw, "n_pairs_within": n_within, "n_ended_before": int(g["ended_before"].sum()),
            "step": how, "at_steps": at_steps, "strata": ",".join(strata_cols), "pooled": ",".join(pooled)}
        if steps is not None:  # runs without a loss at that step are left out (NaN)
            loss = seen["loss_at"].to_numpy(float) if "loss_at" in seen else np.full(len(seen), np.nan)
            lw, _nw, _lo, _hi, lp = _auc_stats(loss, bad, s, True, ci, n_boot, rng)
            row |= {"loss_auc": auc(loss, bad)[0], "loss_auc_within": lw, "loss_p_within": lp}
        rows.append(row)
    return _finish(pd.DataFrame(rows, columns=[*by, *cols]), at)


def _pairs(n: int) -> str:
    return f"{n} pair" + ("" if n == 1 else "s")


def auc_verdict(row: pd.Series | dict, alpha: float = 0.1) -> str:
    """One line for an ``attn_logit_auc`` row: its group (the ``by`` values, and what it pools),
    then the direction (only where the permutation p < ``alpha``, the 90 % intervals' level),
    effect size with its interval, p and n. A group with no run on one side (none, or every
    one, had the outcome) says so and nothing more: there is no pair to compare."""
    what = "were unstable (diverged or collapsed)" if row["outcome"] == "unstable" else "diverged"
    held = ", ".join(str(row.get("strata", "lr")).split(","))
    n, k = int(row["n"]), int(row["n_outcome"])
    early = int(row.get("n_ended_before", 0) or 0)
    before = f" (and {early} diverged before the step, left out)" if early else ""
    group = row_group(row, "outcome")
    if k == 0 or k == n:
        side = (f"no run of the {n} with a logit {what}" if k == 0
                else f"every one of the {n} runs with a logit {what}")
        return f"{group}: {side}{before}: no pair to compare, no AUC."
    parts = []
    for name, a, lo, hi, p, pairs in (
            ("Over all lrs", row["auc"], row["auc_lo"], row["auc_hi"], row["p"], row["n_pairs"]),
            (f"at one {held}", row["auc_within"], row["auc_within_lo"], row["auc_within_hi"], row["p_within"],
             row["n_pairs_within"])):
        if not pairs or np.isnan(a):
            parts.append(f"{name}: no pair")
            continue
        interval = (f"[{lo:.2f}, {hi:.2f}]" if not np.isnan(lo) else "no interval: AUC at its bound"
                    if a in (0.0, 1.0) else "no interval: too few runs")
        says = ("no clear direction" if np.isnan(p) or p >= alpha
                else "the runs that failed had the larger logit" if a > 0.5 else "the runs that failed had the smaller logit")
        pv = "p n/a" if np.isnan(p) else f"p = {p:.2g}"
        parts.append(f"{name} AUC {a:.2f} ({interval}; {pv}; {_pairs(int(pairs))}): {says}")
    text = f"{group}: {k} of {n} runs with a logit {what}{before}. " + "; ".join(parts) + "."
    if "loss_auc" in row and not pd.isna(row["loss_auc"]):
        lw = row.get("loss_auc_within")
        text += (f" The training loss at that step: AUC {row['loss_auc']:.2f} over all lrs"
                 + ("" if pd.isna(lw) else f", {lw:.2f} at one {held} (p = {row['loss_p_within']:.2g})") + ".")
    return text


__all__ = ["ATTN_FRACTION", "METRICS", "MIN_LRS", "OUTCOMES", "THRESHOLDS", "attn_logit_at", "attn_logit_auc",
           "attn_logit_divergence", "auc", "auc_verdict", "group_text", "lr_curves",
           "lr_sensitivity", "lr_sensitivity_per_seed", "newcombe", "note", "row_group", "sensitivity_diff", "sensitivity_verdict",
           "value_text", "wilson"]


def auc_lines(tables: list[pd.DataFrame]) -> list[str]:
    """Bullets of ``attn_logit_auc`` tables: one line per group with a pair to compare
    (``auc_verdict``); the groups without one (no run, or every run, had the outcome) in one line
    per outcome, named (the report and the dashboard print the same)."""
    lines, without = [], {}
    for t in tables:
        if t.empty:
            if note(t):
                lines.append(note(t))
            continue
        for _, r in t.iterrows():
            if 0 < r["n_outcome"] < r["n"]:
                lines.append(auc_verdict(r))
            else:
                side = "no run" if r["n_outcome"] == 0 else "every run"
                keys = list(r.index[:list(r.index).index("outcome")])
                pooled = f" (pooled over {r['pooled'].replace(',', ', ')})" if r["pooled"] else ""
                without.setdefault((r["outcome"], side, pooled), []).append(
                    group_text({k: r[k] for k in keys}))
    for (o, side, pooled), groups in without.items():
        what = "was unstable" if o == "unstable" else "diverged"
        more = f" … ({len(groups)} in all)" if len(groups) > 6 else ""
        lines.append(f"{o}: no AUC in {len(groups)} group(s){pooled}, where {side} with a logit {what} (no pair "
                     f"to compare): {'; '.join(groups[:6])}{more}.")
    return lines
