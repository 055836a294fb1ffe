"""EDF: error distribution per stem (one line per sweep x optimizer x epochs ... unless pooled on
purpose) with bands, the Δ-to-best view, the summary and the signed/paired comparison; pruned runs
scored as the page's control says (``analysis.edf.PRUNED_AS``, default as diverged)."""

import streamlit as st

from stability import analysis, plots
from stability.analysis.edf import PRUNED_AS
from stability.dashboard.common import (
    cached_compare,
    cached_edf,
    control,
    selected_runs,
    sweep_label,
    table,
    verdict_lines,
)
from stability.store import RunStatus as S


def _pooling_warning(runs, pooled: str) -> None:
    """Pooling on purpose, said where it is seen; louder when it changes which stem looks better
    (a stratum's lower-median stem differs from the pooled one: Simpson's paradox)."""
    keys = analysis.strata(runs)  # the strata, named (stem_outcomes' default grouping)
    per = analysis.stem_outcomes(runs, by=keys)
    whole = analysis.stem_outcomes(runs, by=[])
    msg = f"Pooled here: {pooled.replace(',', ', ')} (one line per stem over all of them)."
    if whole.stem.nunique() > 1 and len(per):
        best_all = whole.loc[whole.median_err.idxmin(), "stem"]
        flips = [analysis.group_text(dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)))
                 for k, g in (per.groupby(keys, observed=True, dropna=False) if keys else [])  # n/a: a stratum
                 if g.stem.nunique() > 1 and g.loc[g.median_err.idxmin(), "stem"] != best_all]
        if flips:
            msg += (f" **Pooling changes the picture**: pooled, {best_all} has the lower median error, but not in "
                    + "; ".join(flips[:6]) + (" …" if len(flips) > 6 else "") + ". Turn pooling off to see each.")
    st.warning(msg)


PRUNED_LABELS = dict(zip(PRUNED_AS, ("diverged (100%)", "their last error", "left out"), strict=True))


def _pruned_caption(scored: str, n: int) -> str:
    """The policy and how many pruned runs it scored, for the figure's caption."""
    if not n:
        return "no run of the selection was pruned."
    how = {PRUNED_AS[0]: "at 100% like diverged runs (marked × with them)",
           PRUNED_AS[1]: "at their last validation error",
           PRUNED_AS[2]: "left out of the EDF (counted in the summary)"}[scored]
    return f"pruned runs (stopped early as doomed by their pruner): {n}, scored {how}."


st.title("Error EDF per stem")
runs = selected_runs()
if runs is not None:
    c1, c2, c3 = st.columns([2, 2, 1])
    with c1:
        mode = control(st.radio, "error", ["absolute", "relative to the best of each group"],
                       key="p_edf_mode", default="absolute", horizontal=True)
    with c2:
        band = control(st.radio, "band (90%)", ["pointwise", "simultaneous", "dkw"], key="p_edf_band",
                       default="pointwise", horizontal=True,
                       help="pointwise bootstrap; simultaneous: bootstrap of the sup-norm (covers the "
                            "whole curve at once); dkw: Dvoretzky–Kiefer–Wolfowitz")
    with c3:
        pool = control(st.toggle, "pool design axes", key="p_edf_pool", default=False,
                       help="one line per stem over every sweep, optimizer and length selected "
                            "(off: nothing is pooled)")
    relative = mode.startswith("relative")
    full_axis = control(st.toggle, "error axis 0–100 %", key="p_edf_full", default=False,
                        help="Fix the x axis to the whole error range, so that a few points between runs at "
                             "chance do not fill the plot and look like an effect (off: zoom to the data)")
    scored = control(st.radio, "pruned runs scored as", list(PRUNED_AS), key="p_edf_pruned", default=PRUNED_AS[0],
                     horizontal=True, format_func=PRUNED_LABELS.get,
                     help="A pruned run was stopped early by its pruner as doomed (it would have diverged or "
                          "ended at chance). diverged: at 100% like a diverged run (the default: dropping them "
                          "hides the instability measured); last: at its last validation error; out: left out "
                          "of the EDF (still counted in the summary). docs/methodology.md, \"Pruned runs in "
                          "the EDF\"")
    within = None
    if relative:
        within = control(st.slider, "within x points of the best", 0.0, 20.0, key="p_edf_within",
                         default=4.0, step=0.5,
                         help="The paper's Fig. 5 reads the fraction of runs within 4 points of the best")
    by = ["stem"] if pool else analysis.default_by(runs)
    points = cached_edf(runs, tuple(by), relative, scored)
    n_pruned = int(runs.status.eq(S.PRUNED).sum())
    if points.empty:
        st.info(f"Every finished run of the selection was pruned ({n_pruned}), and pruned runs are left out: "
                "score them another way to see them." if n_pruned and scored == PRUNED_AS[2]
                else "No finished runs match the filters.")
    else:
        pooled = points["pooled"].iloc[0] if "pooled" in points and len(points) else ""
        if pooled:
            _pooling_warning(runs, pooled)
        fig = plots.edf_figure(points, relative=relative, band=band, within=within, full_axis=full_axis,
                               chance=None if relative else analysis.chance_error(runs),
                               title=f"{'Δ ' if relative else ''}top-1 error EDF · {sweep_label(runs)}")
        st.plotly_chart(fig, width="stretch", key="edf_chart")
        st.caption("One panel per stratum (sweep, optimizer, epochs …), one line per stem; F(e) = fraction of "
                   "runs with error at or below e; diverged runs count at 100% (marked ×; never dropped); "
                   f"{_pruned_caption(scored, n_pruned)} "
                   "Failed, preempted and running runs are left out and counted below. Dashed: chance (the "
                   "error at init). Relative mode: error minus the best run of the same line, the best "
                   "re-chosen in every bootstrap resample." + ("" if pooled else " Nothing is pooled."))
        st.subheader("Summary" + (" (Δ to each line's best, points)" if relative else " (top-1 error, %)"))
        ws = sorted({1.0, 2.0, 5.0} | ({within} if within is not None else set()))
        strata_cols = analysis.strata(runs)  # summary's and compare's strata, named
        table(analysis.summary(runs, by=by, relative=relative, within=ws, pruned=scored), key="edf_summary",
              whole=True, strata=strata_cols)
        st.subheader("Comparison between stems")
        go = len(runs) <= 3000 or st.button(f"Compute the comparison for {len(runs):,} runs (bootstrap and "
                                            "permutation tests: a few seconds)", key="edf_compute")
        if go:
            if n_pruned and scored != PRUNED_AS[0]:  # the comparison keeps the library's default
                st.caption(f"The comparison and verdicts score the {n_pruned} pruned run(s) as diverged (the "
                           "default), whatever the choice above.")
            verdict_lines(runs, key="edf_verdicts", ready=True)
        cmp = cached_compare(runs, relative) if go else None
        if cmp is not None and not cmp.empty:
            first = [*strata_cols, "a", "b", "n_a", "n_b", "median_diff", "median_diff_lo", "median_diff_hi",
                     "within_1_diff", "within_1_diff_lo", "within_1_diff_hi", "ks", "ks_better", "ks_p",
                     "n_pairs", "wilcoxon_p", "sign_p"]
            first = [c for c in first if c in cmp.columns]
            table(cmp[first + [c for c in cmp.columns if c not in first]], key="edf_compare", strata=strata_cols)
            st.caption("Verdicts: on the absolute error (median b − a), a two-sided permutation test per "
                       "stratum, Holm-adjusted over the strata at 10%; no verdict where a stem has fewer than 4 "
                       "finished runs or both stems sit at chance in every run (docs/methodology.md). "
                       "Table, per stratum (sweep, optimizer, epochs ... never pooled); effects are b − a with "
                       "90% bootstrap intervals (_lo, _hi): median_diff, within_x_diff (fraction of runs "
                       "within x points of their own group's best). ks: KS distance, ks_better: the "
                       "group with more runs below at the largest gap, ks_p: permutation p-value. "
                       "Paired over shared (lr, wd, ...) points: n_pairs, Wilcoxon and sign-test p.")
