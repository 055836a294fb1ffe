"""Spikes: per-layer gradient-norm traces with detected spikes, loss underneath; counts per stem."""

import streamlit as st
from common import filter_runs, load_runs, results_root, run_tables

from stability import analysis, plots

root = results_root()
st.title("Gradient-norm spikes per layer")
runs = load_runs(root)
if runs is not None:
    runs = filter_runs(runs, "spk")
    traced = runs[runs.status.isin(["completed", "diverged"])]
    if traced.empty:
        st.info("No finished runs match the filters.")
    else:
        st.plotly_chart(plots.spike_count_figure(traced.assign(n_spikes=traced.n_spikes.fillna(0))),
                        width="stretch", key="spike_counts")
        how = st.radio("runs", ["worst k per stem", "choose a run"], horizontal=True, key="spk_how")
        if how == "choose a run":
            labels = {f"{r.stem} · lr {r.lr:.3g} · wd {r.wd:.3g} · {r.status} · {r.run_id}": r.run_id
                      for r in traced.sort_values(["stem", "lr"]).itertuples()}
            chosen = [labels[st.selectbox("run", list(labels), key="spk_run")]]
        else:
            k = st.number_input("k", 1, 5, 1, key="spk_k")
            chosen = analysis.worst_runs(traced, k=int(k)).run_id.tolist()
        with st.expander("spike detector"):
            d = analysis.SpikeParams()
            window = st.slider("window (steps of history)", 10, 1000, d.window, key="spk_w")
            factor = st.slider("factor (jump above the trend, x)", 1.1, 10.0, d.factor, key="spk_f")
            z = st.slider("z (robust standard deviations above the trend)", 2.0, 12.0, d.z, key="spk_z")
            st.caption("A point is judged once 8 earlier points lie in its window; defaults chosen "
                       "by benchmarks/spike_validation.py (docs/methodology.md).")
        params = analysis.SpikeParams(window=window, factor=factor, z=z)
        tables = run_tables(root, chosen)
        leads = []
        for rid in chosen:
            row = traced[traced.run_id == rid].iloc[0]
            gn = tables["grad_norms"][tables["grad_norms"].run_id == rid]
            marked = analysis.mark_spikes(gn, params=params)
            small = analysis.downsample(marked, max_points=2000)
            steps = analysis.downsample(tables["steps"][tables["steps"].run_id == rid], 3000, value="loss")
            title = (f"{row.stem} · {row.model} · lr {row.lr:.3g} wd {row.wd:.3g} · {row.status}"
                     f" · top-1 err {row.top1_err if row.status == 'completed' else 100:.1f}%")
            st.plotly_chart(plots.spike_figure(small, steps, title), width="stretch", key=f"spk_{rid}")
            lead = analysis.first_layer_lead(gn, params=params)
            if len(lead):
                leads.append(lead.assign(stem=row.stem))
        if leads:
            import pandas as pd

            st.subheader("Lead of first-layer spikes over last-layer spikes (steps)")
            st.dataframe(pd.concat(leads), hide_index=True, width="stretch")
