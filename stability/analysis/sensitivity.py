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
ATTN_STEP = 50  # the default early step of the attention-logit table
ATTN_FRACTION = 0.1  # the report's: "early" as a share of training, the same for any length
MIN_AUC_RUNS = 3  # runs with and without the outcome an AUC interval needs, each
# what "went wrong" means in the attention-logit tables
OUTCOMES = {"diverged": "a non-finite loss, or one above the divergence bound",
            "unstable": "diverged, or collapsed: the final training loss still at chance"}


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
        notes.append(f"{int(no_init.sum())} run(s) without {init} left out.")
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
                         "left out (common_lrs).")
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
            thin.append(" · ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in key)
                        + f" ({len(per_lr)} lr)")
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
        notes.append(f"Left out, fewer than {min_lrs} lrs: {', '.join(thin[:6])}{more}.")
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
    return _noted(out, note(per), "One seed per line: no interval (lo, hi NaN); run several seeds "
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
    """One line: which line is less LR-sensitive, by how much, with the interval and n."""
    lo, hi = row["lo"], row["hi"]
    if pd.isna(lo) or pd.isna(hi):
        side = "no interval (one seed)"
    else:
        side = f"{row['b']} less sensitive" if hi < 0 else f"{row['a']} less sensitive" if lo > 0 \
            else "no clear difference"
    return (f"{side}: LR sensitivity ({row['metric']}) {row['b']} − {row['a']} = {row['diff']:+.3g} "
            f"[{lo:+.3g}, {hi:+.3g}], n = {row['n_b']} vs {row['n_a']} seeds")


def attn_logit_at(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = ATTN_STEP,
                  fraction: float | None = None) -> pd.DataFrame:
    """One row per finished run: its group axes, line, ``seed``, ``lr``, ``diverged``, ``unstable``
    (diverged or collapsed), ``at_step``
    (the first traced step at or after ``step``, or after ``fraction`` of the group's training:
    ``fraction`` × the last traced step of its completed runs) and ``logit_max`` (the max over
    layers of ``attn_logit_max`` there). A run whose trace ends before that step (it diverged
    earlier) has ``ended_before`` True and no logit: nothing can warn of it at that step."""
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
    collapsed = df["collapsed"] if "collapsed" in df.columns else pd.Series(False, index=df.index)
    df["unstable"] = df["diverged"] | collapsed.astype("boolean").fillna(False).astype(bool)
    if fraction is not None:
        ref = df["_last"].where(~df["diverged"])
        total = (ref.groupby([df[a] for a in axes], dropna=False).transform("max") if axes
                 else pd.Series(ref.max(), index=df.index))
        df["_at"] = np.ceil(fraction * total.fillna(df["_last"]))
    else:
        df["_at"] = float(step or 0)
    merged = per_step.merge(df[[*join, "_at"]], on=join)
    first = merged[merged["step"] >= merged["_at"]].sort_values("step").groupby(join, observed=True).head(1)
    df = df.merge(first[[*join, "step", "attn_logit_max"]].rename(
        columns={"step": "at_step", "attn_logit_max": "logit_max"}), on=join, how="left")
    df["ended_before"] = df["logit_max"].isna() & (df["diverged"] | df["_last"].notna())
    keep = [*[c for c in ("sweep", "run_id") if c in df.columns], *[a for a in axes if a != "sweep"], *cols]
    out = df[keep].reset_index(drop=True)
    untraced = df["_last"].isna()
    return _noted(out, f"{int(untraced.sum())} run(s) have no attention-logit trace." if untraced.any() else "")


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


def _attn_groups(at: pd.DataFrame, by: Sequence[str] | None) -> tuple[list[str], str]:
    """The grouping of an attention table (default: every group axis and the line, nothing pooled)
    and the axes an explicit ``by`` pools (those that vary)."""
    axes = [c for c in list(at.columns)[:list(at.columns).index("stem")] if c != "run_id"]
    by = list([*axes, *SERIES] if by is None else by)
    return by, ",".join(c for c in [*axes, *SERIES] if c not in by and at[c].nunique(dropna=False) > 1)


def _where(step: int | None, fraction: float | None) -> str:
    return (f"first traced step ≥ {int(step or 0)}" if fraction is None
            else f"first traced step ≥ {fraction:g} of training")


def attn_logit_divergence(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = ATTN_STEP,
                          fraction: float | None = None, thresholds: Sequence[float] = THRESHOLDS,
                          by: Sequence[str] | None = None, ci: float = 0.9,
                          outcome: str = "diverged") -> pd.DataFrame:
    """Does a large attention logit early on predict divergence? Per group (``by``: default every
    group axis and the line, nothing pooled; ``pooled`` names what an explicit ``by`` pools) and
    threshold t: among runs whose ``logit_max`` (``attn_logit_at``) is above t, ``n_above``,
    ``div_above`` of them had the ``outcome`` (``OUTCOMES``), ``frac_above`` with its Wilson
    interval; the same below (at or under t); ``diff`` = frac_above − frac_below (> 0: a large
    logit goes with the outcome) with Newcombe's interval; ``n_ended_before``: runs whose trace
    ended before the step, as a run that diverged earlier (left out: no warning at that step comes
    in time)."""
    _check_outcome(outcome)
    at = attn_logit_at(runs, grad_norms, step, fraction)
    cols = ["outcome", "threshold", "n", "n_above", "div_above", "frac_above", "frac_above_lo", "frac_above_hi",
            "n_below", "div_below", "frac_below", "frac_below_lo", "frac_below_hi", "diff", "diff_lo", "diff_hi",
            "n_ended_before", "step", "pooled"]
    if at.empty:
        return _noted(pd.DataFrame(columns=cols), note(at) or "No finished runs.")
    by, pooled_axes = _attn_groups(at, by)
    rows = []
    for key, g in (at.groupby(by, observed=True, dropna=False, sort=True) if by else [((), at)]):
        key = key if isinstance(key, tuple) else (key,)
        seen = g[g["logit_max"].notna()]
        x, div = seen["logit_max"].to_numpy(float), seen[outcome].to_numpy(bool)
        for t in thresholds:
            up = x > t
            ka, na, kb, nb = int(div[up].sum()), int(up.sum()), int(div[~up].sum()), int((~up).sum())
            fa, fb = (ka / na if na else np.nan), (kb / nb if nb else np.nan)
            (la, ha), (lb, hb), (ld, hd) = wilson(ka, na, ci), wilson(kb, nb, ci), newcombe(ka, na, kb, nb, ci)
            rows.append(dict(zip(by, key, strict=True)) | {
                "outcome": outcome, "threshold": float(t), "n": len(x), "n_above": na, "div_above": ka,
                "frac_above": fa, "frac_above_lo": la, "frac_above_hi": ha, "n_below": nb, "div_below": kb,
                "frac_below": fb, "frac_below_lo": lb, "frac_below_hi": hb, "diff": fa - fb, "diff_lo": ld,
                "diff_hi": hd, "n_ended_before": int(g["ended_before"].sum()), "step": _where(step, fraction),
                "pooled": pooled_axes})
    out = pd.DataFrame(rows, columns=[*by, *cols])
    if out["n"].eq(0).all():
        return _noted(out.iloc[:0], note(at), _NO_LOGIT)
    return _noted(out, note(at))


_NO_LOGIT = ("No run has an attention logit at or after that step: their traces end before it (choose an "
             "earlier step, or fraction=).")


def auc(x: np.ndarray, bad: np.ndarray, strata: np.ndarray | None = None) -> tuple[float, int]:
    """(AUC, pairs): the probability that a run with the outcome has the larger ``x`` than one
    without (ties count half; Mann-Whitney), over all such pairs, or over pairs in one stratum
    only when ``strata`` is given. NaN without a pair."""
    x, bad = np.asarray(x, float), np.asarray(bad, bool)
    xb, xg = x[bad][:, None], x[~bad][None, :]
    wins = (xb > xg) + 0.5 * (xb == xg)
    if strata is not None:
        s = np.asarray(strata)
        same = s[bad][:, None] == s[~bad][None, :]
        n = int(same.sum())
        return (float(wins[same].mean()) if n else np.nan), n
    return (float(wins.mean()) if wins.size else np.nan), int(wins.size)


def _boot_auc(x: np.ndarray, bad: np.ndarray, strata: np.ndarray, within: bool, ci: float, n_boot: int,
              rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the AUC over runs resampled inside each stratum (the lr mix stays);
    none with fewer than ``MIN_AUC_RUNS`` runs on either side of the pairs (a resample of two
    runs gives a degenerate interval)."""
    groups = [np.flatnonzero(strata == v) for v in np.unique(strata)]
    counted = np.concatenate([g for g in groups if 0 < bad[g].sum() < len(g)] or [np.array([], int)]) \
        if within else np.arange(len(x))
    if min(bad[counted].sum(), (~bad[counted]).sum()) < MIN_AUC_RUNS:
        return np.nan, np.nan
    vals = []
    for _ in range(n_boot):
        i = np.concatenate([rng.choice(g, len(g)) for g in groups])
        v, _n = auc(x[i], bad[i], strata[i] if within else None)
        if not np.isnan(v):
            vals.append(v)
    if len(vals) < n_boot / 2:  # most resamples lack a pair: no interval
        return np.nan, np.nan
    return float(np.quantile(vals, (1 - ci) / 2)), float(np.quantile(vals, (1 + ci) / 2))


def attn_logit_auc(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = ATTN_STEP,
                   fraction: float | None = None, outcome: str = "diverged", by: Sequence[str] | None = None,
                   within: str = "lr", ci: float = 0.9, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Threshold-free: how well does the early attention logit (``attn_logit_at``) separate runs
    with the ``outcome`` from runs without? Per group (``by`` as in ``attn_logit_divergence``):
    ``auc`` over every (with, without) pair, and ``auc_within`` over pairs with the same ``within``
    value (the lr) only, each with its pairs and a percentile bootstrap interval over runs
    resampled inside each lr. 0.5: no information; > 0.5: a larger logit goes with the outcome. The
    lr drives both logit and outcome, so ``auc`` may be all lr; ``auc_within`` is what the logit
    tells beyond it."""
    _check_outcome(outcome)
    at = attn_logit_at(runs, grad_norms, step, fraction)
    cols = ["outcome", "n", "n_outcome", "auc", "auc_lo", "auc_hi", "n_pairs", "auc_within", "auc_within_lo",
            "auc_within_hi", "n_pairs_within", "n_ended_before", "step", "pooled"]
    if at.empty:
        return _noted(pd.DataFrame(columns=cols), note(at) or "No finished runs.")
    by, pooled_axes = _attn_groups(at, by)
    rng = np.random.default_rng(seed)
    rows = []
    for key, g in (at.groupby(by, observed=True, dropna=False, sort=True) if by else [((), at)]):
        key = key if isinstance(key, tuple) else (key,)
        seen = g[g["logit_max"].notna()]
        x, bad, s = (seen["logit_max"].to_numpy(float), seen[outcome].to_numpy(bool),
                     seen[within].to_numpy())
        a, n_pairs = auc(x, bad)
        aw, n_within = auc(x, bad, s)
        lo, hi = _boot_auc(x, bad, s, False, ci, n_boot, rng) if n_pairs else (np.nan, np.nan)
        wlo, whi = _boot_auc(x, bad, s, True, ci, n_boot, rng) if n_within else (np.nan, np.nan)
        rows.append(dict(zip(by, key, strict=True)) | {
            "outcome": outcome, "n": len(x), "n_outcome": int(bad.sum()), "auc": a, "auc_lo": lo, "auc_hi": hi,
            "n_pairs": n_pairs, "auc_within": aw, "auc_within_lo": wlo, "auc_within_hi": whi,
            "n_pairs_within": n_within, "n_ended_before": int(g["ended_before"].sum()),
            "step": _where(step, fraction), "pooled": pooled_axes})
    out = pd.DataFrame(rows, columns=[*by, *cols])
    if out["n"].eq(0).all():
        return _noted(out.iloc[:0], note(at), _NO_LOGIT)
    return _noted(out, note(at))


def auc_verdict(row: pd.Series | dict) -> str:
    """One line for an ``attn_logit_auc`` row: direction, effect size with its interval, n."""
    what = "diverged" if row["outcome"] == "diverged" else "were unstable (diverged or collapsed)"
    parts = []
    for name, a, lo, hi, n in (("over all lrs", row["auc"], row["auc_lo"], row["auc_hi"], row["n_pairs"]),
                               ("at one lr", row["auc_within"], row["auc_within_lo"], row["auc_within_hi"],
                                row["n_pairs_within"])):
        if not n or np.isnan(a):
            parts.append(f"{name}: no pair")
            continue
        interval = "no interval" if np.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"
        if not np.isnan(lo) and lo > 0.5:
            says = "larger logit, more often"
        elif not np.isnan(hi) and hi < 0.5:
            says = "larger logit, less often"
        else:
            says = "no clear direction"
        parts.append(f"{name} AUC {a:.2f} {interval} ({says}; {n} pairs)")
    return (f"{row['n_outcome']} of {row['n']} runs {what}: " + "; ".join(parts) + ".")


__all__ = ["ATTN_FRACTION", "ATTN_STEP", "METRICS", "MIN_LRS", "OUTCOMES", "THRESHOLDS", "attn_logit_at", "attn_logit_auc",
           "attn_logit_divergence", "auc", "auc_verdict", "lr_curves",
           "lr_sensitivity", "lr_sensitivity_per_seed", "newcombe", "note", "sensitivity_diff", "sensitivity_verdict",
           "wilson"]
