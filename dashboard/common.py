"""Shared helpers of the dashboard pages: the results root, cached loading, filters.

Heavy work stays out of the pages: they call ``stability.analysis`` on tables loaded here, with
only the columns they need, cached on the files' mtimes (a new run invalidates the cache).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from stability import store

RUN_COLUMNS = ["run_id", "status", "model", "stem", "optimizer", "lr", "wd", "epochs", "batch_size",
               "seed", "dataset", "params", "flops", "top1_err", "top5_err", "best_top1_err",
               "final_train_loss", "diverged_at_step", "n_spikes", "wall_time_s", "device",
               "slurm_job_id", "started_at", "finished_at", "error"]


def _default_root() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--results")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.results or os.environ.get("STABILITY_RESULTS") or "results"


def results_root() -> Path:
    """The results root: ``-- --results PATH``, ``STABILITY_RESULTS``, or the sidebar."""
    if "results_root" not in st.session_state:
        st.session_state.results_root = _default_root()
    st.sidebar.text_input("Results root", key="results_root",
                          help="A folder with runs/, epochs/, steps/, grad_norms/ (stability's layout)")
    return Path(st.session_state.results_root).expanduser()


@st.cache_data(show_spinner=False, max_entries=4)
def _load_runs(root: str, sig: tuple) -> tuple[pd.DataFrame, list[str]]:
    errors: list[str] = []
    runs = store.read_table(root, "runs", columns=RUN_COLUMNS, errors=errors)
    return runs, errors


def load_runs(root: Path) -> pd.DataFrame | None:
    """The runs table, or None after telling the user what is wrong with the root."""
    if not root.exists():
        st.warning(f"No results at `{root}`: the folder does not exist. Run a sweep "
                   f"(`stability grid run grids/smoke.yaml`) or pick another root in the sidebar.")
        return None
    if not (root / "runs").is_dir():
        st.warning(f"`{root}` holds no `runs/` folder. Expected stability's layout: "
                   f"`{root}/runs/sweep=<name>/<run_id>.parquet` (and epochs/, steps/, grad_norms/).")
        return None
    runs, errors = _load_runs(str(root), store.signature(root, "runs"))
    if errors:
        st.error(f"{len(errors)} unreadable file(s) under `{root}` were skipped: "
                 + "; ".join(e.split(':')[0] for e in errors[:3]) + (" …" if len(errors) > 3 else ""))
    if runs.empty:
        st.info(f"`{root}` has no runs yet. Expected `{root}/runs/sweep=<name>/<run_id>.parquet`.")
        return None
    return runs


def peek_runs(root: Path) -> pd.DataFrame | None:
    """The runs table without any message (None when the root has none)."""
    if not (root / "runs").is_dir():
        return None
    return _load_runs(str(root), store.signature(root, "runs"))[0]


@st.cache_data(show_spinner=False, max_entries=32)
def load_run_tables(root: str, run_ids: tuple[str, ...], sig: tuple) -> dict[str, pd.DataFrame]:
    """Epochs, steps and grad norms of a few runs (filtered in parquet, never the whole table)."""
    ids = list(run_ids)
    return {
        "epochs": store.read_table(root, "epochs", run_ids=ids),
        "steps": store.read_table(root, "steps", columns=["step", "epoch", "loss", "lr", "grad_norm"], run_ids=ids),
        "grad_norms": store.read_table(root, "grad_norms", columns=["step", "layer", "depth", "grad_norm"], run_ids=ids),
    }


def run_tables(root: Path, run_ids: list[str]) -> dict[str, pd.DataFrame]:
    sig = tuple(store.signature(root, t) for t in ("steps",))
    return load_run_tables(str(root), tuple(sorted(run_ids)), sig)


FILTERS = ("sweep", "model", "optimizer", "epochs", "dataset")


def filter_runs(runs: pd.DataFrame, key: str, columns: tuple[str, ...] = FILTERS) -> pd.DataFrame:
    """Sidebar multiselects (all selected by default) for the given columns."""
    out = runs
    with st.sidebar:
        st.markdown("**Filters**")
        for col in columns:
            values = sorted(runs[col].dropna().unique().tolist(), key=str)
            if len(values) <= 1:
                continue
            chosen = st.multiselect(col, values, default=values, key=f"{key}_{col}")
            out = out[out[col].isin(chosen)]
    return out


@st.cache_data(show_spinner=False, max_entries=16)
def cached_edf(runs: pd.DataFrame, by: tuple[str, ...], relative: bool) -> pd.DataFrame:
    """``analysis.edf`` with its bootstrap band, cached on the (filtered) runs table."""
    from stability import analysis

    return analysis.edf(runs, by=list(by), relative=relative, n_boot=200, seed=0)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_compare(runs: pd.DataFrame, relative: bool) -> pd.DataFrame:
    from stability import analysis

    return analysis.compare(runs, by="stem", relative=relative, n_boot=400, n_perm=1000)


def sweep_label(runs: pd.DataFrame) -> str:
    sweeps = sorted(runs["sweep"].dropna().unique().tolist())
    return ", ".join(sweeps) if len(sweeps) <= 3 else f"{len(sweeps)} sweeps"
