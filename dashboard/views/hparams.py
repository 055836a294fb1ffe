"""Hyperparameters: parallel coordinates of every run (lr, wd, optimizer, epochs -> error,
coloured by stem) and fANOVA hyperparameter importance per stem, diverged and pruned runs included."""

import streamlit as st

from stability import analysis, plots
from stability.dashboard.common import md, selected_runs, table

AUTO_RUNS = 500  # above this the evaluator waits for a click (its forest grows with n)
PARALLEL_LINES = 2000  # lines drawn at most (more only blur into one another and slow the browser)


@st.cache_data(show_spinner="fANOVA importance …", max_entries=8)
def _importance(runs, by: tuple[str, ...]):
    return analysis.hparam_importance(runs, by=list(by), max_runs=500)


st.title("Hyperparameters")
runs = selected_runs()
if runs is not None:
    df = analysis.error_vs_hparams(runs)
    if df.empty:
        st.info("No finished runs match the filters.")
    else:
        shown = df.sample(PARALLEL_LINES, random_state=0) if len(df) > PARALLEL_LINES else df
        st.plotly_chart(plots.parallel_figure(shown), width="stretch", key="hp_parallel")
        st.caption("Drag along an axis to select a range. Diverged and pruned runs sit at 100% error."
                   + (f" {PARALLEL_LINES:,} of the {len(df):,} runs are drawn (a seeded sample)."
                      if len(df) > PARALLEL_LINES else ""))
        st.subheader("Hyperparameter importance")
        if len(df) <= AUTO_RUNS or st.button(f"Compute importance for {len(df):,} runs (fANOVA on up to 500 "
                                             "runs per group: seconds to a minute)", key="hp_compute"):
            by = ["sweep", "stem"] if runs.sweep.nunique() > 1 else ["stem"]  # sweeps never pooled
            imp = _importance(runs, tuple(by))
            # dropna=False and keys as text: a RegNet's missing stem is a group (as hparam_importance's),
            # and NaN == NaN never holds, so a group is matched by its name ("n/a")
            groups = df.groupby(by, observed=True, dropna=False).size()

            def name(k) -> tuple:
                return tuple(map(analysis.value_text, k if isinstance(k, tuple) else (k,)))

            done = {name(tuple(k)) for k in imp[by].drop_duplicates().itertuples(index=False)} if len(imp) else set()
            skipped = [" · ".join(name(k)) + f" (n={n})" for k, n in groups.items() if name(k) not in done]
            if imp.empty:
                st.info("Importance needs at least 4 finished runs per stem, a knob that varies and errors that "
                        "differ (when every run diverged there is nothing to explain).")
            else:
                st.plotly_chart(plots.importance_figure(imp), width="stretch", key="hp_importance")
                table(imp, key="hp_imp")
                st.caption("Optuna's fANOVA evaluator on the runs table (seed 0): the share of the error's "
                           "variance each knob explains, per sweep and stem (never pooled); lr and wd on a log scale."
                           + (" Groups of more than 500 runs use a seeded sample of 500 (n_used)."
                              if (imp.n > imp.n_used).any() else ""))
                if skipped:
                    st.info("No importance (it needs at least 4 runs, a knob that varies and errors that differ) for: "
                            + md(", ".join(skipped)))
