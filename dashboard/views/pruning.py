"""Pruning: our pruner's rules and Optuna's pruners replayed over the selected runs' recorded steps
(``stability replay``): the doomed runs' steps each setting saves against the good runs it stops,
the Pareto settings, and, tuned on other sweeps, the setting each family would choose there."""

from pathlib import Path

import pandas as pd
import streamlit as st

from stability import plots, replay, store
from stability.dashboard.common import (
    FILTERS,
    control,
    load_runs,
    md,
    root,
    run_key,
    selected_runs,
    sweep_label,
    table,
)
from stability.store import RunStatus

INTERVALS = (1, 5, 10)  # trace intervals offered besides the recorded one (where the data allows)
REPLAY_RUNS = 60  # above this many runs the replay (seconds per run on a busy CPU) waits for a click
STEP_COLUMNS = ["step", "epoch", "loss", "grad_norm", "log_z"]
TRACE_COLUMNS = ["step", "attn_logit_max", "update_ratio"]
RECORDED = "as recorded"


@st.cache_resource(show_spinner=False, max_entries=8)
def _recorded(where: str, keys: tuple[str, ...], sig: tuple, within: float) -> list[replay.Recorded]:
    """The runs ``keys`` ("sweep/run_id") ready to replay (``replay.recorded``), read once per change
    of the tables (``sig``); kept unpickled (the replay only reads them)."""
    ids = sorted({k.split("/", 1)[1] for k in keys})
    wanted = set(keys)
    tables = [store.read_table(where, "runs", run_ids=ids),
              store.read_table(where, "steps", columns=STEP_COLUMNS, run_ids=ids),
              store.read_table(where, "grad_norms", columns=TRACE_COLUMNS, run_ids=ids)]
    runs, steps, traces = (t[run_key(t).isin(wanted)] if len(t) else t for t in tables)
    return replay.recorded(runs, steps, traces, within)


@st.cache_data(show_spinner=False, max_entries=32)
def _study(where: str, keys: tuple[str, ...], tune_keys: tuple[str, ...], sig: tuple, every: int | None,
           workers: int, within: float, baselines: bool) -> replay.Study:
    """``replay.study`` of the runs ``keys`` (tuned on ``tune_keys`` when there are any), cached on the
    tables' signature and the controls."""
    scored = _recorded(where, keys, sig, within)
    tuning = _recorded(where, tune_keys, sig, within) if tune_keys else []
    return replay.study(scored, tuning, (every,), workers, baselines)


def _signature(where: Path, keys: tuple[str, ...]) -> tuple:
    """``store.signature`` of the runs, steps and grad_norms files of the runs ``keys`` (and of the
    compacted files of their sweeps): a sweep running beside them does not void the cached replay."""
    wanted = {tuple(k.split("/", 1)) for k in keys}
    sweeps = {s for s, _ in wanted}
    out = []
    for t in ("runs", "steps", "grad_norms"):
        for entry in store.signature(where, t):
            path = Path(entry[0])
            sweep = path.parent.name.removeprefix("sweep=")
            if (sweep, store.run_of(path)) in wanted or (sweep in sweeps and path.name.startswith("part-")):
                out.append(entry)
    return tuple(out)


def _tuning_keys(runs: pd.DataFrame, sweeps: list[str]) -> tuple[str, ...]:
    """The runs of ``sweeps`` the sidebar's other filters (stem, optimizer ...) keep."""
    out = runs[runs["sweep"].isin(sweeps)]
    for col in FILTERS:
        key = f"f_{col}"
        if col not in ("sweep", "data") and key in st.session_state and col in out:  # data: within one sweep only
            out = out[out[col].isin(st.session_state[key])]
    return tuple(sorted(out["key"]))


def _finished(runs: pd.DataFrame) -> tuple[str, ...]:
    """The keys of the completed and diverged runs: the only ones a replay can judge."""
    return tuple(sorted(runs.loc[runs["status"].isin([RunStatus.COMPLETED, RunStatus.DIVERGED]), "key"].unique()))


def _left_out(runs: pd.DataFrame, n_recorded: int) -> list[str]:
    """Why selected runs are not replayed: pruned (already stopped by a pruner), not finished, no steps."""
    runs = runs.drop_duplicates("key", keep="last")
    finished = runs["status"].isin([RunStatus.COMPLETED, RunStatus.DIVERGED])
    pruned = int(runs["status"].eq(RunStatus.PRUNED).sum())
    other = int((~finished).sum()) - pruned
    no_steps = int(finished.sum()) - n_recorded
    return ([f"{pruned} recorded pruned (their pruner already stopped them: what they would have done is "
             "unknown)"] if pruned else []) + \
        ([f"{other} failed, preempted or unfinished"] if other else []) + \
        ([f"{no_steps} without recorded steps"] if no_steps else [])


st.title("Pruning by replay")
runs = selected_runs()
if runs is not None:
    where = root()
    sweeps = sorted(runs["sweep"].astype(str).unique())
    everyone = load_runs()
    others = sorted(set(everyone["sweep"].astype(str)) - set(sweeps)) if everyone is not None else []

    c1, c2, c3 = st.columns([2, 1, 1])
    c4, c5 = st.columns([1, 2])
    with c2:
        workers = control(st.slider, "workers simulated", 1, 16, key="p_prune_workers", default=2,
                          help="Asynchronous workers the sweep is replayed on: Optuna's pruners compare a run "
                               "with those started before it, and the wall time is simulated on them")
    with c3:
        within = control(st.slider, "near best: within x points", 1, 10, key="p_prune_within",
                         default=int(replay.WITHIN),
                         help="A good run this close (top-1 error points) to its group's best is near-best: "
                              "stopping one is the costly mistake")
    with c4:
        baselines = control(st.checkbox, "include Optuna's pruners", key="p_prune_optuna", default=True,
                            help="Median, percentile, Wilcoxon, threshold and Hyperband, each at a few settings")
    with c5:
        if others:
            tune = control(st.multiselect, "tune on (other sweeps)", others, key="p_prune_tune", default=[],
                           help="Choose each family's setting on these sweeps (the most doomed steps saved with "
                                "no good run stopped there), then score the choice on the selected runs")
        else:
            tune = []
            st.caption("To choose settings on other sweeps, leave them out of the sidebar's sweep filter.")

    keys = _finished(runs)
    tune_keys = _finished(everyone[everyone["key"].isin(_tuning_keys(everyone, tune))]) if tune else ()
    sig = _signature(where, keys + tune_keys)
    scored = _recorded(str(where), keys, sig, float(within))
    tuning = _recorded(str(where), tune_keys, sig, float(within)) if tune_keys else []
    traced = {r.every for r in [*scored, *tuning]}
    options = [RECORDED] + [str(k) for k in INTERVALS if all(k % e == 0 for e in traced)]
    with c1:
        shown = control(st.radio, "trace interval replayed (steps)", options, key="p_prune_every",
                        default=RECORDED, horizontal=True,
                        help="How often the pruner judges a run: as recorded (its trace_every), or a multiple "
                             "of it (runs traced every k steps replay only multiples of k)")
    every = None if shown == RECORDED else int(shown)

    left = _left_out(runs, len(scored))
    if not scored:
        st.info(f"None of the {runs['key'].nunique()} selected runs can be replayed: "
                + (md("; ".join(left)) or "none finished") + ". Replay needs completed or diverged runs with their "
                "recorded steps.")
    elif len(scored) > REPLAY_RUNS and st.session_state.get("_prune_go") != hash(keys) and not st.button(
            f"Replay the pruners over {len(scored):,} runs (minutes)", key="prune_go"):
        st.caption("Filter to fewer runs in the sidebar, or click to replay these.")
    else:
        st.session_state["_prune_go"] = hash(keys)  # asked once per selection: the controls then redraw it
        doomed, good = sum(r.doomed for r in scored), sum(r.good for r in scored)
        near = sum(r.near_best for r in scored)
        st.caption(f"**{len(scored)} runs** of {md(sweep_label(runs))} replayed: **{doomed} doomed** (diverged, or "
                   f"completed at chance), **{good} good** (completed above chance) and **{near} near-best** (good "
                   f"and within {within} points of the best completed run of their group: sweep, stem, optimizer, "
                   "epochs and fix)." + (f" Left out: {md('; '.join(left))}." if left else ""))
        try:
            with st.spinner(f"Replaying the pruners over {len(scored)} runs …"):
                res = _study(str(where), keys, tune_keys, sig, every, int(workers), float(within), bool(baselines))
        except ValueError as e:  # a trace interval the runs cannot replay
            st.warning(str(e))
            res = None
        if res is not None:
            if good and doomed:
                st.plotly_chart(plots.pruning_pareto(res.curve), width="stretch", key="prune_pareto")
                st.caption("One point per pruner setting, replayed as the trainer would have judged each run at "
                           "every flush (ours: each run alone; Optuna's: each run against those started before it, "
                           f"in start order on {workers} asynchronous workers). x: the good runs it stopped (% of "
                           "the good runs); y: the doomed runs' steps it saved (% of their steps), with the 90% "
                           "bootstrap interval over runs. Solid: our rules; open: Optuna's pruners; dashed step: our "
                           "rules' Pareto settings. Hover a point for its setting and the near-best runs it stopped.")
            else:
                st.info(f"{'No good run' if not good else 'No doomed run'} among these {len(scored)}: the share of "
                        f"{'good runs stopped' if not good else 'doomed steps saved'} is undefined, so there is "
                        "no figure; the table still says what each setting stopped.")
            st.subheader("Pareto settings")
            table(replay.readable(res.curve[res.curve["pareto"]]), key="prune_pareto_table")
            st.caption("No other setting shown saves more doomed steps with fewer good runs stopped at its trace "
                       "interval: the front over every setting, Optuna's included (the figure's dashed step joins our "
                       "rules' own front, so a point on it may be beaten here by one of Optuna's). good stopped ≤: "
                       "the one-sided 90% Clopper-Pearson bound of its rate; wall time: the sweep's simulated time "
                       f"on {workers} workers relative to no pruning.")
            if tune:
                st.subheader(f"Chosen on {md(', '.join(tune))}, scored here")
                if not tuning:
                    st.info(f"{md(', '.join(tune))} hold(s) no replayable run (completed or diverged, with its steps) "
                            "that the sidebar's filters keep: nothing to choose on.")
                elif res.chosen.empty:
                    st.info("No setting stopped no near-best run and no good run on the tuning sweeps: nothing "
                            "was chosen.")
                else:
                    table(replay.readable(res.chosen), key="prune_chosen_table")
                    st.caption("Per family, the setting with the most doomed steps saved on the tuning sweeps "
                               "among those that stopped no good run there (replay.choose), then scored on the "
                               "selected runs: nothing is tuned on them.")
