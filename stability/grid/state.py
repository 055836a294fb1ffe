"""Sweep state: which planned runs are done, failed, running, pending or missing.

A run is *done* when its runs row in the store says completed, diverged or pruned (stopped
early by its pruner: a result the grid does not train again, counted apart). Everything the
controller needs to pick up after a crash is on disk under ``results/_sweeps/<name>/``:
``spec.yaml``, ``plan.parquet`` (what should exist) and ``jobs.jsonl`` (which job ran which run:
``grid/ledger.py``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import store
from ..errors import shown
from ..store import RunStatus
from .plan import PlannedRun

DONE, TERMINAL = store.DONE, store.TERMINAL
ORDER = tuple(map(str, RunStatus))  # display order; plain strings, they name columns


def done_ids(runs: pd.DataFrame) -> set[str]:
    """The runs that have a result (completed, diverged or pruned) in ``runs`` rows."""
    return set(runs.run_id[runs.status.isin(DONE)]) if len(runs) else set()


def save_plan(sweep_dir: Path, plan_df: pd.DataFrame) -> None:
    """Write ``plan.parquet`` atomically."""
    with store.atomic_path(sweep_dir / "plan.parquet") as tmp:
        plan_df.to_parquet(tmp, index=False)


PLAN_NEEDS = ("run_id", "cell", "stem", "point", "seed", "wave", "config_json")


def load_plan(sweep_dir: Path) -> pd.DataFrame | None:
    """The saved plan (None when there is none); ``store.CorruptFiles`` naming it when it cannot
    be read as a plan: garbage, a folder, parquet of another schema, values of the wrong type."""
    from .plan import plan_from_frame

    p = sweep_dir / "plan.parquet"
    if not p.exists() and not p.is_symlink():
        return None
    try:
        if not p.is_file():
            raise IsADirectoryError("not a file")
        df = pd.read_parquet(p)
        if missing := [c for c in PLAN_NEEDS if c not in df.columns]:
            raise ValueError(f"not a plan: no column {', '.join(missing)} (a plan has {', '.join(PLAN_NEEDS)})")
        plan_from_frame(df)  # every value of the type a plan holds
        if not all(isinstance(v, str) for v in (*df.run_id, *df.config_json)):
            raise ValueError("not a plan: run_id and config_json must be text")
        if bad := [v for v in df.run_id if not store.is_plain(v)]:  # every run's files are named by it
            raise ValueError(f"not a plan: run_id {shown(bad[0], 60)} is not a plain name"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        return df
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise store.CorruptFiles(f"{p} is unreadable ({type(e).__name__}: {str(e)[:160]})") from None


def run_rows(results: str | Path, sweep: str, cache: dict | None = None, errors: list[str] | None = None
             ) -> pd.DataFrame:
    """The sweep's runs rows, only the columns state needs (``cache``: see ``store.read_table``;
    ``errors`` gets one line per unreadable file)."""
    cols = ["run_id", "status", "stem", "optimizer", "epochs", "top1_err", "diverged_at_step", "pruned_at_step",
            "prune_rule", "wall_time_s", "error", "finished_at", "init_top1_err", "collapsed",
            *store.DATA_COLUMNS]  # what each run's data held (``data_rows``)
    return store.read_table(results, "runs", sweep=sweep, columns=cols, cache=cache, errors=errors)


STATE_COLUMNS = ["run_id", "stem", "optimizer", "epochs", "cell", "status", "error", "wall_time_s", "job_state"]
RUNNING_JOB_STATES = ("RUNNING", "COMPLETING")


def sweep_state(plan: list[PlannedRun], runs: pd.DataFrame, alive: dict[str, str] | None = None,
                submitted: set[str] | frozenset[str] = frozenset(),
                failed: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per planned run: run_id, stem, optimizer, epochs, cell, status, job state.

    ``alive`` maps run_id -> scheduler state for runs whose job still lives; ``submitted`` holds
    the runs the ledger has a job for. A run with no row (or a stale running/preempted row) and no
    live job is ``missing`` when a job of it ended without a result, ``pending`` when it was never
    submitted (planned, not started: e.g. waiting for a free local slot). A controller submits
    both (``to_submit``). ``failed`` maps run_id -> error for runs whose latest job recorded in
    the ledger that it failed without writing its row: such a run is failed, not missing.
    """
    state = pd.DataFrame({c: [getattr(r, c) for r in plan] for c in STATE_COLUMNS[:5]},
                         columns=STATE_COLUMNS[:5])
    last = runs.drop_duplicates("run_id", keep="last").set_index("run_id") if len(runs) else pd.DataFrame()
    ids = state["run_id"]
    status = ids.map(last["status"]) if "status" in last else pd.Series(None, index=ids.index, dtype=object)
    status = status.fillna(RunStatus.MISSING).astype(object)
    job = ids.map(alive or {})
    live = job.notna() & ~status.isin(DONE)  # a live job supersedes a stale row
    status[live] = job[live].isin(RUNNING_JOB_STATES).map({True: RunStatus.RUNNING, False: RunStatus.PENDING})
    # a running row whose job is gone is missing; a preempted one stays preempted (its checkpoint
    # waits: a grid run resumes it), so counts, the lost list and the end line agree
    status[~live & status.eq(RunStatus.RUNNING)] = RunStatus.MISSING
    status[status.eq(RunStatus.MISSING) & ~ids.isin(submitted)] = RunStatus.PENDING  # never submitted
    err = ids.map(last["error"]) if "error" in last else pd.Series(None, index=ids.index, dtype=object)
    unwritten = status.isin([RunStatus.MISSING, RunStatus.PREEMPTED]) & ids.isin(list(failed or {}))  # its latest job
    status[unwritten] = RunStatus.FAILED
    err[unwritten] = ids[unwritten].map(failed or {})
    state["status"] = status.astype(str)
    state["error"] = err.where(err.map(lambda e: isinstance(e, str)), None).astype(object)
    state["wall_time_s"] = ids.map(last["wall_time_s"]) if "wall_time_s" in last else None
    state["job_state"] = job.astype(object).where(job.notna(), None)
    return state


def to_submit(state: pd.DataFrame, retry_failed: bool = False) -> pd.Series:
    """Which runs a controller submits: no result and no live job (missing, or pending or
    preempted with no job: a preempted run resumes from its checkpoint), and failed ones when
    retrying."""
    no_job = state.job_state.isna()
    want = state.status.eq(RunStatus.MISSING) | (state.status.isin([RunStatus.PENDING, RunStatus.PREEMPTED]) & no_job)
    return want | (retry_failed & state.status.eq(RunStatus.FAILED))


def counts(state: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Counts per status (columns in a fixed order), optionally per group."""
    if by:
        table = state.groupby(by + ["status"], dropna=False).size().unstack("status", fill_value=0)
    else:
        table = state.status.value_counts().to_frame().T
    for s in ORDER:
        if s not in table.columns:
            table[s] = 0
    table = table[list(ORDER)]
    table["total"] = table.sum(axis=1)
    return table


UNFINISHED = "(no result yet)"  # a run's data is known once it finished (a failed row may name data it never read)


def cells_by_data(state: pd.DataFrame, data: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``state`` and the groups of its count table: stem, optimizer, epochs, and ``data`` where
    the sweep's runs finished on different data (``data_rows``; ``UNFINISHED`` for the others)."""
    by = ["stem", "optimizer", "epochs"]
    if "data" not in data.columns:
        return state, by
    finished = data[data["status"].isin(DONE)].set_index("run_id")["data"]
    return state.assign(data=state["run_id"].map(finished).fillna(UNFINISHED)), [*by, "data"]


def eta_seconds(state: pd.DataFrame, parallel: int) -> float | None:
    """Remaining runs x mean wall time of finished ones / runs at a time: the runs running now
    when any are (a cluster may run fewer than ``array_parallelism`` allows), else ``parallel``."""
    if "job_state" in state and not state.job_state.notna().any():
        return None  # no job alive: nothing progresses until a controller submits again
    running = int(state.status.eq(RunStatus.RUNNING).sum())
    parallel = running or parallel
    done = state[state.status.isin(DONE)]
    left = (~state.status.isin(TERMINAL)).sum()
    if done.empty or not done.wall_time_s.notna().any():
        return None
    return float(left * done.wall_time_s.mean() / max(1, parallel))


def stem_outcomes(state: pd.DataFrame, runs: pd.DataFrame, value: str = "top1_err",
                  data: pd.DataFrame | None = None) -> list[dict]:
    """How each stem's finished runs ended, per optimizer and length where the sweep varies them
    and per data where its runs recorded other data (``data``: ``data_rows``, never pooled):
    the rows of ``analysis.stems.stem_outcomes`` (at chance: ``analysis.findings.at_chance``, the
    one definition every view uses) for the planned runs, with the status ``state`` gives them.
    Each row also has ``completed`` (finished runs that neither diverged nor were pruned),
    ``at_chance_err`` (the error range of the runs at chance), ``name`` (the stem, and its
    optimizer / length where those vary) and ``line`` (the row in words). JSON-ready: NaN is
    None. ``never_left_chance``: every finished run of the stem sits at chance, diverged or was
    pruned."""
    from ..analysis.findings import at_chance
    from ..analysis.grouping import named_stems
    from ..analysis.stems import stem_outcomes as outcomes_table

    if not len(state):
        return []
    last = runs.drop_duplicates("run_id", keep="last").set_index("run_id") if len(runs) else pd.DataFrame()
    df = named_stems(state[["run_id", "stem", "optimizer", "epochs", "status"]]).copy()  # a RegNet's: "no stem"
    for c in (value, "init_top1_err", "collapsed"):
        df[c] = df["run_id"].map(last[c]) if c in last else None
    df[value] = pd.to_numeric(df[value], errors="coerce")
    df["init_top1_err"] = pd.to_numeric(df["init_top1_err"], errors="coerce")
    by = [c for c in ("optimizer", "epochs") if df[c].nunique(dropna=False) > 1]
    if data is not None and "data" in data.columns:
        df["data"] = df["run_id"].map(data.set_index("run_id")["data"])
        if df["data"].nunique() > 1:  # a line per data some run finished on (not a pending or failed run's)
            df, by = df[df["data"].isin(set(df.loc[df["status"].isin(DONE), "data"]))], [*by, "data"]
    table = outcomes_table(df, value, by=by)
    chance = df[at_chance(df, value).to_numpy(bool)]
    out = []
    for row in table.to_dict("records"):
        here = chance
        for k in (*by, "stem"):
            here = here[here[k].eq(row[k])]
        o = {k: _plain(v) for k, v in row.items()}
        o["completed"] = o["runs"] - o["diverged"] - o["pruned"]
        o["at_chance_err"] = [_plain(here[value].min()), _plain(here[value].max())] if len(here) else None
        o["name"] = str(o["stem"]) + ("" if not by else " (" + ", ".join(f"{k} {o[k]}" for k in by) + ")")
        o["line"] = outcome_line(o)
        out.append(o)
    return out


def data_rows(results: str | Path, sweep: str, planned: set[str] | list[str] | pd.Series,
              runs: pd.DataFrame) -> pd.DataFrame:
    """The planned runs' rows with what their data held, ``analysis.with_design``'d: a ``data``
    column where some finished on other data than runs that should share theirs (its data_root
    changed between runs). ``runs`` (``run_rows``) holds the data columns: only when its finished
    runs hold several is the sweep read again for each run's config_json (a test split or
    synthetic size may explain them), once per ``grid status`` and at the end of a ``grid run``."""
    from ..analysis.grouping import with_design

    cols = list(store.DATA_COLUMNS)
    if not len(runs) or not set(cols) <= set(runs.columns):
        return runs.iloc[:0]
    done = runs[runs["status"].isin(DONE)][cols].dropna()
    if done.drop_duplicates().shape[0] <= 1:  # one data (or none recorded): nothing to split
        return runs.iloc[:0]
    rows = store.read_table(results, "runs", sweep=sweep,
                            columns=["run_id", "status", "dataset", "config_json", *cols])
    return with_design(rows[rows["run_id"].isin(set(planned))].drop_duplicates("run_id", keep="last"))


def sweep_data(rows: pd.DataFrame) -> list[dict]:
    """``data_rows``' runs on other data than runs that should share theirs
    (``analysis.grouping.data_mix``): ``[{"sweep", "dataset", "data", *DATA_COLUMNS, "runs",
    "run_ids"}]`` (the data in words and as its numbers, null where unrecorded), most
    runs first, empty when there are none (``analysis.grouping.mixed_data_note`` says it in words)."""
    from ..analysis.grouping import data_mix

    if not len(rows):
        return []
    return [{"sweep": str(r["sweep"]), "dataset": str(r["dataset"]), "data": str(r["data"]),
             **{c: None if pd.isna(r[c]) else int(r[c]) for c in store.DATA_COLUMNS},
             "runs": int(r["runs"]), "run_ids": list(r["run_ids"])} for r in data_mix(rows).to_dict("records")]


def _plain(v):
    """A JSON value: numpy scalars as Python ones, NaN as None."""
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and v != v else v


def _pruned_text(o: dict) -> str:
    """"; k pruned" for an outcome row with pruned runs, "" without (a sweep with no pruner reads
    as before)."""
    k = o.get("pruned") or 0
    return f"; {int(k)} pruned" if k else ""


def _num(v, digits: int) -> str:
    """A value of an outcome row in words: inf and nan are results ("inf"), None unknown ("?")."""
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "?"


def outcome_line(o: dict) -> str:
    """One stem's outcomes in words: "patchify: 0 of 4 runs left chance (4 completed: 4 at chance,
    61–91 % error; 0 diverged); median error 80.3 %  <- never left chance"; pruned runs beside the
    diverged ones where there are any ("...; 1 diverged; 2 pruned)")."""
    name = o["name"]
    if not o["runs"]:
        return f"{name}: no finished run yet"
    rng = o.get("at_chance_err")
    lo, hi = (_num(v, 0) for v in rng) if rng else ("", "")
    span = "" if not rng else f", {lo} % error" if lo == hi else f", {lo}–{hi} % error"
    text = (f"{name}: {o['learned']} of {o['runs']} runs left chance ({o['completed']} completed: "
            f"{o['at_chance']} at chance{span}; {o['diverged']} diverged{_pruned_text(o)}); median error "
            f"{_num(o['median_err'], 1)} %")
    return text + ("  <- never left chance" if o["never_left_chance"] else "")
