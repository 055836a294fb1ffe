"""LR x WD: error against learning rate and weight decay per stem."""

import streamlit as st
from common import filter_runs, load_runs, results_root

from stability import analysis, plots

root = results_root()
st.title("Error vs learning rate and weight decay")
runs = load_runs(root)
if runs is not None:
    runs = filter_runs(runs, "lrwd")
    df = analysis.error_vs_hparams(runs)
    if df.empty:
        st.info("No finished runs match the filters.")
    else:
        st.plotly_chart(plots.lr_wd_figure(df), width="stretch", key="lrwd_scatter")
        if df.lr.nunique() > 2 and df.wd.nunique() > 2:
            bins = st.slider("heatmap bins", 3, 12, 6, key="lrwd_bins")
            st.plotly_chart(plots.lr_wd_heatmap_figure(analysis.lr_wd_heatmap(runs, bins=bins)),
                            width="stretch", key="lrwd_heat")
        st.subheader("Best configuration per stem")
        st.dataframe(analysis.best_configs(runs), hide_index=True, width="stretch")
