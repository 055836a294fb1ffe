"""EDF: error distribution per stem with bootstrap bands, and the comparison statistics."""

import streamlit as st
from common import cached_compare, cached_edf, filter_runs, load_runs, results_root, sweep_label

from stability import analysis, plots

root = results_root()
st.title("Error EDF per stem")
runs = load_runs(root)
if runs is not None:
    runs = filter_runs(runs, "edf")
    mode = st.radio("error", ["absolute", "relative to the best of each group"], horizontal=True, key="edf_mode")
    relative = mode.startswith("relative")
    overlay = st.toggle("overlay sweeps (one line style per sweep)", value=runs.sweep.nunique() > 1, key="edf_overlay")
    by = ["stem", "sweep"] if overlay else ["stem"]
    points = cached_edf(runs, tuple(by), relative)
    if points.empty:
        st.info("No finished runs match the filters.")
    else:
        fig = plots.edf_figure(points, relative=relative, dash_by="sweep" if overlay else None,
                               title=f"{'Δ ' if relative else ''}top-1 error EDF · {sweep_label(runs)}")
        st.plotly_chart(fig, width="stretch", key="edf_chart")
        pooled = points["pooled"].iloc[0] if "pooled" in points and len(points) else ""
        st.caption("F(e) = fraction of runs with error below e; diverged runs count at 100% "
                   "(they are never dropped). Bands: 90% pointwise bootstrap intervals (200 resamples)."
                   + (f" **Pooled here: {pooled}** (filter them to one value to compare like with like)."
                      if pooled else ""))
        st.subheader("Summary per stem")
        st.dataframe(analysis.summary(runs, by=by), hide_index=True, width="stretch")
        st.subheader("Comparison between stems")
        cmp = cached_compare(runs, relative)
        if cmp.empty:
            st.info("Only one stem in the selection.")
        else:
            st.dataframe(cmp.round(4), hide_index=True, width="stretch")
            st.caption("Per stratum (sweep, optimizer, epochs ... never pooled); effects are b − a with "
                       "90% bootstrap intervals (_lo, _hi): median_diff, within_x_diff (fraction of runs "
                       "within x points of their own group's best). ks: KS distance, ks_better: the "
                       "group with more runs below at the largest gap, ks_p: permutation p-value. "
                       "Paired over shared (lr, wd, ...) points: n_pairs, Wilcoxon and sign-test p.")
