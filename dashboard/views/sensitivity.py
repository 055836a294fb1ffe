"""LR sensitivity (Wortsman et al. 2023): final validation loss or error vs lr per group, one line
per stem and fix with diverged (and pruned) runs at the value at init; the sensitivity per line with its
interval over seeds and the signed differences; does a large attention logit early in training
go with divergence?"""

import math

import streamlit as st

from stability import analysis, plots, store
from stability.analysis.attention import ATTN_FRACTION, OUTCOMES, THRESHOLDS
from stability.analysis.sensitivity import MIN_LRS
from stability.dashboard.common import (
    control,
    load_attention,
    md,
    root,
    selected_runs,
    table,
    with_run_columns,
)

COLUMNS = ["config_json", "final_val_loss", "init_val_loss", "init_top1_err"]


@st.cache_data(show_spinner=False, max_entries=16)
def _sensitivity(runs, metric: str, common_lrs: bool, pool: tuple[str, ...]):
    return (analysis.lr_curves(runs, metric, common_lrs=common_lrs, pool=pool, min_lrs=MIN_LRS),
            analysis.lr_sensitivity(runs, metric, common_lrs=common_lrs, pool=pool),
            [analysis.sensitivity_diff(runs, axis, metric, common_lrs=common_lrs, pool=pool)
             for axis in ("stem", "fix")])


@st.cache_data(show_spinner=False, max_entries=16)
def _group_axes(runs) -> list[str]:
    return analysis.fixed_axes(runs)[1]


@st.cache_data(show_spinner=False, max_entries=16)
def _attention(runs, gn, step: int, outcome: str, pool_lines: bool, pool: tuple[str, ...]):
    at = analysis.attn_logit_at(runs, gn, step=step)
    by = None
    if (pool_lines or pool) and not at.table.empty:  # what is pooled is named in the table's `pooled`
        axes = [c for c in at.by if c not in pool]
        by = axes + ([] if pool_lines else ["stem", "fix"])
    return (at, analysis.attn_logit_divergence(runs, gn, step=step, by=by, outcome=outcome),
            analysis.attn_logit_auc(runs, gn, step=step, by=by, outcome=outcome, n_boot=1000))


def _say(res) -> None:
    if res.note:
        st.info(md(res.note))


st.title("LR sensitivity")
runs = selected_runs()
if runs is not None:
    runs = with_run_columns(runs, COLUMNS)
    c1, c2 = st.columns([2, 1])
    with c1:
        value = control(st.radio, "value", ["validation loss", "top-1 error"], key="p_sens_metric",
                        default="validation loss", horizontal=True,
                        help="ℓ: the final validation cross-entropy (no label smoothing) or top-1 error; "
                             "ℓ₀: the same of the model at step 0")
    with c2:
        common_lrs = control(st.toggle, "only lrs every line ran", key="p_sens_common", default=True,
                             help="Compare stems and fixes over one lr range (off: each line over its own lrs)")
    metric = "loss" if value.startswith("validation") else "top1_err"
    axes = _group_axes(runs)
    pool = control(st.multiselect, "pool on purpose", axes, key="p_sens_pool_axes", default=[],
                   help="Group axes to pool (e.g. wd in an lr × wd sweep, where every lr has its own wd); "
                        "off: a group is runs equal in everything but lr and seed") if axes else []
    curves, sens, diffs = _sensitivity(runs, metric, common_lrs, tuple(pool))
    if curves.table.empty:
        if "wd" in axes and "wd" not in pool and not _sensitivity(runs, metric, common_lrs, (*pool, "wd"))[0].table.empty:
            # the common case (an lr × wd sweep gives each lr its own wd), said before the list of what was left out
            st.info("No group has 3 lrs at one wd, but pooled over wd they do: choose wd in \"pool on purpose\" "
                    "above to read the sensitivity over the sweep's wds (said as pooled in every table).")
        _say(sens if sens.note else curves)
    else:
        st.plotly_chart(plots.lr_curve_figure(curves, metric), width="stretch", key="sens_curves")
        pooled = ", ".join(curves.pooled)
        st.caption("One panel per group (runs equal in everything but lr and seed: sweeps, optimizers, "
                   "lengths, wd … never mixed), one line per stem / fix (dash: fix), the mean over seeds of "
                   "min(ℓ, ℓ₀); × a diverged or pruned run (or a non-finite loss), counted at ℓ₀; dotted: ℓ₀."
                   + (f" **Pooled here: {pooled}.**" if pooled else " Nothing is pooled."))
        st.subheader("LR sensitivity per stem and fix")
        _say(sens)
        if not sens.table.empty:
            st.plotly_chart(plots.lr_sensitivity_figure(sens), width="stretch", key="sens_bars")
            for line in analysis.sensitivity_lines(diffs):  # one Holm family: stems and fixes shown together
                st.markdown(f"- {md(line)}")
            table(sens.table, key="sens_table")
            st.caption("sensitivity = E over the lrs of min(ℓ(η), ℓ₀) − ℓ*, ℓ* the best of the range, per "
                       "seed; then the mean over seeds with a 90% bootstrap interval over seeds (lo, hi; none "
                       "with one seed). Lower: less sensitive to the lr. Differences are b − a (fix: a is "
                       "\"none\"), paired over seeds where both lines ran the same ones.")

    st.subheader("Does a large attention logit early in training go with divergence?")
    ids = tuple(sorted(runs.run_id.unique()))
    where = root()
    gn = load_attention(str(where), ids, store.signature(where, "grad_norms"))
    gn = gn[gn.sweep.isin(runs.sweep.unique())] if len(gn) else gn
    traced = gn.loc[gn["attn_logit_max"].notna(), "step"] if "attn_logit_max" in gn else gn.iloc[:0]
    if traced.empty:
        st.info(analysis.attn_logit_divergence(runs, gn).note)
    else:
        top = max(1, int(traced.max()))
        c1, c2, c3 = st.columns([2, 1, 1])
        with c1:
            step = control(st.slider, "at the first traced step at or after", 0, top, key="p_sens_step",
                           default=min(top, math.ceil(ATTN_FRACTION * top)))
        with c2:
            outcome = control(st.radio, "outcome", list(OUTCOMES), key="p_sens_outcome", default="diverged",
                              help="; ".join(f"{k}: {v}" for k, v in OUTCOMES.items()))
        with c3:
            pool_lines = control(st.toggle, "pool stems and fixes", key="p_sens_pool", default=False,
                                 help="One table per group over every stem and fix (off: nothing pooled "
                                      "but the axes chosen to pool above)")
        at, res, auc_res = _attention(runs, gn, int(step), outcome, pool_lines, tuple(pool))
        st.plotly_chart(plots.attn_logit_figure(at, THRESHOLDS), width="stretch", key="sens_attn")
        _say(res)
        for line in analysis.auc_lines([auc_res]):
            st.markdown(f"- {md(line)}")
        tab, aucs = res.table, auc_res.table
        aucs = aucs[(aucs["n_outcome"] > 0) & (aucs["n_outcome"] < aucs["n"])] if not aucs.empty else aucs
        if not aucs.empty:
            table(aucs, key="sens_auc_table")
            st.caption("AUC: the chance that a run with the outcome had the larger logit than one without (0.5: "
                       "no information), over all pairs and over pairs at one lr only (auc_within), with 90% "
                       "bootstrap intervals over runs (none with under 3 runs on a side). The lr raises both "
                       "logit and failure: only auc_within says whether the logit tells more than the lr.")
        split = tab[(tab["n_above"] > 0) & (tab["n_below"] > 0)] if not tab.empty else tab
        if len(split) < len(tab):
            st.caption(f"{len(tab) - len(split)} of {len(tab)} (group, threshold) rows hidden: every run of the "
                       "group on one side of the threshold, so there is nothing to compare.")
        if not split.empty:
            table(split, key="sens_attn_table")
            st.caption("Max over layers, heads and tokens of q·k/√d_h at that step. Per threshold: runs above "
                       "it and at or below it, how many of each had the outcome (fraction with a 90% Wilson interval), "
                       "and diff = above − below (> 0: a large logit goes with the outcome) with Newcombe's "
                       "interval. n_ended_before: runs whose trace ended before the step (left out). "
                       "Thresholds are fixed in advance, not chosen on these runs (docs/methodology.md).")
