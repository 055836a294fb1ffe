"""The attention-logit study of Wortsman et al. 2023 (pure pandas; statistics from ``stats``).

"Small-scale proxies for large-scale Transformer training instabilities" (arXiv 2309.14322),
§3.3: does the max attention logit q·k/√d_h at an early step predict divergence? Per run, the max
over layers of ``attn_logit_max`` at the first traced step at or after a given step
(``attn_logit_at``); then the fraction of runs with the outcome among those above a threshold vs
those below, each with its n and a Wilson interval, and the difference with Newcombe's interval
(``attn_logit_divergence``); and, threshold-free, the AUC of that logit for the outcome over all
runs and over pairs at one lr only (``attn_logit_auc``: high lr brings both large logits and
divergence, so only the within-lr AUC says whether the logit tells more than the lr). The
outcome (``OUTCOMES``) is ``diverged`` or ``unstable``: diverged or collapsed (never left
chance), the small-model instability of Wortsman et al., whose high-lr runs end at a loss near
ℓ₀ rather than a non-finite one.

Pruned runs (stopped early by the run's pruner as doomed) are left out of every table here, and
counted in the note: whether one would have diverged is unknown, and calling it unstable would
take the pruner's own early-signal prediction as the outcome an early signal is scored against.

Groups are those of the LR-sensitivity study (``sensitivity``): runs equal in everything but lr
and seed, one line per (stem, fix). Every function returns a ``tables.Table`` (rows, ``by``, a
``note``); results written before the logits were traced give an empty table whose note says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..store import DONE, RunStatus
from .grouping import fixed_axes, require, strata_groups
from .stats import auc, auc_test, holm, newcombe, wilson
from .tables import (
    SERIES,
    Table,
    group_columns,
    group_text,
    groups_of,
    missing_columns,
    naming_columns,
    noted,
    older_results,
    row_group,
)

# Thresholds of the attention-logit table: fixed in advance (never chosen on the data they
# judge), from ~2x the logits of an initialised vit_tiny (2.1-2.5, measured: docs/methodology.md)
# to Wortsman's 1e4 at large scale.
THRESHOLDS = (5.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4)
ATTN_FRACTION = 0.1  # "early": the first traced step after 10% of the group's training, for any length
MIN_BOOT = 100  # fewer shuffles cannot give a p-value below 0.01 nor a stable 90% interval
# what "went wrong" means in the attention-logit tables
OUTCOMES = {"diverged": "a non-finite loss, or one above the divergence bound",
            "unstable": "diverged, or collapsed by the trainer's loss flag: the final training loss still "
                        "≥ 0.9 ln(classes) (at high lr an instability; at low lr it can be learning too slowly "
                        "for the schedule). Looser than the findings' \"at chance\" (error ≥ 0.9 × the error at "
                        "init): a run can learn to 60 % error and still trip it"}


def _check_early(step: int | None, fraction: float | None) -> None:
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step={step!r}: allowed an integer ≥ 0, or None (then fraction)")
    elif fraction is None or not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: allowed 0 < fraction ≤ 1 (or give step)")


def attn_logit_at(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = None,
                  fraction: float | None = ATTN_FRACTION, steps: pd.DataFrame | None = None) -> Table:
    """The max attention logit of every finished run at an early step.

    Args:
        runs: the runs table.
        grad_norms: the grad_norms table (its ``attn_logit_max`` per run, step and layer).
        step: the first traced step at or after it is read; None: after ``fraction`` of the
            group's training (``fraction`` × the last traced step of its completed runs).
        fraction: see ``step``.
        steps: the steps table: adds ``loss_at``, the training loss at that step (a baseline
            predictor).

    Returns:
        A ``Table``, one row per run: its group axes (``by``), line, ``seed``, ``lr``,
        ``diverged``, ``unstable`` (diverged or collapsed; null where the runs table has no
        ``collapsed``), ``at_step`` and ``logit_max`` (the max over layers there). A diverged
        run without a logit there has ``ended_before`` True: nothing can warn of it at that step
        (it diverged before the step or before the next traced step, or was not traced). A
        completed run not traced that far has no logit either (said in the note). Pruned runs
        are left out (their outcome is unknown), counted in the note.
    """
    _check_early(step, fraction)
    cols = ["stem", "fix", "seed", "lr", "diverged", "unstable", "at_step", "logit_max", "ended_before"]
    require(runs, ["status"], "runs")
    if not len(runs):
        return noted(pd.DataFrame(columns=cols), (), "No runs.")
    miss = missing_columns(runs, ["run_id", "status", "lr"]) + missing_columns(grad_norms, ["run_id", "step", "attn_logit_max"])
    if miss:
        return noted(pd.DataFrame(columns=cols), (), older_results(miss, "the attention-logit table"))
    done = runs[runs["status"].isin(DONE)]
    cut = done["status"].eq(RunStatus.PRUNED)
    df, axes = fixed_axes(done[~cut], SERIES)
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
    if steps is not None and not missing_columns(steps, ["run_id", "step", "loss"]):
        sj = [c for c in join if c in steps.columns]
        loss = steps[[*sj, "step", "loss"]].rename(columns={"step": "at_step", "loss": "loss_at"})
        df = df.merge(loss.drop_duplicates([*sj, "at_step"]), on=[*sj, "at_step"], how="left")
        cols.append("loss_at")
    keep = [*[c for c in ("sweep", "run_id") if c in df.columns], *[a for a in axes if a != "sweep"], *cols]
    out = df[keep].reset_index(drop=True)
    untraced = df["_last"].isna()
    short = df["logit_max"].isna() & ~df["diverged"] & ~untraced
    return noted(out, group_columns(df, axes),
                 f"{int(cut.sum())} pruned run(s) left out: stopped early by their pruner, so whether they "
                 "would have diverged or collapsed is unknown (and the pruner's verdict, itself from early "
                 "signals, cannot be the outcome an early signal is scored against)." if cut.any() else "",
                 f"{int(untraced.sum())} run(s) have no attention-logit trace "
                 f"({groups_of(df[untraced], naming_columns(df, axes))})." if untraced.any() else "",
                 f"{int(short.sum())} completed run(s) were not traced that far "
                 f"({groups_of(df[short], naming_columns(df, axes))})." if short.any() else "")


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome={outcome!r}: allowed {', '.join(OUTCOMES)}")


def _attn_groups(res: Table, by: Sequence[str] | str | None) -> tuple[list[str], list[str]]:
    """The grouping of an attention table (default: every group axis and the line, nothing pooled)
    and the axes an explicit ``by`` pools (those that vary)."""
    at, axes = res.table, list(res.by)
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
                          outcome: str = "diverged") -> Table:
    """Does a large attention logit early on predict divergence?

    Args:
        runs, grad_norms, step, fraction: as ``attn_logit_at``.
        thresholds: of the logit, fixed in advance (``THRESHOLDS``).
        by: the grouping; default every group axis and the line, nothing pooled.
        ci: of the Wilson and Newcombe intervals.
        outcome: a key of ``OUTCOMES``.

    Returns:
        A ``Table`` (``by``: the grouping), one row per group and threshold t: among runs whose
        ``logit_max`` is above t, ``n_above``, ``out_above`` of them had the ``outcome``,
        ``frac_above`` with its Wilson interval; the same below (at or under t); ``diff`` =
        frac_above − frac_below (> 0: a large logit goes with the outcome) with Newcombe's
        interval; ``n_ended_before``: runs that diverged before the step (left out: no warning
        at that step comes in time); ``pooled``: what an explicit ``by`` pools.
    """
    _check_outcome(outcome)
    res = attn_logit_at(runs, grad_norms, step, fraction)
    at = res.table
    cols = ["outcome", "threshold", "n", "n_above", "out_above", "frac_above", "frac_above_lo", "frac_above_hi",
            "n_below", "out_below", "frac_below", "frac_below_lo", "frac_below_hi", "diff", "diff_lo", "diff_hi",
            "n_ended_before", "step", "at_steps", "pooled"]
    if at.empty or _outcome_of(at, outcome):
        return noted(pd.DataFrame(columns=cols), (), res.note or _outcome_of(at, outcome) or "No finished runs.")
    by, pooled = _attn_groups(res, by)
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
    return _finish(pd.DataFrame(rows, columns=[*by, *cols]), by, res)


def _each_group(at: pd.DataFrame, by: list[str]):
    """(the group's ``by`` values, its runs, those of them with a logit) per group."""
    for key, g in strata_groups(at, by):
        yield dict(zip(by, key, strict=True)), g, g[g["logit_max"].notna()]


def _finish(out: pd.DataFrame, by: Sequence[str], at: Table, *notes: str) -> Table:
    """An attention table with the note of its runs (and ``notes``); empty, saying why, when no
    run had a logit."""
    if out["n"].eq(0).all():
        return noted(out.iloc[:0], by, at.note, "No run has an attention logit at or after that step: their traces "
                     "end before it (choose an earlier step, or fraction=).")
    return noted(out, by, at.note, *notes)


def attn_logit_auc(runs: pd.DataFrame, grad_norms: pd.DataFrame, step: int | None = None,
                   fraction: float | None = ATTN_FRACTION, outcome: str = "diverged",
                   by: Sequence[str] | str | None = None, within: str = "lr", steps: pd.DataFrame | None = None,
                   ci: float = 0.9, n_boot: int = 2000, seed: int = 0) -> Table:
    """Threshold-free: how well does the early attention logit separate runs with the outcome
    from runs without?

    Args:
        runs, grad_norms, step, fraction: as ``attn_logit_at``.
        outcome: a key of ``OUTCOMES``.
        by: the grouping, as ``attn_logit_divergence``.
        within: the column pairs are held equal in for ``auc_within`` (the lr), with every axis
            ``by`` pools (a pooled stem or fix is held fixed too).
        steps: the steps table: adds ``loss_auc``, ``loss_auc_within`` and ``loss_p_within``,
            the same for the training loss at that step (the baseline the logit should beat).
        ci, n_boot, seed: of the bootstrap intervals and permutation p-values (``stats.auc_test``).

    Returns:
        A ``Table`` (``by``: the grouping), one row per group: ``auc`` over every (with, without)
        pair and ``auc_within`` over pairs equal in ``within``, each with its pairs, interval and
        p. 0.5: no information; > 0.5: runs with the outcome had larger logits. The lr drives
        both logit and outcome, so ``auc`` may be all lr; ``auc_within`` is what the logit tells
        beyond it.
    """
    _check_outcome(outcome)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < MIN_BOOT:
        raise ValueError(f"n_boot={n_boot!r}: allowed an integer ≥ {MIN_BOOT} (shuffles and resamples each)")
    res = attn_logit_at(runs, grad_norms, step, fraction, steps=steps)
    at = res.table
    cols = ["outcome", "n", "n_outcome", "auc", "auc_lo", "auc_hi", "p", "n_pairs", "auc_within", "auc_within_lo",
            "auc_within_hi", "p_within", "n_pairs_within", "n_ended_before", "step", "at_steps", "strata", "pooled"]
    if steps is not None:
        cols[cols.index("n_ended_before"):cols.index("n_ended_before")] = ["loss_auc", "loss_auc_within",
                                                                          "loss_p_within"]
    if at.empty or _outcome_of(at, outcome):
        return noted(pd.DataFrame(columns=cols), (), res.note or _outcome_of(at, outcome) or "No finished runs.")
    if within not in at.columns:
        raise ValueError(f"within={within!r}: allowed a column of the runs: lr, seed, stem, fix")
    by, pooled = _attn_groups(res, by)
    strata_cols = [within, *[c for c in pooled if c != within]]
    rng = np.random.default_rng(seed)
    rows = []
    for keys, g, seen in _each_group(at, by):
        x, bad = seen["logit_max"].to_numpy(float), seen[outcome].to_numpy(bool)
        s = seen[strata_cols].map(str).agg("|".join, axis=1).to_numpy()  # map: a missing value is text too
        a, n_pairs, lo, hi, p = auc_test(x, bad, s, False, ci, n_boot, rng)
        aw, n_within, wlo, whi, pw = auc_test(x, bad, s, True, ci, n_boot, rng)
        how, at_steps = _where(seen, step, fraction)
        row = keys | {
            "outcome": outcome, "n": len(x), "n_outcome": int(bad.sum()), "auc": a, "auc_lo": lo, "auc_hi": hi,
            "p": p, "n_pairs": n_pairs, "auc_within": aw, "auc_within_lo": wlo, "auc_within_hi": whi,
            "p_within": pw, "n_pairs_within": n_within, "n_ended_before": int(g["ended_before"].sum()),
            "step": how, "at_steps": at_steps, "strata": ",".join(strata_cols), "pooled": ",".join(pooled)}
        if steps is not None:  # runs without a loss at that step are left out (NaN)
            loss = seen["loss_at"].to_numpy(float) if "loss_at" in seen else np.full(len(seen), np.nan)
            lw, _nw, _lo, _hi, lp = auc_test(loss, bad, s, True, ci, n_boot, rng)
            row |= {"loss_auc": auc(loss, bad)[0], "loss_auc_within": lw, "loss_p_within": lp}
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*by, *cols])
    why = ""
    if len(out) and out["n_pairs"].eq(0).all():  # no AUC is defined: say why, not an empty note
        pools = " (an lr × wd sweep gives each run its own wd: by= without wd pools it)" if "wd" in by else ""
        why = (f"No group has runs both with and without the outcome ({outcome}), so every AUC is undefined: "
               f"{int(out['n'].gt(0).sum())} group(s) split by {', '.join(by)}{pools}.")
    return _finish(out, by, res, why)


def _pairs(n: int) -> str:
    return f"{n} pair" + ("" if n == 1 else "s")


def auc_verdict(row: pd.Series | dict, by: Sequence[str], alpha: float = 0.1) -> str:
    """One line for an ``attn_logit_auc`` row.

    Args:
        row: a row of ``attn_logit_auc(...).table``.
        by: that table's ``by``.
        alpha: the level a direction is named at (the 90 % intervals' level).

    Returns:
        Its group (the ``by`` values, and what it pools), then the direction (only where the
        permutation p, Holm-adjusted over its family, is at most ``alpha``), effect size with its
        interval, p and n. The family is what ``auc_lines`` prints together (``p_holm``,
        ``p_within_holm``, ``family`` on the row), else the row's own two tests. A group with no
        run on one side (none, or every one, had the outcome) says so and nothing more: there is
        no pair to compare.
    """
    what = "were unstable (diverged or collapsed)" if row["outcome"] == "unstable" else "diverged"
    held = ", ".join(str(row.get("strata", "lr")).split(","))
    n, k = int(row["n"]), int(row["n_outcome"])
    early = int(row.get("n_ended_before", 0) or 0)
    before = f" (and {early} diverged before the step, left out)" if early else ""
    group = row_group(row, by)
    if k == 0 or k == n:
        side = (f"no run of the {n} with a logit {what}" if k == 0
                else f"every one of the {n} runs with a logit {what}")
        return f"{group}: {side}{before}: no pair to compare, no AUC."
    if "p_holm" in row:
        adjusted, m = (row["p_holm"], row["p_within_holm"]), int(row["family"])
    else:
        adjusted = tuple(holm([row["p"], row["p_within"]]))
        m = int(np.isfinite([row["p"], row["p_within"]]).sum())
    parts = []
    for name, a, lo, hi, p, adj, pairs in (
            ("Over all lrs", row["auc"], row["auc_lo"], row["auc_hi"], row["p"], adjusted[0], row["n_pairs"]),
            (f"at one {held}", row["auc_within"], row["auc_within_lo"], row["auc_within_hi"], row["p_within"],
             adjusted[1], row["n_pairs_within"])):
        if not pairs or np.isnan(a):
            parts.append(f"{name}: no pair")
            continue
        interval = (f"[{lo:.2f}, {hi:.2f}]" if not np.isnan(lo) else "no interval: AUC at its bound"
                    if a in (0.0, 1.0) else "no interval: too few runs")
        says = ("no clear direction" if np.isnan(adj) or adj > alpha
                else "the runs that failed had the larger logit" if a > 0.5 else "the runs that failed had the smaller logit")
        pv = "p n/a" if np.isnan(p) else f"p = {p:.2g}, Holm {adj:.2g} over {m}"
        parts.append(f"{name} AUC {a:.2f} ({interval}; {pv}; {_pairs(int(pairs))}): {says}")
    text = f"{group}: {k} of {n} runs with a logit {what}{before}. " + "; ".join(parts) + "."
    if "loss_auc" in row and not pd.isna(row["loss_auc"]):
        lw = row.get("loss_auc_within")
        text += (f" The training loss at that step: AUC {row['loss_auc']:.2f} over all lrs"
                 + ("" if pd.isna(lw) else f", {lw:.2f} at one {held} (p = {row['loss_p_within']:.2g})") + ".")
    return text


def auc_lines(tables: Sequence[Table]) -> list[str]:
    """Bullets of ``attn_logit_auc`` tables (the report and the dashboard print the same).

    Args:
        tables: ``attn_logit_auc`` results.

    Returns:
        One line per group with a pair to compare (``auc_verdict``); the groups without one (no
        run, or every run, had the outcome) in one line per outcome, named; an empty table's note.
    """
    lines, without = [], {}
    tested: list[tuple[pd.Series, Sequence[str]]] = []
    order: list[int | str] = []  # a note, or the index of a tested row: the lines' order
    for t in tables:
        if t.table.empty:
            if t.note:
                order.append(t.note)
            continue
        for _, r in t.table.iterrows():
            if 0 < r["n_outcome"] < r["n"]:
                order.append(len(tested))
                tested.append((r, t.by))
            else:
                side = "no run" if r["n_outcome"] == 0 else "every run"
                pooled = f" (pooled over {r['pooled'].replace(',', ', ')})" if r["pooled"] else ""
                without.setdefault((r["outcome"], side, pooled), []).append(
                    group_text({k: r[k] for k in t.by}))
    # one family: every test the lines print (both AUCs of each group, every outcome), Holm-adjusted
    adj = holm([p for r, _ in tested for p in (r["p"], r["p_within"])])
    family = int(np.isfinite(adj).sum())
    for item in order:
        if isinstance(item, str):
            lines.append(item)
            continue
        r, by = tested[item]
        row = {**r.to_dict(), "p_holm": adj[2 * item], "p_within_holm": adj[2 * item + 1], "family": family}
        lines.append(auc_verdict(row, by))
    for (o, side, pooled), groups in without.items():
        what = "was unstable" if o == "unstable" else "diverged"
        more = f" … ({len(groups)} in all)" if len(groups) > 6 else ""
        lines.append(f"{o}: no AUC in {len(groups)} group(s){pooled}, where {side} with a logit {what} (no pair "
                     f"to compare): {'; '.join(groups[:6])}{more}.")
    return lines


__all__ = ["ATTN_FRACTION", "MIN_BOOT", "OUTCOMES", "THRESHOLDS", "attn_logit_at", "attn_logit_auc",
           "attn_logit_divergence", "auc_lines", "auc_verdict"]
