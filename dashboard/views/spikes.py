"""Spikes: per-layer gradient-norm traces with the spikes one detector finds (the sliders drive
the traces, the counts and the first-layer lead alike), loss underneath, divergence marked; running
runs' traces from the rows they have streamed, redrawn every 5 s."""

import pandas as pd
import streamlit as st

from stability import analysis, plots
from stability.dashboard.common import (
    control,
    md,
    rows_of,
    run_key,
    run_tables,
    selected_runs,
    table,
    with_run_columns,
)
from stability.store import DONE, RunStatus

COUNT_LIMIT = 300  # runs whose traces the counts re-detect with the sliders' settings
LIVE_LIMIT = 6  # running runs whose traces are redrawn as they stream



def _trace_every(config_json) -> int | None:
    """The run's recorded ``trace_every`` (None where the row does not say, or says nonsense)."""
    every = analysis.grouping.run_config(config_json).get("trace_every")
    return every if isinstance(every, int) and not isinstance(every, bool) and every >= 1 else None


def _why_unjudged(label: str, marked: pd.DataFrame, per_layer: int, window: int, min_points: int,
                  every: int | None = None) -> str:
    """Why no point of a run is judged, in its own trace interval (``every``: the run's recorded
    one, else read off the steps traced: the divergence step is traced off the interval): too few
    steps at every step traced, or a trace interval too long for the window."""
    steps = marked.drop_duplicates("step").step.sort_values()
    every = every or (int(steps.diff().median()) if len(steps) > 1 else None)
    last = int(marked.step.max()) + 1
    if every == 1:
        return f"{label}: traced at every step, but it lasted {last} step(s) ({per_layer} point(s) per layer)"
    if every:
        need = max(1, window // (min_points + 1))
        fix = (f"`trace_every: {need}` or less would let the detector judge it" if need < every else
               f"it lasted {last} step(s): too few for {min_points} earlier points at any interval")
        return f"{label}: traced every {every} steps, {per_layer} point(s) per layer; {fix}"
    return f"{label}: {per_layer} traced point(s) per layer; trace more often (`trace_every`)"


def live_traces(keys: list[str], labels: dict[str, str], params: analysis.SpikeParams) -> None:
    """The per-layer traces of running runs, from the rows they have streamed so far."""
    tables = run_tables(keys)
    for rid in keys:
        gn, steps = rows_of(tables["grad_norms"], rid), rows_of(tables["steps"], rid)
        if gn.empty:
            st.info(f"{md(labels[rid])}: running, no rows streamed yet (a run streams them at each epoch's end).")
            continue
        small = analysis.downsample(analysis.mark_spikes(gn, params=params), max_points=2000)
        steps = analysis.downsample(steps, 3000, value="loss") if len(steps) else steps
        st.plotly_chart(plots.spike_figure(small, steps, f"{labels[rid]} · running, up to step {int(gn.step.max())}"),
                        width="stretch", key=f"spk_live_{rid.replace('/', '_')}")


st.title("Gradient-norm spikes per layer")
runs = selected_runs()
traced = None if runs is None else runs[runs.status.isin(DONE)]
params = analysis.SpikeParams()
if traced is not None and traced.empty:
    st.info("No finished runs match the filters.")
elif traced is not None:
    d = analysis.SpikeParams()
    with st.sidebar.expander("spike detector", expanded=False):
        window = control(st.slider, "window (steps of history)", 10, 1000, key="p_spk_w", default=d.window)
        min_points = control(st.slider, "earlier points needed in the window", 2, 50, key="p_spk_m",
                             default=d.min_points)
        factor = control(st.slider, "factor (jump above the trend, ×)", 1.1, 10.0, key="p_spk_f",
                         default=d.factor, step=0.1)
        z = control(st.slider, "z (robust SDs above the trend)", 1.0, 20.0, key="p_spk_z", default=d.z, step=0.5)
        st.caption("Defaults chosen on labelled runs by benchmarks/spike_validation.py "
                   "(docs/methodology.md).")
    params = analysis.SpikeParams(window=window, factor=factor, z=z, min_points=min_points)

    how = control(st.radio, "runs", ["worst k per stem", "choose runs"], key="p_spk_how",
                  default="worst k per stem", horizontal=True)
    if how == "choose runs":
        options = traced.sort_values(["stem", "lr"]).key.tolist()
        labels = dict(zip(traced.key, traced.label + " · " + traced.status, strict=True))
        chosen = control(st.multiselect, "runs", options, key="p_spk_runs", default=options[:1],
                         format_func=lambda r: labels.get(r, r), max_selections=6)
        chosen = [r for r in chosen if r in labels]
    else:
        k = control(st.slider, "k (worst runs per stem)", 1, 5, key="p_spk_k", default=1)
        worst = analysis.worst_runs(traced, k=int(k), by=["sweep", "stem"] if traced.sweep.nunique() > 1 else ["stem"])
        chosen = worst.key.tolist()
    layout = control(st.radio, "layout", ["one figure per run", "overlay in one figure"], key="p_spk_layout",
                     default="one figure per run", horizontal=True)

    # Counts per run with the same detector: re-detected on the traces of up to COUNT_LIMIT runs.
    all_tables = None
    if len(traced) <= COUNT_LIMIT:
        all_tables = run_tables(traced.key.tolist())
        counts = analysis.spike_counts(all_tables["grad_norms"], params=params)
        per_run = counts.groupby(run_key(counts))["n_spikes"].sum()
        box = traced.assign(n_spikes=traced.key.map(per_run).fillna(0))
        fig = plots.spike_count_figure(box, "Spikes per run (all layers), re-detected with these settings")
        fig.update_layout(yaxis_title="spikes re-detected with these settings")
        st.plotly_chart(fig, width="stretch", key="spike_counts")
        total = int(counts.n_points.sum())
        judged = int((counts.n_points - min_points).clip(lower=0).sum())  # at most: window permitting
        if total and judged < total / 2:
            st.warning(f"The detector could judge at most {judged:,} of the {total:,} traced points "
                       f"({judged / total:.0%}): it judges a point only after {min_points} earlier points within "
                       f"{window} steps, and these runs have a median of {int(counts.n_points.median())} traced "
                       "points per layer. Few or no spikes here means little was judged, not that the runs were "
                       "calm: trace more often (`trace_every`) or lower the points needed (sidebar).")
    else:
        fig = plots.spike_count_figure(traced.assign(n_spikes=traced.n_spikes.fillna(0)),
                                       "Spikes per run: trainer's count, default detector on the total norm")
        fig.update_layout(yaxis_title="trainer's count (default detector, total norm)")
        st.plotly_chart(fig, width="stretch", key="spike_counts")
        st.caption(f"{len(traced)} runs: the counts are the trainer's (default detector on the total "
                   f"norm); filter to {COUNT_LIMIT} or fewer to re-detect them with the sliders.")

    # The counts above already read every traced run's tables when there were few enough.
    empty = {"grad_norms": pd.DataFrame(), "steps": pd.DataFrame()}
    tables = all_tables if all_tables is not None else run_tables(chosen) if chosen else empty
    info = traced.set_index("key")
    notes = st.container()  # filled after the loop, shown above the figures
    leads, overlay, unjudged, untraced = [], [], [], []
    recorded: dict[str, int | None] | None = None  # each chosen run's trace_every, from its config
    for rid in chosen:
        row = info.loc[rid]
        gn, steps = rows_of(tables["grad_norms"], rid), rows_of(tables["steps"], rid)
        if gn.empty:
            untraced.append(row.label)
            continue
        marked = analysis.mark_spikes(gn, params=params)
        per_layer = int(marked.groupby("layer").size().max())
        if per_layer <= min_points:
            if recorded is None:  # read once, and only when a run is too short to judge
                cfg = with_run_columns(traced[traced.key.isin(chosen)], ["config_json"])
                recorded = dict(zip(cfg.key, cfg.config_json.map(_trace_every), strict=True))
            unjudged.append(_why_unjudged(row.label, marked, per_layer, window, min_points, recorded.get(rid)))
        small = analysis.downsample(marked, max_points=2000)
        steps = analysis.downsample(steps, 3000, value="loss") if len(steps) else steps
        err = (f"{row.top1_err:.1f}%" if row.status == RunStatus.COMPLETED
               else f"{row.top1_err:.1f}% when pruned (scored 100%)" if row.status == RunStatus.PRUNED
               and pd.notna(row.top1_err) else f"100% ({row.status})")
        title = f"{row.label} · top-1 err {err}"
        if layout.startswith("overlay"):
            overlay.append((row.label, small, steps))
        else:
            st.plotly_chart(plots.spike_figure(small, steps, title, diverged_at=row.diverged_at_step),
                            width="stretch", key=f"spk_{rid.replace('/', '_')}")
        leads.append(analysis.first_layer_lead(gn, params=params).assign(run=row.label))
    if untraced:
        notes.warning("No per-layer traces recorded for: " + "; ".join(untraced))
    if unjudged:
        notes.info(f"**{len(unjudged)} of the {len(chosen)} runs shown are too short for the detector to judge any "
                f"point**: it judges a point only after {min_points} earlier points within {window} steps.\n"
                + "\n".join(f"- {u}" for u in unjudged))
    if overlay:
        st.plotly_chart(plots.spike_overlay_figure(overlay, "Worst runs overlaid" if how.startswith("worst") else "Chosen runs overlaid"),
                        width="stretch", key="spk_overlay")
    st.subheader("Do first-layer spikes lead last-layer spikes? (MoCo v3)")
    lead = pd.concat(leads) if leads else pd.DataFrame()
    if lead.empty or lead.n_last.sum() == 0:
        st.info("No last-layer spike in these runs, so there is nothing for a first-layer spike to "
                "lead: the MoCo v3 pattern (the patch projection spiking some steps before the head) "
                "needs spikes in both. Lower z or factor in the sidebar's detector to see weaker jumps.")
    if not lead.empty:
        shown = lead.drop(columns=[c for c in ("run_id", "sweep") if c in lead])
        table(shown.astype({c: float for c in ("led", "median_lead", "baseline", "p") if c in shown}), key="spk_lead")
        st.caption("led: fraction of last-layer spikes with a first-layer spike 1–50 steps before; "
                   "baseline: the same with the first-layer spikes placed at random; p: share of "
                   "200 shuffles reaching the observed fraction.")

running = None if runs is None else runs[runs.status == RunStatus.RUNNING].head(LIVE_LIMIT)
if running is not None and len(running):
    st.subheader("Running runs (refreshed every 5 s)")
    st.caption("Their traces so far, from the rows each run streams to the store at every epoch's end; the "
               "spikes marked with the sidebar's settings.")
    st.fragment(run_every=5)(live_traces)(running.key.tolist(), dict(zip(running.key, running.label, strict=True)),
                                          params)
