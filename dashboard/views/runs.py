"""Runs: the filterable runs table, downloads, and one run's curves."""

import io

import plotly.express as px
import streamlit as st
from common import filter_runs, load_runs, results_root, run_tables

root = results_root()
st.title("Runs")
runs = load_runs(root)
if runs is not None:
    runs = filter_runs(runs, "runs", ("sweep", "model", "optimizer", "epochs", "dataset", "status", "stem"))
    st.caption(f"{len(runs)} runs")
    st.dataframe(runs, hide_index=True, width="stretch")
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", runs.to_csv(index=False).encode(), "runs.csv", "text/csv")
    buf = io.BytesIO()
    runs.to_parquet(buf, index=False)
    c2.download_button("Download parquet", buf.getvalue(), "runs.parquet", "application/octet-stream")
    if len(runs):
        rid = st.selectbox("open a run", runs.run_id.tolist(), key="runs_open")
        t = run_tables(root, [rid])
        ep, steps = t["epochs"], t["steps"]
        a, b = st.columns(2)
        if len(steps):
            a.plotly_chart(px.line(steps.sort_values("step"), x="step", y="loss", title="training loss",
                                   template="plotly_white"), width="stretch", key="runs_loss")
        if len(ep):
            b.plotly_chart(px.line(ep.sort_values("epoch"), x="epoch", y=["val_top1_err", "train_top1_err"],
                                   markers=True, title="top-1 error (%)", template="plotly_white"),
                           width="stretch", key="runs_err")
