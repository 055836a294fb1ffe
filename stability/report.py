"""A self-contained HTML report of one sweep: EDF, lr x wd and spike figures, summary tables."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from . import analysis, plots, store
from .errors import ConfigError


def build_report(root: str | Path, sweep: str, unreadable: list[str] | None = None) -> str:
    """The report as one HTML string (plotly.js inlined once, no network needed to view it).
    Unreadable result files are named at the top (and appended to ``unreadable``)."""
    bad = unreadable if unreadable is not None else []
    errors: list[str] = []  # a file damaged in place after the check passed it fails here
    runs = store.read_table(root, "runs", sweep=sweep, errors=errors)
    bad += [f"{p}: {why}" for p, why in store.damaged(root, sweep, errors).items()]
    if runs.empty:
        raise ConfigError(f"sweep: no readable runs of sweep {sweep!r} under {root}"
                          + (f" (unreadable: {'; '.join(b.splitlines()[0][:300] for b in bad)})" if bad else ""))
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
    parts.append(sensitivity_section(root, sweep, runs))
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


def _note(df) -> str:
    text = analysis.sensitivity.note(df)
    return f"<p><i>{html.escape(text)}</i></p>" if text else ""


def sensitivity_section(root: str | Path, sweep: str, runs) -> str:
    """LR sensitivity (final validation loss and top-1 error) per group, stem and fix with its
    interval over seeds, the differences between stems and fixes as verdicts, the loss-vs-lr and
    sensitivity figures, and the attention-logit/divergence table (Wortsman et al. 2023). Results
    without the columns these need get a line saying so, not an error. Plotly.js is already in
    the page (the report's first figure)."""
    out = ["<h2 id='lr-sensitivity'>LR sensitivity and attention-logit growth (Wortsman et al. 2023)</h2>",
           "<p>LR sensitivity = E<sub>η</sub>[min(ℓ(η), ℓ<sub>0</sub>) − ℓ*] over the lrs of runs that differ only "
           "in lr and seed: ℓ the final value, ℓ<sub>0</sub> the value at init (a diverged run counts as "
           "ℓ<sub>0</sub>), ℓ* the best over the range; per seed, then the mean with a 90% bootstrap interval "
           "over seeds. Lower is less sensitive. Groups: every design axis and fixed hyper-parameter that "
           "varies, nothing pooled; one line per stem and fix (docs/methodology.md).</p>"]
    for metric, label in (("loss", "final validation loss"), ("top1_err", "top-1 error (%)")):
        table = analysis.lr_sensitivity(runs, metric=metric)
        out.append(f"<h3>LR sensitivity on {label}</h3>" + _note(table))
        if table.empty:
            continue
        out.append(table.round(4).to_html(index=False, border=0))
        lines = []
        for axis in ("stem", "fix"):
            diff = analysis.sensitivity_diff(runs, axis=axis, metric=metric)
            lines += [analysis.sensitivity_verdict(r) for _, r in diff.iterrows()]
        if lines:
            out.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in lines) + "</ul>")
        if metric == "loss":
            curves = analysis.lr_curves(runs, metric=metric, min_lrs=analysis.sensitivity.MIN_LRS)
            out.append(plots.lr_curve_figure(curves, metric).to_html(full_html=False, include_plotlyjs=False))
            out.append(plots.lr_sensitivity_figure(table).to_html(full_html=False, include_plotlyjs=False))
    gn = store.read_table(root, "grad_norms", sweep=sweep, columns=["step", "layer", "attn_logit_max"])
    sens = analysis.sensitivity
    steps = store.read_table(root, "steps", sweep=sweep, columns=["step", "loss"])
    at = analysis.attn_logit_at(runs, gn)
    # the group axes, not the lines: the pooled tables pool stems and fixes only
    axes = [c for c in list(at.columns)[:list(at.columns).index("stem")] if c != "run_id"]
    out.append(f"<h3>Does a large attention logit early in training go with divergence or collapse?</h3>"
               f"<p>Per run: the max attention logit q·k/√d<sub>h</sub> (over layers, heads, tokens, batch) at "
               f"the first traced step at or after {sens.ATTN_FRACTION:.0%} of the group's training (<code>at_steps</code>). "
               f"Two outcomes, never merged: <b>diverged</b> ({html.escape(sens.OUTCOMES['diverged'])}) and "
               f"<b>unstable</b> ({html.escape(sens.OUTCOMES['unstable'])}; at high lr, how small models fail in "
               f"Wortsman et al.). AUC: the chance that a run with the outcome had the larger logit than one "
               f"without (0.5: no information), over all pairs and over pairs at one lr (and one stem and fix "
               f"where those are pooled: <code>strata</code>), with 90% bootstrap intervals over runs and "
               f"permutation p-values; the lr raises both logit and failure, so only the one-lr AUC says whether "
               f"the logit tells more than the lr. <code>loss_auc</code>: the same for the training loss at that "
               f"step, the baseline a warning signal has to beat. Per line, then pooled over stems and fixes. "
               f"Runs that diverged before the step are counted apart.</p>" + _note(at))
    if not at.empty:
        aucs = [analysis.attn_logit_auc(runs, gn, outcome=o, by=b, steps=steps)
                for o in sens.OUTCOMES for b in (None, axes)]
        lines = [analysis.auc_verdict(r) for t in aucs[1::2] for _, r in t.iterrows()]
        lines += [sens.note(t) for t in aucs[1::2] if t.empty and sens.note(t)]
        out.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in lines) + "</ul>")
        auc = pd.concat([t for t in aucs if not t.empty], ignore_index=True) if any(not t.empty for t in aucs) \
            else None
        if auc is not None:
            out.append(auc.drop(columns=["step"]).round(3).to_html(index=False, border=0, na_rep=""))
        out.append("<p>Per threshold (fixed in advance), pooled over stems and fixes: the fraction of runs above "
                   "it and at or below it with the outcome (<code>out_above</code>, <code>out_below</code>), each "
                   "with its 90% Wilson interval and n, and the difference (above − below, &gt; 0: a large logit "
                   "goes with the outcome) with Newcombe's interval.</p>")
        for o in sens.OUTCOMES:
            table = analysis.attn_logit_divergence(runs, gn, outcome=o, by=axes)
            if table.empty or not table["out_above"].add(table["out_below"]).any():
                out.append(f"<p>{o}: {html.escape(sens.note(table) or 'no run had this outcome')}.</p>")
                continue
            out.append(table.drop(columns=["step"]).round(4).to_html(index=False, border=0, na_rep=""))
    return "".join(out)


def write_report(root: str | Path, sweep: str, out: str | Path, unreadable: list[str] | None = None) -> Path:
    return store.write_text_atomic(out, build_report(root, sweep, unreadable))
