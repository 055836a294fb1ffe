"""Plotly figures of the analysis tables, shared by the dashboard, the report and notebooks.

Each function takes the DataFrame an ``stability.analysis`` function returns and gives a figure;
no data loading or computing happens here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

STEM_COLORS = {"patchify": "#d62728", "conv": "#1f77b4", "regnet": "#2ca02c"}
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]


def color_of(stem: str, i: int = 0) -> str:
    return STEM_COLORS.get(str(stem), _FALLBACK[i % len(_FALLBACK)])


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


EDF_VALUES = {"x", "F", "F_right", "F_lo", "F_hi", "F_lo_sim", "F_hi_sim", "dkw", "n", "n_diverged", "pooled"}


def edf_figure(points: pd.DataFrame, relative: bool = False, by: str = "stem",
               dash_by: str | None = None, title: str | None = None, max_points: int = 600) -> go.Figure:
    """Step EDF per group with its shaded bootstrap band (``analysis.edf`` output).

    Every grouping column of ``points`` (sweep, optimizer, epochs ... besides ``by``) draws its
    own line, never merged: colour follows ``by``, the line style the other columns."""
    fig = go.Figure()
    others = [c for c in points.columns if c not in EDF_VALUES and c != by]
    if dash_by and dash_by not in others:
        others.append(dash_by)
    keys = [by, *others]
    styles = sorted({tuple(str(v) for v in k) for k in points[others].drop_duplicates().itertuples(index=False)}) \
        if others else []
    for i, (key, g) in enumerate(points.groupby(keys, observed=True, sort=True)):
        key = key if isinstance(key, tuple) else (key,)
        stem = key[0]
        dash = DASHES[styles.index(tuple(str(v) for v in key[1:])) % len(DASHES)] if others else "solid"
        color = color_of(stem, i)
        g = g.sort_values("x")
        if len(g) > max_points:  # thousands of runs: keep evenly spaced steps (the curve's shape)
            keep = np.unique(np.linspace(0, len(g) - 1, max_points).round().astype(int))
            g = g.iloc[keep]
        x0 = [g.x.iloc[0]]
        x = x0 + g.x.tolist()
        name = " / ".join(str(k) for k in key)
        n, nd = int(g.n.iloc[0]), int(g.n_diverged.iloc[0])
        fig.add_trace(go.Scatter(x=x, y=[0.0] + g.F_hi.tolist(), mode="lines", line_shape="hv",
                                 line=dict(width=0), hoverinfo="skip", showlegend=False,
                                 legendgroup=name))
        fig.add_trace(go.Scatter(x=x, y=[0.0] + g.F_lo.tolist(), mode="lines", line_shape="hv",
                                 line=dict(width=0), fill="tonexty", fillcolor=_rgba(color, 0.18),
                                 hoverinfo="skip", showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=x, y=[0.0] + g.F_right.tolist(), mode="lines", line_shape="hv",
                                 line=dict(color=color, width=2.5, dash=dash), legendgroup=name,
                                 name=f"{name} (n={n}, {nd} diverged)",
                                 hovertemplate="error %{x:.2f}<br>F %{y:.2f}<extra>" + name + "</extra>"))
    fig.update_layout(title=title or ("EDF of Δ top-1 error (error − best of group)" if relative else "EDF of top-1 error"),
                      xaxis_title="Δ top-1 error (points)" if relative else "top-1 error (%)",
                      yaxis_title="cumulative prob.", yaxis_range=[0, 1.02], legend_title=by,
                      template="plotly_white", height=430)
    return fig


def lr_wd_figure(df: pd.DataFrame) -> go.Figure:
    """Error vs lr and vs wd per stem, log axes; diverged runs as crosses at 100%."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=("vs learning rate", "vs weight decay"))
    for i, (stem, g) in enumerate(df.groupby("stem", observed=True, sort=True)):
        color = color_of(stem, i)
        for col, knob in ((1, "lr"), (2, "wd")):
            for diverged, sub in g.groupby("diverged"):
                fig.add_trace(go.Scatter(
                    x=sub[knob], y=sub["err"], mode="markers", legendgroup=str(stem),
                    name=f"{stem}" + (" (diverged)" if diverged else ""),
                    showlegend=col == 1, marker=dict(color=color, size=9 if diverged else 7,
                                                     symbol="x" if diverged else "circle",
                                                     line=dict(width=0.5, color="white")),
                    customdata=sub[["run_id"]] if "run_id" in sub else None,
                    hovertemplate=f"{knob} %{{x:.3g}}<br>error %{{y:.2f}}<extra>{stem}</extra>"), row=1, col=col)
    fig.update_xaxes(type="log", title_text="lr", row=1, col=1)
    fig.update_xaxes(type="log", title_text="wd", row=1, col=2)
    fig.update_yaxes(title_text="top-1 error (%)", row=1, col=1)
    fig.update_layout(template="plotly_white", height=430, legend_title="stem")
    return fig


def lr_wd_heatmap_figure(hm: pd.DataFrame) -> go.Figure:
    stems = sorted(hm.stem.unique())
    fig = make_subplots(rows=1, cols=max(1, len(stems)), subplot_titles=stems, shared_yaxes=True)
    for i, stem in enumerate(stems, start=1):
        g = hm[hm.stem == stem]
        fig.add_trace(go.Heatmap(x=g.lr_bin, y=g.wd_bin, z=g.err, coloraxis="coloraxis",
                                 hovertemplate="lr %{x:.3g}<br>wd %{y:.3g}<br>median error %{z:.1f}"), 1, i)
        fig.update_xaxes(type="log", title_text="lr", row=1, col=i)
    fig.update_yaxes(type="log", title_text="wd", row=1, col=1)
    fig.update_layout(coloraxis=dict(colorscale="Viridis_r", colorbar_title="median err"),
                      template="plotly_white", height=380)
    return fig


def optimizer_figure(gap: pd.DataFrame) -> go.Figure:
    """Best error with AdamW and SGD per stem and epoch budget (``analysis.optimizer_gap``)."""
    fig = go.Figure()
    for opt, pattern in (("adamw", ""), ("sgd", "/")):
        col = f"best_{opt}"
        if col not in gap:
            continue
        for i, (stem, g) in enumerate(gap.groupby("stem", observed=True, sort=True)):
            fig.add_trace(go.Bar(x=[f"{stem} · {e} ep" for e in g.epochs], y=g[col], name=f"{stem} {opt}",
                                 marker=dict(color=color_of(stem, i), pattern_shape=pattern,
                                             opacity=1.0 if opt == "adamw" else 0.6)))
    fig.update_layout(barmode="group", yaxis_title="best top-1 error (%)", template="plotly_white",
                      height=400, title="AdamW vs SGD (hatched) per stem")
    return fig


def length_figure(tl: pd.DataFrame) -> go.Figure:
    """Best error vs training epochs per stem (``analysis.training_length``)."""
    fig = go.Figure()
    for i, (stem, g) in enumerate(tl.groupby("stem", observed=True, sort=True)):
        fig.add_trace(go.Scatter(x=g.epochs, y=g.best, mode="lines+markers", name=str(stem),
                                 line=dict(color=color_of(stem, i))))
    fig.update_layout(xaxis_title="epochs", yaxis_title="best top-1 error (%)", xaxis_type="log",
                      template="plotly_white", height=400, title="Training length", legend_title="stem")
    return fig


def spike_figure(trace: pd.DataFrame, steps: pd.DataFrame, title: str = "") -> go.Figure:
    """Per-layer grad norms (log y) with spikes marked, first and last layer emphasised, and the
    loss underneath on the shared step axis. ``trace`` is ``analysis.mark_spikes`` output of one run."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    if len(trace):
        first, last = trace.depth.min(), trace.depth.max()
        layers = trace.sort_values("depth").drop_duplicates("layer")[["layer", "depth"]]
        for layer, depth in layers.itertuples(index=False):
            g = trace[trace.layer == layer].sort_values("step")
            edge = depth in (first, last)
            color = "#d62728" if depth == first else "#1f77b4" if depth == last else "rgba(120,120,120,0.35)"
            fig.add_trace(go.Scattergl(x=g.step, y=g.grad_norm, mode="lines", name=f"{layer}" + (
                " (first)" if depth == first else " (last)" if depth == last else ""),
                line=dict(color=color, width=2 if edge else 1), legendgroup=layer,
                visible=True if edge else "legendonly"), row=1, col=1)
            s = g[g.spike] if "spike" in g else g.iloc[:0]
            if len(s):
                fig.add_trace(go.Scatter(x=s.step, y=s.grad_norm, mode="markers", name=f"{layer} spikes",
                                         legendgroup=layer, showlegend=False, visible=True if edge else "legendonly",
                                         marker=dict(color=color, size=9, symbol="triangle-up",
                                                     line=dict(color="black", width=1))), row=1, col=1)
    if len(steps):
        st = steps.sort_values("step")
        fig.add_trace(go.Scattergl(x=st.step, y=st.loss, mode="lines", name="loss",
                                   line=dict(color="#444", width=1.2)), row=2, col=1)
    fig.update_yaxes(type="log", title_text="grad norm", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(template="plotly_white", height=560, title=title, legend_title="layer")
    return fig


def spike_count_figure(counts: pd.DataFrame) -> go.Figure:
    """Distribution of spikes per run, per stem (``counts``: run_id, stem, n_spikes)."""
    fig = go.Figure()
    for i, (stem, g) in enumerate(counts.groupby("stem", observed=True, sort=True)):
        fig.add_trace(go.Box(y=g.n_spikes, name=str(stem), boxpoints="all" if len(g) <= 500 else "outliers", jitter=0.4,
                             marker_color=color_of(stem, i)))
    fig.update_layout(yaxis_title="spikes per run (all layers)", template="plotly_white", height=360,
                      title="Gradient-norm spikes per run", showlegend=False)
    return fig
