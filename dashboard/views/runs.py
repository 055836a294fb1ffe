"""Runs: the filterable runs table with downloads; several runs' curves overlaid (loss, lr, val
error, grad norm), the config keys in which they differ, and progress of running runs (their curves
from the rows they have streamed so far, redrawn every 5 s)."""

import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from stability import store
from stability.analysis.grouping import run_config
from stability.dashboard.common import (
    control,
    md,
    root,
    rows_of,
    run_key,
    run_tables,
    selected_runs,
    table,
)
from stability.plots import (
    color_of,
    line_mode,
    log_ticks,
    named_stems,
    plain,
    scatter_kind,
    shade,
    wrap,
)
from stability.store import RunStatus as S


def _mark_divergence(fig: go.Figure, s: pd.DataFrame, at, name: str, color: str) -> None:
    """A cross on the loss and grad-norm panels at a diverged run's step (its loss or norm not
    finite there, so no line reaches it), at the last finite value before it."""
    if at is None or at != at:
        return
    for (r, c), col in (((1, 1), "loss"), ((2, 2), "grad_norm")):
        before = s[(s.step <= at) & np.isfinite(s[col].to_numpy(float)) & (s[col] > 0)]
        if len(before):
            fig.add_trace(go.Scatter(x=[at], y=[before[col].iloc[-1]], mode="markers", showlegend=False,
                                     marker=dict(symbol="x", size=11, color=color),
                                     hovertemplate=f"diverged at step {int(at)}<extra>{name}</extra>"), r, c)


def curves(chosen: list[str], info: pd.DataFrame, labels: dict[str, str]) -> None:
    """Progress of the running runs among ``chosen``, and the chosen runs' curves overlaid (a
    running run's from the rows it has streamed so far)."""
    live = [r for r in chosen if info.loc[r, "status"] == S.RUNNING]
    for rid in live:
        p = store.read_progress(root(), info.loc[rid, "sweep"], info.loc[rid, "run_id"])
        if p:
            st.progress(min(1.0, max(0.0, p["step"] / max(1, p["total_steps"]))),
                        text=f"{md(labels[rid])}: epoch {p['epoch']}/{p['epochs']}, step {p['step']}/{p['total_steps']}, "
                             f"val error {p['val_top1_err']:.2f}% (updated {md(p['updated_at'][:19])} UTC)")
        else:
            st.info(f"{md(labels[rid])}: running, no epoch finished yet (its curves grow as it streams its rows).")
    if chosen:
        t = run_tables(chosen)
        ep, steps = t["epochs"], t["steps"]
        fig = make_subplots(rows=2, cols=2, subplot_titles=("training loss", "learning rate",
                                                            "validation top-1 error (%)", "total grad norm"),
                            vertical_spacing=0.2)
        line = scatter_kind(3 * len(steps))
        no_epoch = []
        stems = [str(x) for x in named_stems(info.loc[chosen, ["stem"]])["stem"]]
        for i, rid in enumerate(chosen):
            # the stem's hue, as on every other page (red patchify, blue conv), a shade per run of it
            color = shade(color_of(stems[i], sorted(set(stems)).index(stems[i])), stems[:i].count(stems[i]))
            name = plain(labels[rid])  # plotly renders tags in text
            s = rows_of(steps, rid).sort_values("step") if len(steps) else steps
            e = rows_of(ep, rid).sort_values("epoch") if len(ep) else ep
            common = dict(legendgroup=rid, line=dict(color=color))
            if len(s):
                for (r, c), col in zip(((1, 1), (1, 2), (2, 2)), ("loss", "lr", "grad_norm"), strict=True):
                    fig.add_trace(line(x=s.step, y=s[col], name=name, mode=line_mode(s[col]),
                                       showlegend=col == "loss", **common), r, c)
                if info.loc[rid, "status"] == S.DIVERGED:
                    _mark_divergence(fig, s, info.loc[rid, "diverged_at_step"], name, color)
            if not len(e):
                pruned = info.loc[rid, "status"] == S.PRUNED
                stop = info.loc[rid, "pruned_at_step" if pruned else "diverged_at_step"]
                no_epoch.append(f"{name}: " + (f"{'pruned' if pruned else 'diverged'} at step {int(stop)}, "
                                               if stop == stop and stop is not None else "") + "before its first validation")
            if len(e):
                fig.add_trace(go.Scatter(x=e.epoch + 1, y=e.val_top1_err, name=name, mode="lines+markers",
                                         showlegend=not len(s), **common), 2, 1)
        for r, c, x, y in ((1, 1, "step", "loss (log)"), (1, 2, "step", "lr (log)"), (2, 1, "epoch", "top-1 error (%)"),
                           (2, 2, "step", "grad norm (log)")):
            fig.update_xaxes(title_text=x, row=r, col=c)
            fig.update_yaxes(title_text=y, row=r, col=c)
        fig.update_xaxes(range=[0.5, max(1, int(ep.epoch.max()) + 1 if len(ep) else 1) + 0.5], row=2, col=1)
        positive = steps[["loss", "lr", "grad_norm"]].where(steps[["loss", "lr", "grad_norm"]] > 0) if len(steps) \
            else pd.DataFrame(columns=["loss", "lr", "grad_norm"])
        fig.update_yaxes(type="log", **log_ticks(positive.grad_norm), row=2, col=2)
        fig.update_yaxes(type="log", **log_ticks(positive.loss), row=1, col=1)  # a diverged run's loss would flatten the rest
        fig.update_yaxes(type="log", **log_ticks(positive.lr), row=1, col=2)
        if no_epoch:
            # plotly.js lays out no subplot without a trace on it, and a note on an absent one lands on
            # the first panel: an empty trace keeps the error panel there for it
            fig.add_trace(go.Scatter(x=[None], y=[None], showlegend=False, hoverinfo="skip"), 2, 1)
            fig.add_annotation(text="no validation epoch:<br>" + "<br>".join(wrap(t, 55, " ") for t in no_epoch),
                               showarrow=False, xref="x3 domain", yref="y3 domain", x=0.02, y=0.98, xanchor="left",
                               yanchor="top", align="left", font=dict(size=11, color="#555"))
        fig.update_layout(template="plotly_white", height=720, legend=dict(orientation="h", y=-0.12))
        st.plotly_chart(fig, width="stretch", key="runs_curves")


st.title("Runs")
runs = selected_runs()
if runs is not None:
    st.caption(f"{len(runs)} runs")
    from stability.analysis import at_chance

    # One "stuck at chance" everywhere (the findings' rule), not the trainer's looser loss flag.
    shown = runs.drop(columns=["label", "collapsed"]).assign(at_chance=at_chance(runs, "top1_err").to_numpy(bool))
    table(shown, key="runs_table")
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", runs.to_csv(index=False).encode(), "runs.csv", "text/csv")
    buf = io.BytesIO()
    runs.to_parquet(buf, index=False)
    c2.download_button("Download parquet", buf.getvalue(), "runs.parquet", "application/octet-stream")

    order = runs.sort_values(["status", "sweep", "stem", "lr"], key=lambda s: s.map(
        {S.COMPLETED: 0, S.DIVERGED: 1, S.PRUNED: 2}).fillna(3) if s.name == "status" else s)
    labels = dict(zip(order.key, order.label + " · " + order.status, strict=True))
    first = order.key.tolist()[:1]
    chosen = control(st.multiselect, "open runs (overlaid)", order.key.tolist(), key="p_runs_open",
                     default=first, format_func=lambda r: labels.get(r, r), max_selections=8,
                     help="Up to 8 runs (the first 8 when you select all); their curves share the axes below")
    info = runs.set_index("key")
    for rid in chosen:
        if info.loc[rid, "status"] == S.PRUNED:
            step, rule = info.loc[rid, "pruned_at_step"], info.loc[rid, "prune_rule"]
            run_id = str(info.loc[rid, "run_id"])  # from the row: in the command only when it is a bare id
            again = (f" To continue it to the end with the pruner off: `stability train --run {run_id} "
                     f"results={root()} --rerun`" if run_id.isalnum() else "")
            st.info(f"{md(labels[rid])}: pruned" + (f" at step {int(step)}" if pd.notna(step) else "")
                    + (f" by {md(rule)}" if isinstance(rule, str) else "") + ": stopped early by its pruner as doomed; "
                    "its curves end there, and its top-1 error is its last validation error (the EDF scores it "
                    "as diverged by default)." + again)
        if info.loc[rid, "status"] in (S.FAILED, S.PREEMPTED):
            st.info(f"{md(labels[rid])}: stopped early"
                    + (f" ({md(str(info.loc[rid, 'error'])[:200])})" if isinstance(info.loc[rid, "error"], str) else "")
                    + "; its curves below end where it stopped, and the Overview page has its log tail.")
    # A running run's curves grow as it streams rows: redraw them every 5 s (the cache key is the
    # steps table's files, which change with every chunk).
    live = any(info.loc[r, "status"] == S.RUNNING for r in chosen)
    (st.fragment(run_every=5)(curves) if live else curves)(chosen, info, labels)
    if len(chosen) > 1:
        cfgs = store.read_table(root(), "runs", columns=["config_json"],
                                run_ids=[k.split("/", 1)[1] for k in chosen])
        cfgs = cfgs.set_index(run_key(cfgs))
        cfgs = cfgs[~cfgs.index.duplicated(keep="last")]
        rows = {labels[r]: run_config(cfgs.loc[r, "config_json"]) for r in chosen if r in cfgs.index}
        diff = pd.DataFrame(rows)
        if len(diff):  # a key one config lacks (an older run, an unreadable config) differs too: never NaN,
            diff = diff.astype(object).where(diff.notna(), "—")  # which nunique would not count
            diff = diff[diff.astype(str).nunique(axis=1) > 1]
            st.subheader("Config keys that differ")
            shown = diff.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
            st.table(shown.rename_axis("config key"))  # a static table: whole key names, every row
