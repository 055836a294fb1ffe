"""A self-contained HTML report of one sweep: EDF, lr x wd and spike figures, summary tables."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

from . import analysis, plots, store


def build_report(root: str | Path, sweep: str, unreadable: list[str] | None = None) -> str:
    """The report as one HTML string (plotly.js inlined once, no network needed to view it).
    Unreadable result files are named at the top (and appended to ``unreadable``)."""
    bad = unreadable if unreadable is not None else []
    bad += [f"{p}: {why}" for p, why in store.unreadable(root, sweep)]
    runs = store.read_table(root, "runs", sweep=sweep)
    if runs.empty:
        raise ValueError(f"no runs of sweep {sweep!r} under {root}")
    figures = []
    by = analysis.default_by(analysis.with_size(runs))  # every design axis that varies: nothing pooled
    points = analysis.edf(runs, by=by, relative=True)
    figures.append(("EDF of Δ top-1 error per stem", plots.edf_figure(points, relative=True)))
    figures.append(("EDF of top-1 error per stem", plots.edf_figure(analysis.edf(runs, by=by))))
    hp = analysis.error_vs_hparams(runs)
    if not hp.empty:
        figures.append(("Error vs lr and wd", plots.lr_wd_figure(hp)))
    worst = analysis.worst_runs(runs, k=1)
    ids = worst.run_id.tolist()
    gn = store.read_table(root, "grad_norms", sweep=sweep, run_ids=ids)
    steps = store.read_table(root, "steps", sweep=sweep, run_ids=ids)
    for r in worst.itertuples():
        trace = analysis.downsample(analysis.mark_spikes(gn[gn.run_id == r.run_id]), 2000)
        figures.append((f"Worst {r.stem} run ({r.run_id}, {r.status}): gradient norms per layer",
                        plots.spike_figure(trace, analysis.downsample(steps[steps.run_id == r.run_id], 3000, value="loss"))))
    parts = []
    for i, (title, fig) in enumerate(figures):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    tables = [("Summary per group (failed, preempted and running runs are counted, not in the EDF)",
               analysis.summary(runs, by=by)),
              ("Comparison between stems: effects are b − a with 90% bootstrap intervals", analysis.compare(runs)),
              ("Best configuration per group", analysis.best_configs(runs, by=by))]
    for title, df in tables:
        parts.append(f"<h2>{html.escape(title)}</h2>" + df.round(4).to_html(index=False, border=0))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    counts = ", ".join(f"{k}: {v}" for k, v in runs.status.value_counts().items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>stability report: {html.escape(sweep)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px}</style></head><body>"
            f"<h1>Sweep {html.escape(sweep)}</h1><p>{len(runs)} runs ({html.escape(counts)}) from "
            f"<code>{html.escape(str(root))}</code>; made {stamp}. Diverged runs count at 100% error. "
            f"Grouped by {html.escape(' × '.join(by))}: nothing pooled.</p>"
            + (f"<p style='color:#b00'><b>{len(bad)} unreadable result file(s)</b>, left out of everything below "
               "(their runs are missing or lack curves; <code>stability grid run</code> quarantines them and "
               "reruns those runs):</p><ul>" + "".join(f"<li><code>{html.escape(b)}</code></li>" for b in bad)
               + "</ul>" if bad else "")
            + "".join(parts) + "</body></html>")


def write_report(root: str | Path, sweep: str, out: str | Path, unreadable: list[str] | None = None) -> Path:
    return store.write_text_atomic(out, build_report(root, sweep, unreadable))
