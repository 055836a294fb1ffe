"""A self-contained HTML report of one sweep: the findings view (how each stem's runs ended, per stratum, and
the stem verdicts: the dashboard Overview's table and lines), EDF, lr x wd and spike figures, tables, LR sensitivity."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis, plots, store
from .analysis.edf import LEFT_OUT
from .analysis.grouping import strata_groups, stratum_rows
from .errors import ConfigError

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px;"
         "text-align:right;white-space:nowrap}th{position:sticky;top:0;background:#fff}"
         ".wide{overflow-x:auto;max-width:100%;margin:0.5em 0}"  # a wide table scrolls sideways, never cut
         ".flag{color:#b00;font-weight:bold}.dim{color:#777}li{margin:2px 0}")


def cell(v) -> str:
    """One format for every number of every table: 3 significant digits (lr 0.00141, wd 0.0014 and
    0.001 are one value printed one way), whole numbers whole, "n/a" for a missing one."""
    if v is None or v is pd.NA or (isinstance(v, float | np.floating) and np.isnan(v)):
        return "n/a"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = 0.0 if abs(v) < 1e-12 else float(v)  # an interval's bound at 0 up to rounding
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def interval(lo, hi, fmt=cell) -> str:
    """"[lo, hi]", or "n/a" when the interval is undefined."""
    if pd.isna(lo) or pd.isna(hi):
        return "n/a"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def table(df: pd.DataFrame, escape: bool = True) -> str:
    """A table with every row, numbers by ``cell``, columns holding nothing (every value missing or
    empty) left out, in a container that scrolls sideways when it is wider than the page."""
    df = df.loc[:, [c for c in df.columns if not df[c].map(lambda v: cell(v) in ("n/a", "")).all()]]
    text = df.map(cell) if len(df) else df
    return "<div class='wide'>" + text.to_html(index=False, border=0, escape=escape) + "</div>"


def _bullets(lines, named: bool = False) -> str:
    """A list of lines; ``named``: each line is (its group, the line), the group in bold."""
    items = [f"<b>{html.escape(t[0])}</b>: {html.escape(t[1])}" if named else html.escape(t) for t in lines]
    return "<ul>" + "".join(f"<li>{t}</li>" for t in items) + "</ul>" if items else ""


def verdict_lines(verdicts: pd.DataFrame, outcomes: pd.DataFrame, keys: list[str], sweep: str) -> list[tuple[str, str]]:
    """(stratum, line) per stratum: ``analysis.verdict_line`` where both stems ran, else why there is
    no verdict; what the report's findings list and ``stability report`` prints on the terminal.

    Args:
        verdicts: ``analysis.stem_verdicts(runs)``.
        outcomes: ``analysis.stem_outcomes(runs, by=keys)``.
        keys: the strata's columns (``analysis.strata(runs)``).
        sweep: the sweep's name, the stratum's name when nothing varies.
    """
    lines = []
    for _, v in verdicts.iterrows():
        name = analysis.group_text({k: v[k] for k in keys}) if keys else f"sweep {sweep}"
        lines.append((name, analysis.verdict_line(v)))
    for key, g in strata_groups(outcomes, keys):  # a missing value's stratum too; stratum_rows matches it
        if not (len(verdicts) and stratum_rows(verdicts, dict(zip(keys, key, strict=True))).any()):
            name = analysis.group_text(dict(zip(keys, key, strict=True))) if keys else f"sweep {sweep}"
            done = g.loc[g["runs"] > 0, "stem"]  # stems with finished runs (a running or failed one has none)
            why = (f"only {', '.join(map(str, done))} ran here: nothing to compare" if len(done)
                   else "no run here has finished")
            lines.append((name, f"no verdict ({why})"))
    return lines


def findings_section(runs: pd.DataFrame, verdicts: pd.DataFrame, sweep: str, mix: pd.DataFrame | None = None,
                     said: list[tuple[str, str]] | None = None) -> str:
    """Per stratum (sweep x optimizer x epochs ...: never pooled) and stem how the runs ended
    (``analysis.stem_outcomes``), then one verdict line per stratum (``analysis.stem_verdicts``,
    ``analysis.verdict_line``): the same table and lines as the dashboard's Overview; ``mix``
    (``analysis.grouping.data_mix``): runs on different data, warned of with their ids; ``said`` gets
    the verdict lines (``verdict_lines``)."""
    from .analysis import findings, stems

    keys = analysis.strata(runs)  # the strata, named (stem_outcomes' default grouping)
    out = analysis.stem_outcomes(runs, by=keys)
    pruned = bool(len(out) and out["pruned"].any())  # a pruner stopped runs: counted beside diverged
    rows = []

    def esc(v: object) -> str:  # a value from the result files, in a table written unescaped (the flag's span)
        return html.escape(str(v))

    for r in out.itertuples(index=False):
        r = r._asdict()
        n = int(r["runs"])
        row = {k: esc(cell(r[k])) for k in keys} | {"stem": esc(r["stem"]), "finished runs": n}  # cell: NaN as n/a
        row["diverged"] = f"{r['diverged']} ({cell(r['diverged_pct'])} %)" if n else "0"
        if pruned:
            row["pruned"] = f"{r['pruned']} ({cell(r['pruned_pct'])} %)" if n else "0"
        row["stuck at chance"] = f"{r['at_chance']} ({cell(r['at_chance_pct'])} %)" if n else "0"
        row["median error (n)"] = f"{cell(r['median_err'])} % (n = {n})" if n else "n/a (n = 0)"
        row["best error"] = f"{cell(r['best_err'])} %" if n else "n/a"
        row["error at init"] = f"{cell(r['chance_err'])} %" if pd.notna(r["chance_err"]) else "n/a"
        row[""] = "<span class='flag'>never left chance</span>" if r["never_left_chance"] else ""
        if out["left_out"].any():
            row["left out (failed, preempted, running)"] = esc(r["left_out"])
        rows.append(row)
    head = ("<h2 id='findings'>Findings: how each stem's runs ended</h2>"
            f"<p>Per {html.escape(' × '.join(keys) or 'sweep')} (never pooled) and stem. <b>Diverged</b>: a "
            "non-finite loss or one past the divergence bound (counted at 100 % error in the medians). "
            + ("<b>Pruned</b>: stopped early by the run's pruner as doomed (counted apart, and at 100 % error "
               "like a diverged run; never as completed). " if pruned else "") +
            f"<b>Stuck at chance</b>: completed with a top-1 error ≥ {findings.CHANCE:g} × its error at "
            "initialisation (the error of an untrained model). <b>Never left chance</b>: no run of the stem "
            "learned anything.</p>")
    if out.empty:
        return head + "<p>No run of this sweep has finished.</p>"
    if mix is not None and (note := analysis.grouping.mixed_data_note(mix)):
        head += (f"<p class='flag'>Warning: some {html.escape(note)}.</p>"
                 + _bullets(analysis.grouping.mixed_data_runs(mix, limit=None)))
    lines = verdict_lines(verdicts, out, keys, sweep)
    if said is not None:
        said += lines
    rule = (f"<p class='dim'>Verdict: how often b's error is below a's over pairs of runs (diverged and pruned runs "
            f"at 100 %, ties one half), tested against one half with Brunner–Munzel's two-sided permutation test, "
            f"Holm-adjusted over the strata, at α = {stems.ALPHA:g}; the median error of b − a with its 90 % "
            f"bootstrap interval is the effect in points. No verdict where a stem has fewer than {stems.MIN_RUNS} "
            "finished runs or both stems never left chance.</p>")
    return head + table(pd.DataFrame(rows), escape=False) + "<h3>Verdicts per stratum</h3>" + _bullets(lines, named=True) + rule


def build_report(root: str | Path, sweep: str, unreadable: list[str] | None = None,
                 mixed_data: list[dict] | None = None, said: list[tuple[str, str]] | None = None) -> str:
    """The report as one HTML string (plotly.js inlined once, no network needed to view it).
    Unreadable result files are named at the top (and appended to ``unreadable``); runs of the
    sweep on different data are warned of in its findings (and ``mixed_data`` gets
    ``analysis.grouping.data_mix``'s records); ``said`` gets the verdict lines, (stratum, line)."""
    bad = unreadable if unreadable is not None else []
    errors: list[str] = []  # a file damaged in place after the check passed it fails here
    runs = store.read_table(root, "runs", sweep=sweep, errors=errors)
    bad += [f"{p}: {why}" for p, why in store.damaged(root, sweep, errors).items()]
    if runs.empty:
        raise ConfigError(f"sweep: no readable runs of sweep {sweep!r} under {root}"
                          + (f" (unreadable: {'; '.join(b.splitlines()[0][:300] for b in bad)})" if bad else ""))
    verdicts = analysis.stem_verdicts(runs)  # compare(runs, by="stem") with the gated verdicts
    mix = analysis.grouping.data_mix(runs)
    if mixed_data is not None:
        mixed_data += mix.to_dict("records")
    parts = [findings_section(runs, verdicts, sweep, mix, said)]
    figures = []
    by = analysis.default_by(analysis.with_design(runs))  # every design axis that varies: nothing pooled
    points = analysis.edf(runs, by=by, relative=True)
    figures.append(("EDF of Δ top-1 error per stem", plots.edf_figure(points, relative=True)))
    figures.append(("EDF of top-1 error per stem", plots.edf_figure(analysis.edf(runs, by=by))))
    hp = analysis.error_vs_hparams(runs)
    if not hp.empty:
        figures.append(("Error vs lr and wd", plots.lr_wd_figure(hp)))
    worst = analysis.worst_runs(runs, k=1)
    ids = worst.run_id.tolist()
    chance = dict(zip(runs.run_id, analysis.findings.at_chance(runs, "top1_err"), strict=True))
    gn = store.read_table(root, "grad_norms", sweep=sweep, run_ids=ids)
    steps = store.read_table(root, "steps", sweep=sweep, run_ids=ids)
    for r in worst.itertuples():
        trace = analysis.downsample(analysis.mark_spikes(gn[gn.run_id == r.run_id]), 2000)
        how = f"{r.status}, stuck at chance" if chance.get(r.run_id) else str(r.status)
        if r.pruned:  # scored as diverged (the EDF's default); its own last error said beside
            how = f"pruned at a last error of {cell(r.top1_err)} %, scored as diverged"
        figures.append((f"Worst {r.stem} run ({r.run_id}, {how}, top-1 error {cell(r.err)} %): gradient norms "
                        "per layer",
                        plots.spike_figure(trace, analysis.downsample(steps[steps.run_id == r.run_id], 3000, value="loss"),
                                           diverged_at=getattr(r, "diverged_at_step", None))))
    for i, (title, fig) in enumerate(figures):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append(_tables(runs, verdicts, by))
    parts.append(sensitivity_section(root, sweep, runs))
    parts.append(pruning_section(root, sweep, runs))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    counts = ", ".join(f"{k}: {v}" for k, v in runs.status.value_counts().items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>stability report: {html.escape(sweep)}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>Sweep {html.escape(sweep)}</h1><p>{len(runs)} runs ({html.escape(counts)}) from "
            f"<code>{html.escape(str(root))}</code>; made {stamp}. Diverged runs count at 100% error"
            + (", and so do pruned runs (stopped early by their pruner as doomed; counted apart)"
               if runs.status.eq(store.RunStatus.PRUNED).any() else "") + ". "
            f"Grouped by {html.escape(' × '.join(by))}: nothing pooled.</p>"
            + (f"<p style='color:#b00'><b>{len(bad)} unreadable result file(s)</b>, left out of everything below "
               "(their runs are missing or lack curves; <code>stability grid run</code> quarantines them and "
               "reruns those runs):</p><ul>" + "".join(f"<li><code>{html.escape(b)}</code></li>" for b in bad)
               + "</ul>" if bad else "")
            + "".join(parts) + "</body></html>")


def _tables(runs: pd.DataFrame, verdicts: pd.DataFrame, by: list[str]) -> str:
    """The comparison between stems (the columns that matter of ``stem_verdicts``, intervals in one
    cell) and the best configuration per group; runs left out of everything, only where some are."""
    out = []
    left = analysis.outcomes(runs, by)
    if len(left) and left[list(LEFT_OUT)].to_numpy().any():
        out.append("<h2>Runs left out (failed, preempted, running: not in the EDFs nor the findings)</h2>"
                   + table(left[left[list(LEFT_OUT)].to_numpy().any(axis=1)]))
    if not verdicts.empty:
        keys = analysis.strata(runs)  # stem_verdicts' strata, named
        cmp = verdicts[keys].copy()
        for c in ("a", "b", "verdict", "n_a", "n_b", "median_a", "median_b", "median_diff"):
            cmp[c] = verdicts[c]
        cmp["verdict"] = cmp["verdict"].replace({"none": "no verdict"})  # the findings' words
        cmp["median_diff 90% CI"] = [interval(lo, hi) for lo, hi in
                                     zip(verdicts.median_diff_lo, verdicts.median_diff_hi, strict=True)]
        for c in ("prob_b_lower", "p", "p_holm", "ks_p", "n_pairs", "paired_median_diff", "sign_p"):
            if c in verdicts:
                cmp[c] = verdicts[c]
        if "n_pairs" in cmp and not cmp["n_pairs"].any():
            cmp = cmp.drop(columns=[c for c in ("n_pairs", "paired_median_diff", "sign_p") if c in cmp])
        out.append("<h2>Comparison between stems</h2><p>Effects are b − a in error points (negative: b lower) "
                   "with 90% bootstrap intervals; <code>ks_p</code>: KS permutation test; <code>prob_b_lower</code>: the "
                   "share of run pairs where b's error is lower (ties one half); <code>p</code>: the verdict's test "
                   "of it = 0.5 (Brunner–Munzel, permutation), <code>p_holm</code> over the strata "
                   "(all columns: <code>analysis.stem_verdicts</code>).</p>" + table(cmp))
    best = analysis.best_configs(runs, by=by)
    if not best.empty:
        best = best.rename(columns={"err": "top1_err"})
        out.append("<h2>Best configuration per group</h2>" + table(best.drop(columns=["pooled"])
                                                                    if not best["pooled"].any() else best))
    return "".join(out)


def _note(text: str) -> str:
    return f"<p><i>{html.escape(text)}</i></p>" if text else ""


def sensitivity_section(root: str | Path, sweep: str, runs) -> str:
    """LR sensitivity (final validation loss and top-1 error) per group, stem and fix with its
    interval over seeds, the differences between stems and fixes as verdicts, the loss-vs-lr and
    sensitivity figures, and the attention-logit/divergence table (Wortsman et al. 2023). Results
    without the columns these need get a line saying so, not an error. Plotly.js is already in
    the page (the report's first figure)."""
    out = ["<h2 id='lr-sensitivity'>LR sensitivity and attention-logit growth (Wortsman et al. 2023)</h2>",
           "<p>LR sensitivity = E<sub>η</sub>[min(ℓ(η), ℓ<sub>0</sub>) − ℓ*] over the lrs of runs that differ only "
           "in lr and seed: ℓ the final value, ℓ<sub>0</sub> the value at init (a diverged or pruned run counts "
           "as ℓ<sub>0</sub>), ℓ* the best over the range; per seed, then the mean with a 90% bootstrap interval "
           "over seeds. Lower is less sensitive. Groups: every design axis and fixed hyper-parameter that "
           "varies, nothing pooled; one line per stem and fix (docs/methodology.md).</p>"]
    metrics = (("loss", "final validation loss"), ("top1_err", "top-1 error (%)"))
    diffs = {m: [analysis.sensitivity_diff(runs, axis=axis, metric=m) for axis in ("stem", "fix")] for m, _ in metrics}
    family = analysis.sensitivity_lines([d for m, _ in metrics for d in diffs[m]])  # one Holm family: all shown
    verdicts, at = {}, 0
    for m, _ in metrics:
        n = sum(len(d.table) for d in diffs[m])
        verdicts[m], at = family[at:at + n], at + n
    for metric, label in metrics:
        sens = analysis.lr_sensitivity(runs, metric=metric)
        sens_table = sens.table
        said = _note(sens.note)
        out.append(f"<h3>LR sensitivity on {label}</h3>"
                   + ("<p><i>The same groups left out, for the same reason, as on the loss.</i></p>"
                      if said and said in "".join(out) else said))
        if sens_table.empty:
            continue
        shown = _ci(sens_table.drop(columns=["metric"]), "sensitivity", "lo", "hi")
        out.append(table(shown.drop(columns=["pooled"]) if not shown["pooled"].any() else shown))
        out.append(_bullets(verdicts[metric]))
        if metric == "loss":
            curves = analysis.lr_curves(runs, metric=metric, min_lrs=analysis.sensitivity.MIN_LRS)
            out.append(plots.lr_curve_figure(curves, metric).to_html(full_html=False, include_plotlyjs=False))
            out.append(plots.lr_sensitivity_figure(sens).to_html(full_html=False, include_plotlyjs=False))
    gn = store.read_table(root, "grad_norms", sweep=sweep, columns=["step", "layer", "attn_logit_max"])
    attn = analysis.attention
    steps = store.read_table(root, "steps", sweep=sweep, columns=["step", "loss"])
    at = analysis.attn_logit_at(runs, gn)
    axes = list(at.by)  # the group axes, not the lines: the pooled tables pool stems and fixes only
    out.append(f"<h3>Does a large attention logit early in training go with divergence or collapse?</h3>"
               f"<p>Per run: the max attention logit q·k/√d<sub>h</sub> (over layers, heads, tokens, batch) at "
               f"the first traced step at or after {attn.ATTN_FRACTION:.0%} of the group's training (<code>at_steps</code>). "
               f"Two outcomes, never merged: <b>diverged</b> ({html.escape(attn.OUTCOMES['diverged'])}) and "
               f"<b>unstable</b> ({html.escape(attn.OUTCOMES['unstable'])}; at high lr, how small models fail in "
               f"Wortsman et al.). AUC: the chance that a run with the outcome had the larger logit than one "
               f"without (0.5: no information), over all pairs and over pairs at one lr (and one stem and fix "
               f"where those are pooled: <code>strata</code>), with 90% bootstrap intervals over runs and "
               f"permutation p-values; the lr raises both logit and failure, so only the one-lr AUC says whether "
               f"the logit tells more than the lr. <code>loss_auc</code>: the same for the training loss at that "
               f"step, the baseline a warning signal has to beat. Per line, then pooled over stems and fixes. "
               f"Runs that diverged before the step are counted apart; pruned runs are left out (whether they "
               f"would have diverged or collapsed is unknown), counted in the note.</p>" + _note(at.note))
    if not at.table.empty:
        aucs = [analysis.attn_logit_auc(runs, gn, outcome=o, by=b, steps=steps)
                for o in attn.OUTCOMES for b in (None, axes)]
        out.append(_bullets(analysis.auc_lines(aucs[1::2])))
        shown_aucs = [t.table for t in aucs if not t.table.empty]
        auc = pd.concat(shown_aucs, ignore_index=True) if shown_aucs else pd.DataFrame()
        if len(auc):
            for c in analysis.tables.SERIES:  # the pooled rows hold every stem and fix
                if c in auc:
                    auc[c] = auc[c].astype(object).where(auc[c].notna(), "pooled")
            paired = auc[(auc["n_pairs"] > 0) | (auc["n_pairs_within"] > 0)]
            if paired.empty:
                out.append("<p>No AUC table: in every group (and every line) no run or every run had the outcome, "
                           "so there is no pair to compare.</p>")
            elif len(paired) < len(auc):
                out.append(f"<p>{len(auc) - len(paired)} of {len(auc)} rows of the AUC table are left out: no run "
                           "or every run of their group had the outcome (no pair to compare).</p>")
            if len(paired):
                shown = _ci(_ci(paired.drop(columns=["step"]), "auc", "auc_lo", "auc_hi"),
                            "auc_within", "auc_within_lo", "auc_within_hi")
                out.append(table(shown))
        out.append("<p>Per threshold (fixed in advance), pooled over stems and fixes: the runs above it and at or "
                   "below it, how many of each had the outcome (<code>out_above</code> of <code>n_above</code>) and "
                   "the fraction with its 90% Wilson interval, and the difference (above − below, &gt; 0: a large "
                   "logit goes with the outcome) with Newcombe's interval. Only thresholds with runs on both sides "
                   "are shown.</p>")
        for o in attn.OUTCOMES:
            out.append(_threshold_table(analysis.attn_logit_divergence(runs, gn, outcome=o, by=axes), o, at.table))
    return "".join(out)


def pruning_section(root: str | Path, sweep: str, runs: pd.DataFrame) -> str:
    """Pruning by replay (``stability replay`` at the recorded trace interval, ours and Optuna's
    pruners on 2 simulated workers): the figure of doomed steps saved vs good runs stopped per setting
    (``plots.pruning_pareto``) and the Pareto settings' table; "" when no run of the sweep can be
    replayed (none completed or diverged with recorded steps). Runs whose row records no step to
    replay (epochs 0) are left out and counted. Plotly.js is already in the page."""
    from . import replay

    steps = store.read_table(root, "steps", sweep=sweep, columns=["step", "epoch", "loss", "grad_norm", "log_z"])
    if steps.empty:
        return ""
    traces = store.read_table(root, "grad_norms", sweep=sweep, columns=["step", "attn_logit_max", "update_ratio"])
    unreplayable: list[tuple[str, str]] = []
    scored = replay.recorded(runs, steps, traces, left_out=unreplayable)
    bad = (f"{len(unreplayable)} completed or diverged run(s) whose row records no step to replay (epochs 0, or a "
           f"diverged step below 0: {', '.join(sorted(html.escape(str(r)) for _, r in unreplayable)[:8])}"
           f"{' …' if len(unreplayable) > 8 else ''}) are left out" if unreplayable else "")
    if not scored:
        return f"<h2 id='pruning'>Pruning by replay</h2><p>Nothing to replay: {bad}.</p>" if bad else ""
    res = replay.study(scored)
    doomed, good, near = (sum(getattr(r, k) for r in scored) for k in ("doomed", "good", "near_best"))
    pruned = int(runs.drop_duplicates("run_id", keep="last").status.eq(store.RunStatus.PRUNED).sum())
    head = ("<h2 id='pruning'>Pruning by replay</h2>"
            f"<p>Our pruner's rules and Optuna's pruners replayed over the recorded steps of {len(scored)} runs, "
            "each judged at every flush of its recorded trace interval as the trainer would have judged it (ours: "
            "each run alone; Optuna's: against the runs started before it, in start order on 2 asynchronous "
            f"workers). <b>Doomed</b> ({doomed}): diverged, or completed at chance; <b>good</b> ({good}): completed "
            f"above chance; <b>near-best</b> ({near}): good and within {replay.WITHIN:g} points of the best completed "
            "run of its group (sweep, stem, optimizer, epochs, fix)"
            + (f"; {pruned} run(s) recorded pruned are left out (their pruner already stopped them)" if pruned else "")
            + (f"; {bad}" if bad else "")
            + ". x: the good runs a setting stopped (% of the good runs); y: the doomed runs' steps it saved (% of "
            "their steps, with the 90 % bootstrap interval over runs). Solid: ours; open: Optuna's; dashed step: our "
            "rules' Pareto settings (<code>stability replay</code> for every setting, other intervals and tuning on "
            "other sweeps).</p>")
    figure = (plots.pruning_pareto(res.curve).to_html(full_html=False, include_plotlyjs=False) if good and doomed
              else f"<p>No {'good' if not good else 'doomed'} run in this sweep: no figure.</p>")
    return (head + figure + "<h3>Pareto settings</h3><p>No other setting saves more doomed steps with fewer good "
            "runs stopped. <i>good stopped ≤</i>: the one-sided 90 % Clopper-Pearson bound of its rate; <i>wall "
            "time</i>: the sweep's simulated time on 2 workers relative to no pruning.</p>"
            + table(replay.readable(res.curve[res.curve["pareto"]])))


def _ci(df: pd.DataFrame, col: str, lo: str, hi: str) -> pd.DataFrame:
    """``df`` with the interval (``lo``, ``hi``) of ``col`` in one column beside it ("n/a" where undefined)."""
    df = df.copy()
    where = list(df.columns).index(col) + 1
    ci = [interval(a, b) for a, b in zip(df[lo], df[hi], strict=True)]
    df = df.drop(columns=[lo, hi])
    df.insert(min(where, len(df.columns)), f"{col} 90% CI", ci)
    return df


def _threshold_table(res: analysis.Table, outcome: str, at: pd.DataFrame) -> str:
    """The threshold table of one outcome (``analysis.attn_logit_divergence``), its rows with runs on
    both sides of the threshold only; one line for the rows left out, or instead of the table when
    none is left. ``at``: the runs' logits (``analysis.attn_logit_at``)."""
    tab = res.table
    what = "was unstable" if outcome == "unstable" else "diverged"
    if tab.empty:
        return f"<p>{outcome}: {html.escape(res.note or 'no finished run')}.</p>"
    if not tab["out_above"].add(tab["out_below"]).any():
        return f"<p>{outcome}: no run {what} in any group: nothing to compare.</p>"
    split = tab[(tab["n_above"] > 0) & (tab["n_below"] > 0)]
    top = at["logit_max"].max()
    if split.empty:
        return (f"<p>{outcome}: no threshold has runs on both sides in any group (the largest logit at that step "
                f"is {cell(top)}; thresholds {', '.join(cell(t) for t in analysis.attention.THRESHOLDS)}): nothing to "
                "compare.</p>")
    note = (f"<p>{outcome}: {len(tab) - len(split)} of {len(tab)} (group, threshold) rows left out: every run of "
            f"the group on one side of the threshold (the largest logit at that step is {cell(top)}).</p>"
            if len(split) < len(tab) else "")
    shown = split.drop(columns=["step"])
    for c in ("frac_above", "frac_below", "diff"):
        shown = _ci(shown, c, f"{c}_lo", f"{c}_hi")
    return note + table(shown)


def write_report(root: str | Path, sweep: str, out: str | Path, unreadable: list[str] | None = None,
                 mixed_data: list[dict] | None = None, said: list[tuple[str, str]] | None = None) -> Path:
    return store.write_text_atomic(out, build_report(root, sweep, unreadable, mixed_data, said))
