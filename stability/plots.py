"""Plotly figures of the analysis tables, shared by the dashboard, the report and notebooks.

Each function takes the DataFrame an ``stability.analysis`` function returns and gives a figure;
no data loading or computing happens here.
"""

from __future__ import annotations

import dataclasses
import functools
import html
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .analysis.grouping import NO_STEM, named_stems, strata_groups  # noqa: F401 - NO_STEM: the figures' name of a missing stem
from .analysis.tables import named_axes, stratum_text, value_text
from .store import RunStatus

if TYPE_CHECKING:
    from .analysis.tables import Table

STEM_COLORS = {"patchify": "#d62728", "conv": "#1f77b4", "regnet": "#2ca02c"}
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
DISTINCT_COLORS = [*qualitative.Dark24, *qualitative.Light24]  # past LINE_COLORS' 10: 48 told apart


# When a figure's scatter traces are drawn with WebGL (benchmarks/plot_render.py, headless
# Chromium): an SVG line is one path, faster than WebGL up to 100,000 points (116 vs 1,377 ms);
# SVG markers are one node each and lose past ~10,000 (732 vs 432 ms at 20,000). WebGL also costs
# a context, and Chromium keeps 16 per page: past that the oldest figure goes blank.
WEBGL_POINTS = 100_000
WEBGL_MARKERS = 5_000


def plain(value):
    """``value`` with every string in it HTML-escaped (plotly renders <a>, <b>, <span style> in
    names, titles, ticks and hover text, and values come from files: a planted stem must show as
    text, not as a link). Frames escape only the values that need it; Tables their table; lists
    and tuples each item; anything else is returned as it is."""
    if isinstance(value, str):
        return html.escape(value, quote=False)
    if isinstance(value, pd.DataFrame):
        out = value
        for col in value.columns:
            c = value[col]
            if isinstance(c.dtype, pd.CategoricalDtype):
                cats = c.cat.categories
                shown = [plain(v) if isinstance(v, str) else v for v in cats]  # str or object categories
                if shown != list(cats):
                    out = out.assign(**{col: c.cat.rename_categories(shown)})
            elif c.dtype == object or pd.api.types.is_string_dtype(c.dtype):
                bad = {v: e for v in pd.unique(c.dropna()) if isinstance(v, str) and (e := plain(v)) != v}
                if bad:
                    out = out.assign(**{col: c.replace(bad)})
        if out is not value:
            out.attrs = dict(value.attrs)
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "table"):
        return dataclasses.replace(value, table=plain(value.table))
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


def plain_labels(figure: Callable[..., go.Figure]) -> Callable[..., go.Figure]:
    """A figure function whose arguments are escaped first (``plain``): every label it draws
    from data is text; the markup it adds itself (bold, line breaks) stays markup."""
    @functools.wraps(figure)
    def wrapped(*args, **kwargs):
        return figure(*(plain(a) for a in args), **{k: plain(v) for k, v in kwargs.items()})
    return wrapped


def scatter_kind(n_points: int, markers: bool = False) -> type:
    """``go.Scatter`` (SVG) up to ``WEBGL_POINTS`` line points (``WEBGL_MARKERS`` markers) in a
    figure, ``go.Scattergl`` above."""
    return go.Scattergl if n_points > (WEBGL_MARKERS if markers else WEBGL_POINTS) else go.Scatter


def _sci(v: float, sci: bool = True) -> str:
    """A tick label: ``sci`` 1e-3, 2.5e-3 (mantissa to 2 digits), else 0.01, 250."""
    if not np.isfinite(v) or v <= 0:
        return str(v)
    if not sci:
        return f"{float(f'{v:.3g}'):g}"
    e = int(np.floor(np.log10(v) + 1e-9))
    return f"{float(f'{v / 10.0 ** e:.2g}'):g}e{e}"


def _labels(vals: Sequence[float]) -> list[str]:
    """One format per axis: scientific when any tick is below 0.01 or above 10,000."""
    sci = any(t < 0.01 or t > 1e4 for t in vals)
    return [_sci(t, sci) for t in vals]


def wrap(text: str, width: int = 60, sep: str = " · ") -> str:
    """``text`` broken at ``sep`` into lines of about ``width`` characters (plotly's ``<br>``):
    side-by-side panel titles overlap when a line is wider than its panel."""
    lines: list[str] = []
    for part in text.split(sep):
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return "<br>".join(lines)


def panel_heads(keys: Sequence, cols: Sequence[str]) -> list[str]:
    """The names of panels, one per key (a tuple of ``cols`` values, or the value of one column):
    the axes ``named_axes`` keeps (two sweeps' batch sizes and warm-ups are the sweeps'), wrapped."""
    rows = [k if isinstance(k, tuple) else (k,) for k in keys]
    if not cols or not rows:
        return ["" for _ in rows]
    named = named_axes(pd.DataFrame(rows, columns=list(cols)), cols)
    return [wrap(stratum_text({c: v for c, v in zip(cols, r, strict=True) if c in named})) for r in rows]


def _grid_125(d0: int, d1: int) -> list[float]:
    """1, 2 and 5 times each power of ten from 10**d0 to 10**d1, ascending."""
    return [m * 10.0 ** d for d in range(d0, d1 + 1) for m in (1, 2, 5)]


def log_ticks(values, max_ticks: int = 7) -> dict:
    """Tick values and labels for a log axis over ``values``: decades (every k-th when there are
    many), 1-2-5 steps when the data spans under two decades, the value itself when there is one;
    the same format on every axis (``_sci``). Pass as ``fig.update_xaxes(type="log", **log_ticks(v))``."""
    v = np.asarray(pd.Series(values).dropna(), float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return {}
    lo, hi = float(v.min()), float(v.max())
    if hi / lo < 1.0001:
        return {"tickvals": [lo], "ticktext": _labels([float(f"{lo:.3g}")])}
    d0, d1 = int(np.floor(np.log10(lo) + 1e-9)), int(np.ceil(np.log10(hi) - 1e-9))
    decades = list(range(d0, d1 + 1))
    step = max(1, int(np.ceil(len(decades) / max_ticks)))
    vals = [10.0 ** d for d in decades[::step]]
    inside = [t for t in vals if lo / 1.001 <= t <= hi * 1.001]
    if len(inside) < 3:  # under two decades: the 1-2-5 grid inside the data
        vals = [t for t in _grid_125(d0, d1) if lo / 1.001 <= t <= hi * 1.001]
        if len(vals) < 3:  # inside one 1-2-5 step: evenly spaced (on the log axis) through the data
            for digits in (2, 3, 4):
                vals = sorted({float(f"{v:.{digits}g}") for v in np.geomspace(lo, hi, 4)})
                if len(vals) >= min(3, len(np.unique(v))):
                    break
    return {"tickvals": vals, "ticktext": _labels(vals)}


def color_of(stem: str, i: int = 0) -> str:
    return STEM_COLORS.get(str(stem), _FALLBACK[i % len(_FALLBACK)])


def shade(hex_color: str, k: int) -> str:
    """The ``k``-th shade of a colour: itself, then alternately darker and lighter (so several
    lines of one stem stay in that stem's hue but can be told apart)."""
    if k == 0:
        return hex_color
    h = hex_color.lstrip("#")
    rgb = [int(h[i:i + 2], 16) for i in (0, 2, 4)]
    f = 0.35 * ((k + 1) // 2) / (1 + 0.35 * ((k + 1) // 2))
    rgb = [round(c * (1 - f)) for c in rgb] if k % 2 else [round(c + (255 - c) * f) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


EDF_VALUES = {"x", "F", "F_right", "F_lo", "F_hi", "F_lo_sim", "F_hi_sim", "dkw", "n", "n_diverged", "n_pruned",
              "pruned_as", "pooled"}


ZERO_NORM = "grad norm 0"  # the open circles drawn below the data (a log axis has no 0): their legend entry
BAD_NORM = "grad norm inf/NaN"  # the crosses drawn above the data: their legend entry
END_SYMBOLS = {"": "circle", "diverged": "x", "pruned": "diamond-open"}  # how a run ended, as a marker
BANDS = {"pointwise": ("F_lo", "F_hi"), "simultaneous": ("F_lo_sim", "F_hi_sim"), "dkw": None}
LINE_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]


@plain_labels
def edf_figure(points: pd.DataFrame, relative: bool = False, by: str = "stem",
               dash_by: str | None = None, title: str | None = None, max_points: int = 600,
               band: str = "pointwise", within: float | None = None, chance: float | None = None,
               full_axis: bool = False) -> go.Figure:
    """Step EDF per group with a shaded band (``analysis.edf`` output), one panel per stratum.

    Every grouping column of ``points`` besides ``by`` (sweep, optimizer, epochs ...) is a
    stratum: each value gets its own panel (small multiples, never merged into one plot), the
    hue follows ``by``; ``dash_by`` styles lines within a panel instead of splitting panels.
    ``band``: pointwise or simultaneous bootstrap, or DKW. Diverged runs (at 100%) are marked
    with a cross at the top of their step, and pruned runs with them when the EDF scores them as
    diverged (``pruned_as``); a panel's title counts both; ``within`` draws the "within x points
    of the best" line in relative mode; ``chance`` the error of an untrained model (absolute mode);
    ``full_axis`` fixes the x axis to 0–100 (else padded to the data so the last step shows)."""
    strata_cols = [c for c in points.columns if c not in EDF_VALUES and c not in (by, dash_by)]
    panels = strata_groups(points, strata_cols if len(points) else [])  # a missing value: its own panel ("n/a")
    ncols = 1 if len(panels) == 1 else 2
    nrows = -(-len(panels) // ncols)
    titles = []
    heads = panel_heads([k for k, _ in panels], strata_cols if len(points) else [])
    for head, (_, part) in zip(heads, panels, strict=True):
        ns = part.drop_duplicates([by] + ([dash_by] if dash_by else []))
        count = ", ".join(f"{r[by]} n={int(r.n)}" + _stopped_text(r) for _, r in ns.iterrows())
        titles.append(f"{head}<br>{count}" if head else count)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles, shared_xaxes="all", shared_yaxes="all",
                        vertical_spacing=min(0.12, 0.5 / nrows), horizontal_spacing=0.06)
    stems = sorted(points[by].astype(str).unique()) if len(points) else []
    dash_values = sorted(points[dash_by].astype(str).unique()) if dash_by and len(points) else []
    shown: set[str] = set()
    for p_i, (_, part) in enumerate(panels):
        row, col = p_i // ncols + 1, p_i % ncols + 1
        keys = [by] + ([dash_by] if dash_by else [])
        for key, g in part.groupby(keys, observed=True, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            stem = str(key[0])
            color = color_of(stem, stems.index(stem))
            dash = DASHES[dash_values.index(str(key[1])) % len(DASHES)] if dash_by else "solid"
            g = g.sort_values("x")
            full = g
            if len(g) > max_points:  # thousands of runs: keep evenly spaced steps (the curve's shape)
                keep = np.unique(np.linspace(0, len(g) - 1, max_points).round().astype(int))
                g = g.iloc[keep]
            x = [g.x.iloc[0]] + g.x.tolist()
            name = " / ".join(str(k) for k in key)
            n, nd = int(g.n.iloc[0]), int(g.n_diverged.iloc[0])
            npr = int(g.n_pruned.iloc[0]) if "n_pruned" in g else 0
            at_top = nd + (npr if _pruned_as(g.iloc[0]) == RunStatus.DIVERGED else 0)
            if BANDS.get(band):
                lo_col, hi_col = BANDS[band]
                lo, hi = g[lo_col].tolist(), g[hi_col].tolist()
            else:
                d = float(g.dkw.iloc[0]) if "dkw" in g and pd.notna(g.dkw.iloc[0]) else 0.0
                lo, hi = (g.F_right - d).clip(0, 1).tolist(), (g.F_right + d).clip(0, 1).tolist()
            fig.add_trace(go.Scatter(x=x, y=[0.0] + hi, mode="lines", line_shape="hv", line=dict(width=0),
                                     hoverinfo="skip", showlegend=False, legendgroup=name), row=row, col=col)
            fig.add_trace(go.Scatter(x=x, y=[0.0] + lo, mode="lines", line_shape="hv", line=dict(width=0),
                                     fill="tonexty", fillcolor=_rgba(color, 0.16), hoverinfo="skip",
                                     showlegend=False, legendgroup=name), row=row, col=col)
            fig.add_trace(go.Scatter(x=x, y=[0.0] + g.F_right.tolist(), mode="lines", line_shape="hv",
                                     line=dict(color=color, width=2.5, dash=dash), legendgroup=name, name=name,
                                     showlegend=name not in shown,
                                     hovertemplate="error %{x:.2f}<br>F %{y:.2f}<extra>" + name + f" (n={n})</extra>"),
                          row=row, col=col)
            shown.add(name)
            if at_top:
                top = full.iloc[-1]
                what = f"{nd} diverged" + (f" and {npr} pruned" if at_top > nd else "")
                fig.add_trace(go.Scatter(x=[top.x], y=[top.F_right], mode="markers", legendgroup=name,
                                         showlegend=False, marker=dict(symbol="x", size=11, color=color,
                                                                       line=dict(width=2, color=color)),
                                         hovertemplate=f"{what} run(s), counted at 100%<extra>{name}</extra>"),
                              row=row, col=col)
        # the line's label in the first panel only: an annotation position without its text
        # makes plotly write its placeholder, "new text", in the others
        if relative and within is not None:
            fig.add_vline(x=within, line=dict(color="#555", dash="dot", width=1), row=row, col=col,
                          **(dict(annotation_text=f"within {within:g}", annotation_position="bottom right")
                             if p_i == 0 else {}))
        if not relative and chance is not None and np.isfinite(chance):
            fig.add_vline(x=chance, line=dict(color="#888", dash="dash", width=1), row=row, col=col,
                          **(dict(annotation_text="chance", annotation_position="bottom left") if p_i == 0 else {}))
    if full_axis:
        fig.update_xaxes(range=[-2.0, 102.0])
    elif len(points):
        lo_x, hi_x = float(points.x.min()), float(points.x.max())
        pad = max(1.0, 0.04 * (hi_x - lo_x))
        fig.update_xaxes(range=[min(0.0, lo_x) - pad if relative else lo_x - pad, hi_x + pad])
    band_text = {"pointwise": "90% pointwise bootstrap band", "simultaneous": "90% simultaneous bootstrap band",
                 "dkw": "90% DKW band"}.get(band, "")
    fig.update_xaxes(title_text=("Δ top-1 error (points)" if relative else "top-1 error (%)"), row=nrows)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_yaxes(title_text="cumulative prob.", col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=(title or ("EDF of Δ top-1 error (error − best of group)" if relative
                                       else "EDF of top-1 error")) + f" · {band_text}",
                      legend_title=" / ".join([by] + ([dash_by] if dash_by else [])),
                      template="plotly_white", height=max(420, 300 * nrows + 120))
    return fig


def _pruned_as(r) -> str:
    """How an ``analysis.edf`` row scored its pruned runs (points of older code have no column)."""
    return str(r["pruned_as"]) if "pruned_as" in r and isinstance(r["pruned_as"], str) else str(RunStatus.DIVERGED)


def _stopped_text(r) -> str:
    """" (k div., j pruned)" for an ``analysis.edf`` row: its diverged runs and its pruned runs, the
    latter with how the EDF scored them where not as diverged ("at last error", "left out")."""
    nd, npr = int(r.n_diverged), int(r.n_pruned) if "n_pruned" in r else 0
    how = {"last": " at last error", "out": " left out"}.get(_pruned_as(r), "")
    parts = ([f"{nd} div."] if nd else []) + ([f"{npr} pruned{how}"] if npr else [])
    return f" ({', '.join(parts)})" if parts else ""


@plain_labels
def lr_wd_figure(df: pd.DataFrame, facet: Sequence[str] = ("sweep", "optimizer", "epochs"),
                 chance: float | None = None) -> go.Figure:
    """Error vs lr and vs wd per stem (colour), log axes, one row per value of the ``facet``
    columns that vary (sweep, optimizer, epochs: never mixed in one panel); diverged runs as crosses at
    100%, pruned runs (``pruned``, at 100%) as open diamonds; ``chance``: a dashed line at the error of an untrained model. A knob with one value in
    every run gets no panel (the title says its value). Hover names
    the run (``label`` if present); ``customdata`` is the run's ``key`` (else its id), so a click can
    open it."""
    df = named_stems(df)
    # a missing value counts as a value and is a row of its own ("n/a"): never pooled with another, never dropped
    facet = [c for c in facet if c in df and df[c].nunique(dropna=False) > 1]
    rows = strata_groups(df, facet)
    knobs = [k for k in ("lr", "wd") if df[k].nunique() > 1] or ["lr"]
    fixed = [f"{k} = {_sci(float(df[k].iloc[0]), float(df[k].iloc[0]) < 0.01)}" for k in ("lr", "wd")
             if k not in knobs and len(df)]
    titles = []
    for key, _ in rows:
        head = stratum_text(dict(zip(facet, key, strict=True)))
        titles += [f"{head} · vs {k}" if head else f"vs {k}" for k in knobs]
    fig = make_subplots(rows=len(rows), cols=len(knobs), shared_yaxes=True, subplot_titles=titles,
                        vertical_spacing=min(0.2, 0.45 / max(1, len(rows))))
    stems = sorted(df["stem"].astype(str).unique())
    kind = scatter_kind(len(df) * len(knobs), markers=True)
    for r, (_, part) in enumerate(rows, start=1):
        for stem, g in part.groupby("stem", observed=True, sort=True):
            i = stems.index(str(stem))
            color = color_of(stem, i)
            for col, knob in enumerate(knobs, start=1):
                # Paired designs put every stem at the same values: nudge each stem sideways by a
                # few percent on the log axis so no stem hides another (hover gives the true value).
                paired = part.groupby("stem", observed=True)[knob].apply(frozenset).nunique() == 1
                nudge = 10 ** (0.06 * (i - (len(stems) - 1) / 2)) if paired and len(stems) > 1 else 1.0
                pruned = np.asarray(g.get("pruned", False), bool)  # older tables have no column
                ends = np.where(g["diverged"].to_numpy(bool), "diverged", np.where(pruned, "pruned", ""))
                for end, sub in g.groupby(ends):
                    label = sub["label"] if "label" in sub else sub["run_id"] if "run_id" in sub else sub[knob]
                    fig.add_trace(kind(
                        x=sub[knob] * nudge, y=sub["err"], mode="markers", legendgroup=f"{stem}{end}",
                        name=f"{stem}" + (f" ({end})" if end else ""),
                        showlegend=col == 1 and r == 1, marker=dict(color=color, size=10 if end else 8,
                                                                    symbol=END_SYMBOLS[end],
                                                                    line=dict(width=0.5, color="white")),
                        customdata=np.stack([sub["key"] if "key" in sub else sub["run_id"] if "run_id" in sub
                                             else sub[knob], label, sub[knob]], axis=1),
                        hovertemplate="%{customdata[1]}<br>" + knob + " %{customdata[2]:.3g}<br>error %{y:.2f}"
                                      "<br>id %{customdata[0]}<extra></extra>"),
                        row=r, col=col)
        for col, knob in enumerate(knobs, start=1):
            fig.update_xaxes(type="log", title_text=knob, tickangle=0, **log_ticks(part[knob]), row=r, col=col)
        fig.update_yaxes(title_text="top-1 error (%)", row=r, col=1)
    if chance is not None and np.isfinite(chance):
        fig.add_hline(y=chance, line=dict(color="#888", dash="dash", width=1), annotation_text="chance",
                      annotation_position="bottom right")
    fig.update_layout(template="plotly_white", height=max(430, 360 * len(rows)), legend_title="stem",
                      clickmode="event+select",
                      title=("Every run has " + " and ".join(fixed)) if fixed else None)
    return fig


@plain_labels
def lr_wd_heatmap_figure(hm: pd.DataFrame) -> go.Figure:
    """Median error per shared (lr, wd) bin, one panel per stem (``analysis.lr_wd_heatmap``);
    empty bins are grey, every other cell says how many runs it holds."""
    stems = sorted(hm.stem.astype(str).unique())
    fig = make_subplots(rows=1, cols=max(1, len(stems)), subplot_titles=stems, shared_yaxes=True)
    lrs, wds = sorted(hm.lr_bin.unique()), sorted(hm.wd_bin.unique())
    xl, yl = _labels([float(f"{v:.2g}") for v in lrs]), _labels([float(f"{v:.2g}") for v in wds])
    for i, stem in enumerate(stems, start=1):
        g = hm[hm.stem.astype(str) == stem]
        z = g.pivot_table(index="wd_bin", columns="lr_bin", values="err", dropna=False).reindex(index=wds, columns=lrs)
        n = g.pivot_table(index="wd_bin", columns="lr_bin", values="n", dropna=False).reindex(index=wds, columns=lrs).fillna(0)
        counts = n.astype(int).to_numpy()
        fig.add_trace(go.Heatmap(x=xl, y=yl, z=z.to_numpy(), text=np.where(counts > 0, "n=" + counts.astype(str), ""),
                                 customdata=counts, texttemplate="%{text}", coloraxis="coloraxis", xgap=2, ygap=2,
                                 hovertemplate="lr ≈ %{x}<br>wd ≈ %{y}<br>median error %{z:.1f}<br>%{customdata} run(s)<extra></extra>"),
                      1, i)
        fig.update_xaxes(title_text="lr (bin centre)", type="category", row=1, col=i)
    fig.update_yaxes(title_text="wd (bin centre)", type="category", row=1, col=1)
    fig.update_layout(coloraxis=dict(colorscale="Viridis_r", colorbar_title="median err"),
                      template="plotly_white", height=400, plot_bgcolor="#e5e5e5")
    return fig


@plain_labels
def optimizer_figure(gap: pd.DataFrame) -> go.Figure:
    """Best error with AdamW and SGD per stem and epoch budget (``analysis.optimizer_gap``); each
    bar says how many runs its best was chosen from."""
    fig = go.Figure()
    gap = named_stems(gap).reset_index(drop=True)
    stems = sorted(gap["stem"].astype(str).unique()) if len(gap) else []
    # a bar per stratum and stem: every grouping column named where it tells strata apart (two image
    # sizes of one sweep are two bars, never one)
    keys = [c for c in gap.columns if c != "stem" and not c.startswith(("best_", "median_", "n_", "gap_"))]
    heads = panel_heads([tuple(r) for r in gap[keys].itertuples(index=False)], keys) if keys else [""] * len(gap)
    label = pd.Series([f"{h}<br>{s}" if h else str(s) for h, s in zip(heads, gap["stem"], strict=True)], index=gap.index)
    for opt, pattern in (("adamw", ""), ("sgd", "/")):
        col = f"best_{opt}"
        if col not in gap:
            continue
        for stem, g in gap.groupby("stem", observed=True, sort=True):
            n = g.get(f"n_{opt}", pd.Series([np.nan] * len(g), index=g.index)).fillna(0).astype(int)
            g, n = g[n > 0], n[n > 0]  # no bar for an optimizer a group never ran
            if g.empty:
                continue
            fig.add_trace(go.Bar(x=label[g.index], y=g[col],
                                 name=f"{stem} {opt}", text=[f"n={v}" for v in n], textposition="outside",
                                 marker=dict(color=color_of(stem, stems.index(str(stem))), pattern_shape=pattern,
                                             opacity=1.0 if opt == "adamw" else 0.6),
                                 hovertemplate="%{x}<br>best %{y:.2f}% of %{text}<extra>" + f"{stem} {opt}</extra>"))
    both = {"best_adamw", "best_sgd"} <= set(gap.columns)
    fig.update_layout(barmode="group", yaxis_title="best top-1 error (%)", template="plotly_white", height=600,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
                      margin=dict(t=110),
                      title="AdamW vs SGD (hatched) per stem: best run of each optimizer's own runs" if both
                      else "Best run per stem (one optimizer selected)")
    return fig


@plain_labels
def length_figure(tl: pd.DataFrame) -> go.Figure:
    """Best error vs training epochs per group (``analysis.training_length``); a point whose
    best run diverged (error 100) is a cross, each point's hover gives its n."""
    fig = go.Figure()
    keys = [c for c in tl.columns if c not in ("epochs", "best", "median", "n", "vs_longest")]
    tl = named_stems(tl)
    stems = sorted(tl["stem"].astype(str).unique()) if len(tl) else []
    groups = strata_groups(tl, keys)  # a missing stratum value: its own line
    names = panel_heads([k for k, _ in groups], keys)  # a sweep's batch size and warm-up are the sweep's
    for i, ((key, g), name) in enumerate(zip(groups, names, strict=True)):
        stem = str(key[keys.index("stem")])
        name = name or stem
        g = g.sort_values("epochs")
        fig.add_trace(go.Scatter(x=g.epochs, y=g.best, mode="lines+markers", name=name,
                                 line=dict(color=color_of(stem, stems.index(stem)), dash=DASHES[i % len(DASHES)]),
                                 marker=dict(symbol=["x" if b >= 100 else "circle" for b in g.best], size=10),
                                 customdata=g.n, hovertemplate="%{x} epochs: best %{y:.2f}% of %{customdata} run(s)"
                                                               f"<extra>{name}</extra>"))
    ticks = sorted(tl.epochs.unique()) if len(tl) else []
    fig.update_layout(xaxis_title="epochs", yaxis_title="best top-1 error (%)", xaxis_type="log",
                      template="plotly_white", height=400, title="Training length")
    fig.update_xaxes(tickvals=ticks, ticktext=[str(t) for t in ticks])
    return fig


def _log_floor(values: pd.Series) -> float:
    """Where a zero is drawn on a log axis: a decade below the smallest positive value."""
    pos = values[(values > 0) & np.isfinite(values)]
    return float(pos.min() / 10) if len(pos) else 1e-12


def _log_ceiling(values: pd.Series) -> float:
    """Where a non-finite value (inf, NaN) is drawn on a log axis: a decade above the largest finite one."""
    pos = values[(values > 0) & np.isfinite(values)]
    return float(pos.max() * 10) if len(pos) else 1.0


def _finite_positive(v: pd.Series) -> pd.Series:
    """``v`` where a log axis can draw it, else a gap."""
    return v.where((v > 0) & np.isfinite(v.to_numpy(float)))


def line_mode(values) -> str:
    """A line's plotly mode: with markers where fewer than two values are finite (a line through
    one point draws nothing: a run that diverged at step 1)."""
    return "lines+markers" if np.isfinite(np.asarray(values, float)).sum() < 2 else "lines"


def _drawn(norms: pd.Series, floor: float, ceiling: float) -> pd.Series:
    """The heights norms are drawn at on a log axis: zeros at ``floor``, inf and NaN at
    ``ceiling`` (``_off_scale``), so the axis ticks span every mark."""
    v = norms.astype(float)
    return v.where(v > 0, floor).where(np.isfinite(v), ceiling)


# The norms a log axis cannot draw: (legend entry, symbol, hover text, which), "which" of an array
# of norms; a zero below the data (at the floor), an inf or NaN above it (at the ceiling).
OFF_SCALE = ((ZERO_NORM, "circle-open", "0", lambda v: v == 0),
             (BAD_NORM, "x-thin-open", "not finite", lambda v: ~np.isfinite(v)))


def _zero_norm_note(fig: go.Figure, traces: list[pd.DataFrame]) -> None:
    """Legend entries, and only that, saying what the ``OFF_SCALE`` marks are where a trace has
    them: the marks stay in their layer's (or run's) group, which toggles them."""
    for name, symbol, _, which in OFF_SCALE:
        if any(len(t) and which(t["grad_norm"].to_numpy(float)).any() for t in traces):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup=name,
                                     legendrank=2000, marker=dict(color="#777", size=9, symbol=symbol,
                                                                  line=dict(width=2, color="#777")),
                                     hoverinfo="skip"),
                          row=1, col=1)


def _off_scale(fig: go.Figure, g: pd.DataFrame, floor: float, ceiling: float, color: str, group: str,
               where: str, visible=True) -> None:
    """The ``OFF_SCALE`` norms of ``g``, at heights shared by every series of the figure: a zero at
    ``floor``, an inf or NaN at ``ceiling``."""
    v = g.grad_norm.to_numpy(float)
    for (_, symbol, what, which), y in zip(OFF_SCALE, (floor, ceiling), strict=True):
        mask = which(v)
        if mask.any():
            fig.add_trace(go.Scatter(x=g.step[mask], y=[y] * int(mask.sum()), mode="markers", legendgroup=group,
                                     showlegend=False, visible=visible,
                                     marker=dict(color=color, size=9, symbol=symbol, line=dict(width=2, color=color)),
                                     hovertemplate="step %{x}: grad norm " + what + f"<extra>{where}</extra>"),
                          row=1, col=1)


@plain_labels
def spike_figure(trace: pd.DataFrame, steps: pd.DataFrame, title: str = "",
                 diverged_at: float | None = None) -> go.Figure:
    """Per-layer grad norms (log y) with spikes marked, first and last layer emphasised, and the
    loss underneath on the shared step axis. ``trace`` is ``analysis.mark_spikes`` output of one
    run. Zero norms are drawn as open circles a decade below the smallest norm (a log axis has no
    0); a series of one or two points is drawn with markers; ``diverged_at`` draws a line at the
    step that diverged."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    line = scatter_kind(len(trace) + len(steps))
    if len(trace):
        floor, ceiling = _log_floor(trace.grad_norm), _log_ceiling(trace.grad_norm)
        first, last = trace.depth.min(), trace.depth.max()
        layers = trace.sort_values("depth").drop_duplicates("layer")[["layer", "depth"]]
        _zero_norm_note(fig, [trace])
        for layer, depth in layers.itertuples(index=False):
            g = trace[trace.layer == layer].sort_values("step")
            edge = depth in (first, last)
            color = "#d62728" if depth == first else "#1f77b4" if depth == last else "rgba(120,120,120,0.35)"
            visible = True if edge else "legendonly"
            y = _finite_positive(g.grad_norm)  # a zero or inf is a gap, marked apart: never a made-up value
            fig.add_trace(line(x=g.step, y=y, mode="lines+markers" if len(g) <= 2 else "lines",
                                       name=f"{layer}" + (" (first)" if depth == first else " (last)" if depth == last else ""),
                                       line=dict(color=color, width=2 if edge else 1), legendgroup=layer,
                                       marker=dict(size=8), visible=visible), row=1, col=1)
            _off_scale(fig, g, floor, ceiling, color, layer, str(layer), visible)
            s = g[g.spike] if "spike" in g else g.iloc[:0]
            if len(s):
                fig.add_trace(go.Scatter(x=s.step, y=s.grad_norm, mode="markers", name=f"{layer} spikes",
                                         legendgroup=layer, showlegend=False, visible=visible,
                                         marker=dict(color=color, size=10, symbol="triangle-up",
                                                     line=dict(color="black", width=1))), row=1, col=1)
    if len(steps):
        st = steps.sort_values("step")
        fig.add_trace(line(x=st.step, y=st.loss, mode="lines+markers" if len(st) <= 2 else "lines",
                                   name="loss", line=dict(color="#444", width=1.2)), row=2, col=1)
    if diverged_at is not None and np.isfinite(diverged_at):
        for row in (1, 2):
            fig.add_vline(x=float(diverged_at), line=dict(color="black", dash="dash", width=1), row=row, col=1)
        fig.add_annotation(x=float(diverged_at), y=1, yref="paper", text=f"diverged at step {int(diverged_at)}",
                           showarrow=False, xanchor="right", yanchor="bottom")
    norms = _drawn(trace.grad_norm, floor, ceiling) if len(trace) else []
    fig.update_yaxes(type="log", title_text="grad norm", **log_ticks(norms), row=1, col=1)
    fig.update_yaxes(type="log", title_text="loss (log)", **log_ticks(steps.loss if len(steps) else []), row=2, col=1)
    short = len(trace) and trace.step.max() < 10
    for row in (1, 2):
        fig.update_xaxes(tickformat="d", dtick=1 if short else None, row=row, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(template="plotly_white", height=560, title=title, legend_title="layer")
    return fig


@plain_labels
def spike_overlay_figure(runs: list[tuple[str, pd.DataFrame, pd.DataFrame]], title: str = "Runs overlaid") -> go.Figure:
    """Several runs in one figure: first (solid) and last (dotted) layer's grad norm of each run in
    its own colour with its spikes, and each run's loss underneath. ``runs``: (label, marked
    trace, steps) per run."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    line = scatter_kind(sum(2 * len(t) // max(1, t.layer.nunique()) + len(s) for _, t, s in runs))
    _zero_norm_note(fig, [t for _, t, _ in runs])
    all_norms = pd.concat([t.grad_norm for _, t, _ in runs if len(t)]) if any(len(t) for _, t, _ in runs) \
        else pd.Series(dtype=float)
    floor, ceiling = _log_floor(all_norms), _log_ceiling(all_norms)  # one height for every run's zeros
    palette = LINE_COLORS if len(runs) <= len(LINE_COLORS) else DISTINCT_COLORS  # no two runs alike
    for i, (label, trace, steps) in enumerate(runs):
        color = palette[i % len(palette)]
        if len(trace):
            for depth, dash, which in ((trace.depth.min(), "solid", "first"), (trace.depth.max(), "dot", "last")):
                g = trace[trace.depth == depth].sort_values("step")
                _off_scale(fig, g, floor, ceiling, color, label, f"{label} ({which})")
                fig.add_trace(line(x=g.step, y=_finite_positive(g.grad_norm),
                                   mode="lines+markers" if len(g) <= 2 else "lines", name=label, legendgroup=label,
                                   showlegend=which == "first", line=dict(color=color, dash=dash, width=1.6),
                                   hovertemplate="step %{x}: %{y:.3g}<extra>" + f"{label} ({which} layer)</extra>"),
                              row=1, col=1)
                s = g[g.spike]
                if len(s):
                    fig.add_trace(go.Scatter(x=s.step, y=s.grad_norm, mode="markers", legendgroup=label,
                                             showlegend=False, marker=dict(color=color, size=10, symbol="triangle-up",
                                                                           line=dict(color="black", width=1))),
                                  row=1, col=1)
        if len(steps):
            st = steps.sort_values("step")
            fig.add_trace(line(x=st.step, y=st.loss, mode=line_mode(st.loss), name=f"{label} loss",
                               legendgroup=label, showlegend=False, line=dict(color=color, width=1.2)), row=2, col=1)
    losses = pd.concat([s.loss for _, _, s in runs if len(s)]) if any(len(s) for _, _, s in runs) else []
    fig.update_yaxes(type="log", title_text="grad norm", **log_ticks(_drawn(all_norms, floor, ceiling)), row=1, col=1)
    fig.update_yaxes(type="log", title_text="loss (log)", **log_ticks(losses), row=2, col=1)
    last = [t.step.max() for _, t, _ in runs if len(t)]
    short = bool(last) and max(last) < 10
    for row in (1, 2):  # a few steps: whole ticks, not 0 0 0 1 1 1
        fig.update_xaxes(tickformat="d", dtick=1 if short else None, row=row, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    # every run's legend entry (~30 px each, with the two marks' keys) beside the plot's margins
    fig.update_layout(template="plotly_white", height=max(600, 240 + 30 * (len(runs) + 2)),
                      title=f"{title}: first (solid) and last (dotted) layer", legend_title="run")
    return fig


@plain_labels
def spike_count_figure(counts: pd.DataFrame, title: str = "Gradient-norm spikes per run") -> go.Figure:
    """Distribution of spikes per run, per stem, one box per sweep and stem when there are several
    sweeps (``counts``: (sweep,) run_id, stem, n_spikes)."""
    fig = go.Figure()
    keys = ["sweep", "stem"] if "sweep" in counts and counts["sweep"].nunique() > 1 else ["stem"]
    counts = named_stems(counts)
    stems = sorted(counts["stem"].astype(str).unique())
    for key, g in counts.groupby(keys, observed=True, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        stem = str(key[-1])
        fig.add_trace(go.Box(y=g.n_spikes, name=" · ".join(map(str, key)), jitter=0.4,
                             boxpoints="all" if len(g) <= 500 else "outliers",
                             marker_color=color_of(stem, stems.index(stem))))
    top = float(counts.n_spikes.max()) if len(counts) else 0.0
    fig.update_layout(yaxis_title="spikes per run (all layers)", template="plotly_white", height=360,
                      title=title, showlegend=False)
    fig.update_yaxes(range=[-0.5, max(3.0, top * 1.1 + 0.5)], dtick=1 if top < 10 else None)
    return fig


def _spanning(ticks: list[float], values) -> list[float]:
    """Log ticks that end on a tick at or past each end of ``values`` (the next 1-2-5 value
    where they end inside): a parallel-coordinates axis spans its ticks, none drawn off it, no
    line ending where no tick says its value."""
    v = np.asarray(pd.Series(values).dropna(), float)
    v = v[np.isfinite(v) & (v > 0)]
    ticks = sorted(ticks)
    if not len(v) or not ticks:
        return ticks
    lo, hi = float(v.min()), float(v.max())
    grid = _grid_125(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    if ticks[0] > lo * 1.001:
        ticks.insert(0, max(g for g in grid if g <= lo * 1.001))
    if ticks[-1] < hi / 1.001:
        ticks.append(min(g for g in grid if g >= hi / 1.001))
    return ticks if len(ticks) > 1 else [ticks[0] / 2, ticks[0] * 2]


@plain_labels
def parallel_figure(df: pd.DataFrame, knobs: Sequence[str] = ("lr", "wd", "optimizer", "epochs")) -> go.Figure:
    """Parallel coordinates of the knobs that vary and the error, one line per run, coloured by
    stem (``analysis.error_vs_hparams`` output; diverged and pruned runs at 100)."""
    df = named_stems(df)
    stems = sorted(df["stem"].astype(str).unique())
    df = df.sample(frac=1.0, random_state=0)  # lines drawn in a mixed order: no stem hides under the other
    dims = []
    for k in knobs:
        if k not in df or df[k].nunique() < 2:
            continue
        if k in ("lr", "wd"):
            ticks = _spanning(log_ticks(df[k])["tickvals"], df[k])
            dims.append(dict(label=k, values=np.log10(df[k].astype(float)), range=list(np.log10(ticks[::len(ticks) - 1])),
                             tickvals=np.log10(ticks), ticktext=_labels(ticks)))
        else:
            cats = sorted(df[k].astype(str).unique(), key=lambda c: (len(c), c))
            dims.append(dict(label=k, values=df[k].astype(str).map({c: i for i, c in enumerate(cats)}),
                             tickvals=list(range(len(cats))), ticktext=cats))
    dims.append(dict(label="error %", values=df["err"], range=[0, 100], tickvals=[0, 20, 40, 60, 80, 100]))
    code = df["stem"].astype(str).map({s: i for i, s in enumerate(stems)})
    scale = [[i / max(1, len(stems) - 1), color_of(s, i)] for i, s in enumerate(stems)] if len(stems) > 1 \
        else [[0, color_of(stems[0])], [1, color_of(stems[0])]]
    fig = go.Figure(go.Parcoords(line=dict(color=code, colorscale=scale, cmin=0, cmax=max(1, len(stems) - 1)),
                                 dimensions=dims))
    for i, s in enumerate(stems):  # a legend: Parcoords has none of its own
        fig.add_annotation(text=f"<b>━ {s}</b>", x=0.12 * i, y=-0.06, xref="paper", yref="paper", showarrow=False,
                           xanchor="left", yanchor="top", font=dict(color=color_of(s, i)))  # under the axes
    fig.update_layout(template="plotly_white", height=500, margin=dict(l=70, r=90, t=100, b=60),
                      title="Runs across the knobs (lr, wd on log10 scales; diverged and pruned runs at 100%)")
    return fig


@plain_labels
def importance_figure(imp: pd.DataFrame) -> go.Figure:
    """Hyperparameter importance per stem (``analysis.hparam_importance``), grouped bars."""
    fig = go.Figure()
    imp = named_stems(imp)
    stems = sorted(imp["stem"].astype(str).unique()) if len(imp) else []
    for i, stem in enumerate(stems):
        g = imp[imp.stem.astype(str) == stem]
        x = (g["sweep"].astype(str) + " · " + g.param) if "sweep" in g else g.param
        fig.add_trace(go.Bar(x=x, y=g.importance, name=str(stem), marker_color=color_of(stem, i),
                             text=[f"n={int(n)}" for n in g.n], textposition="outside", customdata=g.n, hovertemplate="%{x}: %{y:.2f} (n=%{customdata})<extra>" + stem + "</extra>"))
    fig.update_layout(barmode="group", yaxis_title="fANOVA importance", template="plotly_white", height=380,
                      title="How much of the error each knob explains, per stem (n: runs it rests on)",
                      legend_title="stem", yaxis_range=[0, 1.12])
    return fig


STATUS_COLORS = dict(zip(RunStatus, ["#2ca02c", "#d62728", "#9467bd", "#7f7f7f", "#ff7f0e", "#1f77b4", "#aec7e8",
                                     "#c7c7c7"], strict=True))


@plain_labels
def status_figure(counts: pd.DataFrame) -> go.Figure:
    """Runs per sweep · stem, stacked by status (``counts``: sweep, stem, status, n)."""
    fig = go.Figure()
    counts = named_stems(counts)
    x = counts["sweep"].astype(str) + " · " + counts["stem"].astype(str)
    counts = counts.assign(x=x)
    for status, color in STATUS_COLORS.items():
        g = counts[counts.status == status]
        if len(g):
            fig.add_trace(go.Bar(x=g.x, y=g.n, name=status, marker_color=color,
                                 hovertemplate="%{x}: %{y} " + status + "<extra></extra>"))
    fig.update_layout(barmode="stack", template="plotly_white", height=320, yaxis_title="runs",
                      title="Runs per sweep and stem", legend_title="status")
    return fig


METRIC_LABELS = {"loss": "final validation loss", "top1_err": "final top-1 error (%)"}


def _panels(df: pd.DataFrame, axes: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per value of the group ``axes`` that vary (one panel when none does)."""
    axes = [a for a in axes if a in df and df[a].nunique(dropna=False) > 1]
    if not axes:
        return [("", df)]
    groups = strata_groups(df, axes)
    return list(zip(panel_heads([k for k, _ in groups], axes), [g for _, g in groups], strict=True))


@plain_labels
def lr_curve_figure(res: Table, metric: str = "loss") -> go.Figure:
    """Final value vs peak lr (log x), one line per (stem, fix) and one panel per group
    (``analysis.lr_curves``: its ``by``, sweep, optimizer, epochs, wd ... never mixed): the mean
    over seeds of min(value, ℓ₀); a point where a run diverged (or its value was not finite) or was
    pruned is a cross at ℓ₀, the loss at init, drawn dotted per line (Wortsman et al. 2023, Fig. 1)."""
    curves = named_stems(res.table)
    panels = _panels(curves, res.by)
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[t for t, _ in panels],
                        vertical_spacing=min(0.2, 0.45 / max(1, len(panels))))
    stems = sorted(curves["stem"].astype(str).unique()) if len(curves) else []
    fixes = sorted(curves["fix"].astype(str).unique()) if len(curves) else []
    shown: set[str] = set()
    for r, (_, part) in enumerate(panels, start=1):
        for (stem, fix), g in part.groupby(["stem", "fix"], observed=True, sort=True):
            name = f"{stem} / {fix}"
            color = color_of(stem, stems.index(str(stem)))
            dash = DASHES[fixes.index(str(fix)) % len(DASHES)]
            g = g.assign(pruned=g.get("pruned", False))  # older tables have no column
            pts = g.groupby("lr").agg(y=("clipped", "mean"), l0=("l0", "mean"), n=("clipped", "size"),
                                      nd=("diverged", "sum"), npr=("pruned", "sum")).reset_index().sort_values("lr")
            pts["div"] = pts["nd"] + pts["npr"]
            fig.add_trace(go.Scatter(
                x=pts.lr, y=pts.y, mode="lines+markers", name=name, legendgroup=name, showlegend=name not in shown,
                line=dict(color=color, dash=dash, width=2),
                marker=dict(color=color, size=[12 if d else 8 for d in pts["div"]],
                            symbol=["x" if d else "circle" for d in pts["div"]]),
                customdata=np.stack([pts.n, pts["nd"], pts["npr"]], axis=1),
                hovertemplate="lr %{x:.3g}: %{y:.4g} (mean of %{customdata[0]} run(s), %{customdata[1]} "
                              "diverged and %{customdata[2]} pruned: at ℓ₀)<extra>" + name + "</extra>"), row=r, col=1)
            shown.add(name)
            fig.add_trace(go.Scatter(x=[pts.lr.min(), pts.lr.max()], y=[pts.l0.mean()] * 2, mode="lines",
                                     legendgroup=name, showlegend=False, hoverinfo="skip",
                                     line=dict(color=color, dash="dot", width=1)), row=r, col=1)
        fig.update_xaxes(type="log", title_text="peak lr", tickangle=0, **log_ticks(curves.lr), row=r, col=1)
        fig.update_yaxes(title_text=METRIC_LABELS.get(metric, metric), row=r, col=1)
    fig.update_layout(template="plotly_white", height=max(420, 340 * len(panels)), legend_title="stem / fix",
                      title=f"{METRIC_LABELS.get(metric, metric).capitalize()} vs lr (× diverged or pruned, at ℓ₀; "
                            "dotted: ℓ₀, at init)")
    return fig


@plain_labels
def lr_sensitivity_figure(res: Table) -> go.Figure:
    """LR sensitivity per (stem, fix) with its bootstrap interval over seeds as error bars
    (``analysis.lr_sensitivity``), one x position per group (its ``by``) and fix, one colour per
    stem; the hover gives n seeds, lrs and diverged runs (a point without a bar had one seed)."""
    fig = go.Figure()
    sens = res.table
    axes = [a for a in res.by if sens[a].nunique(dropna=False) > 1]
    sens = named_stems(sens)
    stems = sorted(sens["stem"].astype(str).unique()) if len(sens) else []
    for stem, g in sens.groupby("stem", observed=True, sort=True):
        # map: a missing value is text too, "n/a" as every other name of a stratum (value_text)
        where = g[axes].map(value_text).agg(" · ".join, axis=1) + " · " if axes else ""
        x = where + g["fix"].astype(str)
        fig.add_trace(go.Scatter(
            x=x, y=g.sensitivity, mode="markers", name=str(stem), offsetgroup=str(stem),
            marker=dict(color=color_of(stem, stems.index(str(stem))), size=11),
            error_y=dict(type="data", symmetric=False, array=(g.hi - g.sensitivity).to_numpy(float),
                         arrayminus=(g.sensitivity - g.lo).to_numpy(float), thickness=1.5, width=6),
            customdata=np.stack([g.n_seeds, g.n_lr, g.n_diverged, g.lo, g.hi,
                                 g.n_pruned if "n_pruned" in g else np.zeros(len(g))], axis=1),
            hovertemplate="%{x}: %{y:.4g} [%{customdata[3]:.4g}, %{customdata[4]:.4g}]<br>%{customdata[0]} seed(s), "
                          "%{customdata[1]} lrs, %{customdata[2]} diverged and %{customdata[5]} pruned run(s)"
                          "<extra>" + str(stem) + "</extra>"))
    metric = str(sens["metric"].iloc[0]) if len(sens) and "metric" in sens else "loss"
    fig.update_layout(template="plotly_white", height=400, legend_title="stem", xaxis_title="fix",
                      scattermode="group",  # stems side by side at each fix, not on top of each other
                      yaxis_title=f"LR sensitivity ({METRIC_LABELS.get(metric, metric)})", xaxis_type="category",
                      title="LR sensitivity E_η[min(ℓ(η), ℓ₀) − ℓ*] per stem and fix (90% bootstrap interval over seeds)")
    fig.update_yaxes(rangemode="tozero")
    return fig


@plain_labels
def attn_logit_figure(res: Table, thresholds: Sequence[float] = ()) -> go.Figure:
    """Max attention logit at the chosen early step vs lr per run (``analysis.attn_logit_at``),
    log axes, colour by stem, crosses for runs that diverged later; ``thresholds`` up to 10x the
    largest logit as dotted lines. Runs whose trace ended before the step have no point (they are
    counted in the table)."""
    fig = go.Figure()
    at = res.table
    seen = at[at["logit_max"].notna()] if len(at) else at
    seen = named_stems(seen)
    stems = sorted(seen["stem"].astype(str).unique()) if len(seen) else []
    for (stem, fix, diverged), g in seen.groupby(["stem", "fix", "diverged"], observed=True, sort=True):
        name = f"{stem} / {fix}" + (" (diverged)" if diverged else "")
        fig.add_trace(go.Scatter(
            x=g.lr, y=g.logit_max.clip(lower=1e-3), mode="markers", name=name,
            marker=dict(color=color_of(stem, stems.index(str(stem))), size=11 if diverged else 8,
                        symbol="x" if diverged else "circle", line=dict(width=0.5, color="white")),
            customdata=g.at_step, hovertemplate="lr %{x:.3g}: max logit %{y:.4g} at step %{customdata}"
                                                f"<extra>{name}</extra>"))
    top = float(seen["logit_max"].max()) if len(seen) else 0.0
    drawn = [float(t) for t in thresholds if t <= 10 * top]  # near the data: a line at 1e4 would squash 2-20
    if drawn and len(seen):  # traces, not add_hline: its label lands at log10(t) on a log axis
        lo, hi = float(seen["lr"].min()), float(seen["lr"].max())
        for t in drawn:
            fig.add_trace(go.Scatter(x=[lo, hi], y=[t, t], mode="lines+text", text=["", f"threshold {t:g}"],
                                     textposition="top left", showlegend=False, hoverinfo="skip",
                                     line=dict(color="#888", dash="dot", width=1), textfont=dict(color="#888")))
    fig.update_layout(template="plotly_white", height=400, legend_title="stem / fix",
                      xaxis=dict(type="log", title="peak lr", tickangle=0, **log_ticks(seen["lr"] if len(seen) else [])),
                      yaxis=dict(type="log", title="max attention logit q·k/√d_h (over layers)",
                                 **log_ticks(pd.concat([seen["logit_max"].clip(lower=1e-3), pd.Series(drawn, dtype=float)])
                                             if len(seen) else [])),
                      title="Max attention logit early in training vs lr (× diverged later)")
    return fig


# Pruner families (stability.replay): ours solid, Optuna's open; a family keeps its colour in
# every figure, whichever others are shown.
PRUNER_COLORS = {"nonfinite": "#7f7f7f", "above": "#d62728", "chance": "#1f77b4", "loss": "#2ca02c",
                 "loss+rise": "#ff7f0e", "loss+attn_logit": "#9467bd", "loss+grad_jump": "#8c564b",
                 "loss+log_z": "#e377c2", "loss+update_ratio": "#17becf",
                 "optuna-median": "#111111", "optuna-percentile": "#bcbd22", "optuna-wilcoxon": "#7570b3",
                 "optuna-threshold": "#a6761d", "optuna-hyperband": "#e7298a"}
OPTUNA_SYMBOLS = ["circle-open", "square-open", "diamond-open", "triangle-up-open", "star-open", "hexagon-open"]


def _every_text(k) -> str:
    return "as recorded" if not k else "every step" if int(k) == 1 else f"every {int(k)} steps"


@plain_labels
def pruning_pareto(curve: pd.DataFrame) -> go.Figure:
    """What each pruner setting saves against what it costs (``replay.study(...).curve``): per
    setting, the good runs it stopped (% of the good runs) against the doomed runs' steps it saved
    (% of their steps, with the 90 % bootstrap interval as error bars); one colour per family, ours
    solid, Optuna's open; our rules' Pareto settings joined by a step line (the most saved for at
    most that many good runs stopped). One panel per trace interval replayed (``every``, 0: as
    recorded) when there are several. Hover: the setting, its interval, runs stopped, good and
    near-best runs stopped, wall time."""
    from .replay import pareto  # the front `stability replay` marks, here over our rules alone

    everies = sorted(curve["every"].unique()) if len(curve) else [0]
    fig = make_subplots(rows=1, cols=len(everies), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[_every_text(k) for k in everies] if len(everies) > 1 else None)
    families = list(dict.fromkeys(curve["family"])) if len(curve) else []
    theirs = [f for f in families if str(f).startswith("optuna")]
    from plotly.colors import qualitative

    used = {c.lower() for c in PRUNER_COLORS.values()}
    # other families (the presets) take colours no named family has, here or on another figure
    spare = iter([c for c in dict.fromkeys(c.lower() for c in LINE_COLORS + qualitative.Dark24 + qualitative.Light24)
                  if c not in used])
    colors = {f: PRUNER_COLORS.get(f) or next(spare) for f in families}
    for col, k in enumerate(everies, start=1):
        part = curve[curve["every"] == k]
        ours = part[~part["family"].isin(theirs)]
        ours = ours[ours["good_stopped_rate"].notna() & ours["doomed_saved"].notna()]
        if len(ours):
            front = ours[pareto(ours).to_numpy()].sort_values(["good_stopped_rate", "doomed_saved"])
            front = front.drop_duplicates(["good_stopped_rate", "doomed_saved"])
            fig.add_trace(go.Scatter(x=100 * front["good_stopped_rate"], y=100 * front["doomed_saved"],
                                     mode="lines", line=dict(color="#333", width=2, dash="dash", shape="hv"),
                                     name="Pareto front (ours)", legendgroup="pareto", legendrank=2000,
                                     showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
        for fam in families:
            g = part[part["family"] == fam]
            if g.empty:
                continue
            optuna = fam in theirs
            x, y = 100 * g["good_stopped_rate"].astype(float), 100 * g["doomed_saved"].astype(float)
            up = np.nan_to_num(100 * g["doomed_saved_hi"].astype(float) - y)
            down = np.nan_to_num(y - 100 * g["doomed_saved_lo"].astype(float))
            custom = pd.DataFrame({
                "setting": g["setting"].astype(str), "every": [_every_text(v) for v in g["every"]],
                "stopped": g["stopped"], "runs": g["runs"], "good_stopped": g["good_stopped"], "good": g["good"],
                "near": g["near_best_stopped"], "n_near": g["near_best"], "lo": 100 * g["doomed_saved_lo"].astype(float),
                "hi": 100 * g["doomed_saved_hi"].astype(float), "wall": g["wall_time"].astype(float)}).to_numpy(object)
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="markers", name=str(fam), legendgroup=str(fam), showlegend=col == 1,
                marker=dict(color=colors[fam], size=10 if optuna else 9, line=dict(width=2 if optuna else 0.5,
                            color=colors[fam] if optuna else "white"),
                            symbol=OPTUNA_SYMBOLS[theirs.index(fam) % len(OPTUNA_SYMBOLS)] if optuna else "circle"),
                error_y=dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1, width=3,
                             color=_rgba(colors[fam], 0.5)),
                customdata=custom,
                hovertemplate=f"<b>{fam}</b> %{{customdata[0]}}<br>trace interval: %{{customdata[1]}}<br>"
                              "stopped %{customdata[2]} of %{customdata[3]} runs<br>good runs stopped "
                              "%{customdata[4]} of %{customdata[5]} (%{x:.0f} %)<br>near-best stopped "
                              "%{customdata[6]} of %{customdata[7]}<br>doomed steps saved %{y:.0f} % "
                              "[%{customdata[8]:.0f}, %{customdata[9]:.0f}]<br>wall time "
                              "%{customdata[10]:.2f}×<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="good runs wrongly stopped (%)", row=1, col=col)
    fig.update_yaxes(title_text="doomed runs' steps saved (%)", row=1, col=1)
    fig.update_layout(template="plotly_white", height=520, legend=dict(title="pruner (open: Optuna's)", tracegroupgap=0),
                      margin=dict(t=40 if len(everies) > 1 else 20))
    return fig
