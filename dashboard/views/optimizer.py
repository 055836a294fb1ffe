"""Optimizer & training length: AdamW vs SGD per stem, best error vs epochs per stem."""

import streamlit as st
from common import filter_runs, load_runs, results_root

from stability import analysis, plots

root = results_root()
st.title("Optimizer and training length")
runs = load_runs(root)
if runs is not None:
    runs = filter_runs(runs, "opt", ("sweep", "model", "dataset"))
    gap = analysis.optimizer_gap(runs)
    st.subheader("AdamW vs SGD")
    if runs.optimizer.nunique() < 2:
        st.info("The selection has one optimizer only; run grids/cpu/optimizer.yaml for both.")
    if not gap.empty:
        st.plotly_chart(plots.optimizer_figure(gap), width="stretch", key="opt_chart")
        st.dataframe(gap.round(3), hide_index=True, width="stretch")
    st.subheader("Training length")
    tl = analysis.training_length(runs)
    if tl.epochs.nunique() < 2:
        st.info("The selection has one epoch budget only; run grids/cpu/epochs.yaml for several.")
    if not tl.empty:
        st.plotly_chart(plots.length_figure(tl), width="stretch", key="len_chart")
        st.dataframe(tl.round(3), hide_index=True, width="stretch")
