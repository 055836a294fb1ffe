"""Optimizer & training length: AdamW vs SGD per stem (best over each optimizer's own runs, with
n), best error vs epochs per stem."""

import pandas as pd
import streamlit as st

from stability import analysis, plots
from stability.dashboard.common import md, selected_runs, table

st.title("Optimizer and training length")
runs = selected_runs()
if runs is not None:
    strata = analysis.strata(runs)  # the tables' grouping columns (the redundant ones shown last)
    gap = analysis.optimizer_gap(runs)
    st.subheader("AdamW vs SGD")
    if runs.optimizer.nunique() < 2:
        st.info(f"The selection has one optimizer only ({md(runs.optimizer.iloc[0])}): below is its best run "
                "per stem, with nothing to compare it to; run grids/cpu/optimizer.yaml for both (or "
                "widen the sidebar's optimizer filter).")
    elif "gap_best" not in gap or gap["gap_best"].isna().all():
        st.info("No sweep, stem and length of the selection ran both optimizers: each bar below stands "
                "alone, nothing is compared (run grids/cpu/optimizer.yaml for both in one sweep).")
    if not gap.empty:
        st.plotly_chart(plots.optimizer_figure(gap), width="stretch", key="opt_chart")
        ns = [c for c in gap.columns if c.startswith("n_")]
        small = gap[ns].min(axis=1).lt(3).any() if ns else False
        uneven = (gap[ns].nunique(axis=1) > 1).any() if len(ns) > 1 else False
        if small or uneven:
            st.warning("Some bars are the best of fewer than 3 runs, or AdamW and SGD had different "
                       "numbers of runs: a best-of-n grows better with n, so compare with care (n on each bar).")
        table(gap, key="opt_table", strata=strata)
    st.subheader("Training length")
    tl = analysis.training_length(runs)
    groups = [c for c in tl.columns if c not in ("epochs", "best", "median", "n", "vs_longest")]
    lengths = tl.groupby(groups, observed=True, dropna=False)["epochs"].transform("nunique") if len(tl) \
        else pd.Series(0, index=tl.index)
    single = tl[lengths < 2]
    tl = tl[lengths >= 2]
    if tl.empty:
        st.info("Each sweep and stem of the selection ran one epoch budget only, so there is no curve "
                "to draw; run grids/cpu/epochs.yaml for several.")
    else:
        if len(single):  # a lone length is no curve, and lengths of different sweeps are no comparison
            st.caption(f"Left out, one epoch budget only: {len(single)} group(s) "
                       f"({', '.join(sorted(map(str, single.get('sweep', single.stem).unique())))}).")
        st.plotly_chart(plots.length_figure(tl), width="stretch", key="len_chart")
        if tl.n.lt(3).any():
            thin = tl[tl.n.lt(3)]
            st.warning(f"{len(thin)} point(s) rest on fewer than 3 runs"
                       + (f", {int(thin.best.ge(100).sum())} of them only diverged or pruned runs (drawn ×)"
                          if thin.best.ge(100).any() else "") + ": one run is not a best over lr.")
        table(tl, key="len_table", strata=strata)
        st.caption("best: the lowest error of the runs at that length (n of them); vs_longest: best minus "
                   "the best at the group's longest length (the paper's \"error relative to the longest "
                   "schedule\"; 0 at the longest).")
