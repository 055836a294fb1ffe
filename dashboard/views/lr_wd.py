"""LR x WD: error against learning rate and weight decay per stem, one row per optimizer and
length; click a point to open its run; median error on bins shared by all stems."""

import html

import streamlit as st

from stability import analysis, plots
from stability.dashboard.common import control, root, selected_runs, spec_ranges, table

st.title("Error vs learning rate and weight decay")
runs = selected_runs()
if runs is not None:
    df = analysis.error_vs_hparams(runs).merge(runs[["run_id", "sweep", "label", "key"]], on=["run_id", "sweep"])
    if df.empty:
        st.info("No finished runs match the filters.")
    else:
        event = st.plotly_chart(plots.lr_wd_figure(df, chance=analysis.chance_error(runs)), width="stretch",
                                key="lrwd_scatter",
                                on_select="rerun", selection_mode="points")
        st.caption("Colour: stem; × at 100%: diverged; ◇ at 100%: pruned; dashed: chance (the error at init). One row per sweep, "
                   "optimizer and training length. Where stems share their lr (or wd) values, each stem is "
                   "nudged a few percent sideways so none hides another; hover gives the true value. "
                   "Click a point to open its run.")
        # the figure draws ids as text (plots.plain): a clicked one comes back escaped
        picked = [html.unescape(p["customdata"][0]) for p in (event.selection.points if event and event.selection
                                                              else []) if p.get("customdata")]
        if picked:
            st.session_state["p_runs_open"] = picked[:1]
            st.switch_page("views/runs.py")
        st.subheader("Median error on shared bins")
        # dropna=False: a missing optimizer or length is a combination of its own, never mixed into the heatmap
        combos = runs.groupby(["sweep", "optimizer", "epochs"], observed=True, dropna=False).ngroups
        if combos > 1:
            st.info("The selection mixes sweeps, optimizers or training lengths: choose one of each "
                    "in the sidebar to see the heatmap (it never mixes them).")
        elif df.lr.nunique() < 3 or df.wd.nunique() < 3:
            st.info(f"The heatmap needs at least 3 distinct lr and wd values; the selection has "
                    f"{df.lr.nunique()} lr and {df.wd.nunique()} wd value(s) (an lr-only sweep, say).")
        else:
            bins = control(st.slider, "heatmap bins per axis", 3, 12, key="p_lrwd_bins", default=6)
            ranges = spec_ranges(str(root()), tuple(sorted(runs.sweep.unique())))
            hm = analysis.lr_wd_heatmap(runs, bins=bins, lr_range=ranges.get("lr"), wd_range=ranges.get("wd"))
            st.plotly_chart(plots.lr_wd_heatmap_figure(hm), width="stretch", key="lrwd_heat")
            clipped = int(hm.groupby("stem", observed=True).clipped.sum().max())
            src = "the sweeps' sampling ranges" if ranges else "the observed values"
            st.caption(f"Bins span {src}, the same for every stem; grey cells hold no run."
                       + (f" {clipped} run(s) outside those ranges are counted in the edge bins." if clipped else ""))
        st.subheader("Best configuration per group")
        table(analysis.best_configs(runs), key="lrwd_best", strata=analysis.strata(runs))
