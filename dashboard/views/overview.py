"""Overview: sweeps, runs per status and stem, last update; refreshes while runs are running."""

import pandas as pd
import streamlit as st
from common import load_runs, peek_runs, results_root

from stability.store import STATUSES

root = results_root()
st.title("stability: is ViT_C more stable than ViT_P?")


def body() -> None:
    runs = load_runs(root)
    if runs is None:
        return
    finished = pd.to_datetime(runs["finished_at"], utc=True).max()
    running = int(runs.status.eq("running").sum())
    c = st.columns(5)
    c[0].metric("sweeps", runs.sweep.nunique())
    c[1].metric("runs", len(runs))
    c[2].metric("diverged", int(runs.status.eq("diverged").sum()))
    c[3].metric("running", running)
    c[4].metric("last update", "-" if pd.isna(finished) else finished.strftime("%Y-%m-%d %H:%M UTC"))
    table = runs.groupby(["sweep", "stem", "status"], observed=True).size().unstack("status", fill_value=0)
    for s in STATUSES:
        if s not in table:
            table[s] = 0
    table = table[list(STATUSES)]
    table["total"] = table.sum(axis=1)
    st.subheader("Runs per sweep, stem and status")
    st.dataframe(table.reset_index(), hide_index=True, width="stretch")
    if running:
        st.caption(f"{running} run(s) running: this page refreshes every 5 s.")


# Refresh while a sweep is running (the cache key changes with every written file).
peek = peek_runs(root)
running_now = peek is not None and bool(peek.status.eq("running").any())
(st.fragment(run_every=5)(body) if running_now else body)()
