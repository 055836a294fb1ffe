"""Overview: per sweep what is planned, pending, running, done, diverged and failed (from the
sweep's own record: plan and job ledger), ETA, failures with their error and log tail; it
refreshes every 5 s while runs are live."""

import pandas as pd
import streamlit as st
from common import apply_filters, load_runs, peek_runs, root, table

from stability import plots
from stability.grid.state import ORDER
from stability.store import RunStatus as S

st.title("stability: is ViT_C more stable than ViT_P?")


@st.cache_data(show_spinner=False, ttl=5)
def _status(where: str, sweep: str) -> dict | None:
    from stability.grid.controller import sweep_status

    try:
        return sweep_status(where, sweep)
    except Exception as e:  # a broken record must not hide the rest of the page
        return {"broken": f"{type(e).__name__}: {e}"}


def body() -> None:
    runs = load_runs()
    if runs is None:
        return
    runs = apply_filters(runs)
    finished = pd.to_datetime(runs["finished_at"], utc=True).max()
    c = st.columns(5)
    c[0].metric("sweeps", runs.sweep.nunique())
    c[1].metric("runs", len(runs))
    for col, s in zip(c[2:], (S.DIVERGED, S.FAILED, S.RUNNING), strict=True):
        col.metric(s, int(runs.status.eq(s).sum()))
    st.caption("Last result: " + ("none yet" if pd.isna(finished) else finished.strftime("%Y-%m-%d %H:%M UTC")))
    rows, failures = [], []
    for sweep in sorted(runs.sweep.dropna().unique()):
        rep = _status(str(root()), sweep)
        logs: dict = {}
        mine = runs[runs.sweep == sweep]
        if rep is None or "broken" in rep:
            counts = mine.status.value_counts()
            row = {"sweep": sweep, "planned": "", **{s: int(counts.get(s, 0)) for s in ORDER}, "ETA": ""}
            row["note"] = rep["broken"] if rep else "no sweep record (runs of stability train)"
        else:
            row = {"sweep": sweep, "planned": str(rep["planned"]), **{s: rep["counts"].get(s, 0) for s in ORDER}}
            row["ETA"] = f"{rep['eta_s'] / 60:.0f} min" if rep["eta_s"] else ""
            row["note"] = ""
            logs = {f["run_id"]: f["log"] for f in rep["failures"]}
            failures += [dict(f, sweep=sweep, error=f"lost: job {f['job_id']} ended without a result")
                         for f in rep["lost"]]
        for r in mine[mine.status == S.FAILED].itertuples():
            failures.append({"sweep": sweep, "stem": r.stem, "run_id": r.run_id, "label": r.label,
                             "error": r.error, "log": logs.get(r.run_id, "") if rep and "broken" not in rep else ""})
        rows.append(row)
    st.subheader("Sweeps")
    table(pd.DataFrame(rows), key="overview_sweeps")
    st.caption("From each sweep's plan and job ledger (`_sweeps/<sweep>/`), as `stability grid status` "
               "prints it: pending = not started (queued, or not submitted yet); missing = its job ended "
               "without a result (a rerun resubmits it).")
    if failures:
        st.subheader(f"Failures ({len(failures)})")
        for f in failures:
            with st.expander(f"{f.get('label') or f['sweep'] + ' · ' + f['run_id']}: {str(f['error'])[:120]}"):
                st.code(f["error"] or "", language=None)
                if f.get("log"):
                    st.caption("log tail")
                    st.code(f["log"], language=None)
                else:
                    st.caption("No job log for this run (it ran outside a grid, or its logs were cleaned).")
    st.subheader("Runs per sweep, stem and status")
    counts = runs.groupby(["sweep", "stem", "status"], observed=True).size().rename("n").reset_index()
    st.plotly_chart(plots.status_figure(counts), width="stretch", key="overview_chart")
    t = counts.pivot_table(index=["sweep", "stem"], columns="status", values="n", fill_value=0)
    table(t.reset_index(), key="overview_status")
    live = int(runs.status.eq(S.RUNNING).sum())
    if live:
        st.caption(f"{live} run(s) running: this page refreshes every 5 s.")


# Refresh while a sweep is running (the cache key changes with every written file).
peek = peek_runs(root())
running_now = peek is not None and bool(peek.status.eq(S.RUNNING).any())
(st.fragment(run_every=5)(body) if running_now else body)()
