"""Sweep state: which planned runs are done, failed, running or missing; the job ledger.

A run is *done* when its runs row in the store says completed or diverged. Everything the
controller needs to pick up after a crash is on disk under ``results/_sweeps/<name>/``:
``spec.yaml``, ``plan.parquet`` (what should exist) and ``jobs.jsonl`` (which job ran which run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .. import store
from ..store import RunStatus
from .plan import PlannedRun

DONE, TERMINAL = store.DONE, store.TERMINAL
ORDER = tuple(map(str, RunStatus))  # display order; plain strings, they name columns


def ledger_path(sweep_dir: Path) -> Path:
    return sweep_dir / "jobs.jsonl"


def record_jobs(sweep_dir: Path, kind: str, items: list[tuple[str, str]]) -> None:
    """Append ``(run_id, job_id)`` submissions to the ledger: one JSON object per line, all in one
    write, flushed to disk. A torn last line (a controller killed mid-append) is ended first, so
    a new record never lands on it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    text = "".join(json.dumps({"run_id": r, "job_id": str(j), "kind": kind, "t": now}) + "\n" for r, j in items)
    with open(ledger_path(sweep_dir), "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def read_ledger(sweep_dir: Path, problems: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The latest submission of each run: ``{run_id: {"job_id", "kind", "t"}}``. Lines that are
    not records (torn, not JSON, JSON of another shape) are skipped; ``problems`` gets one
    message per skipped line, naming it."""
    p = ledger_path(sweep_dir)
    out: dict[str, dict[str, Any]] = {}
    if not p.exists():
        return out
    for i, line in enumerate(p.read_bytes().decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not (isinstance(rec, dict) and isinstance(rec.get("run_id"), str)
                and isinstance(rec.get("job_id"), str | int) and isinstance(rec.get("kind"), str)):
            if problems is not None:
                problems.append(f"{p} line {i}: not a job record, skipped ({line[:60]!r})")
            continue
        rec["job_id"] = str(rec["job_id"])
        out[rec["run_id"]] = rec
    return out


def save_plan(sweep_dir: Path, plan_df: pd.DataFrame) -> None:
    """Write ``plan.parquet`` atomically."""
    with store.atomic_path(sweep_dir / "plan.parquet") as tmp:
        plan_df.to_parquet(tmp, index=False)


def load_plan(sweep_dir: Path) -> pd.DataFrame | None:
    """The saved plan (None when there is none); ``store.CorruptFiles`` naming it when unreadable."""
    p = sweep_dir / "plan.parquet"
    if not p.exists():
        return None
    try:
        return pd.read_parquet(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise store.CorruptFiles(f"{p} is unreadable ({type(e).__name__}: {str(e)[:160]})") from None


def run_rows(results: str | Path, sweep: str, cache: dict | None = None, errors: list[str] | None = None
             ) -> pd.DataFrame:
    """The sweep's runs rows, only the columns state needs (``cache``: see ``store.read_table``;
    ``errors`` gets one line per unreadable file)."""
    cols = ["run_id", "status", "stem", "optimizer", "epochs", "top1_err", "diverged_at_step",
            "wall_time_s", "error", "finished_at"]
    return store.read_table(results, "runs", sweep=sweep, columns=cols, cache=cache, errors=errors)


STATE_COLUMNS = ["run_id", "stem", "optimizer", "epochs", "cell", "status", "error", "wall_time_s", "job_state"]
RUNNING_JOB_STATES = ("RUNNING", "COMPLETING")


def sweep_state(plan: list[PlannedRun], runs: pd.DataFrame, alive: dict[str, str] | None = None,
                submitted: set[str] | frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per planned run: run_id, stem, optimizer, epochs, cell, status, job state.

    ``alive`` maps run_id -> scheduler state for runs whose job still lives; ``submitted`` holds
    the runs the ledger has a job for. A run with no row (or a stale running/preempted row) and no
    live job is ``missing`` when a job of it ended without a result, ``pending`` when it was never
    submitted (planned, not started: e.g. waiting for a free local slot). A controller submits
    both (``to_submit``).
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
    status[~live & status.isin([RunStatus.RUNNING, RunStatus.PREEMPTED])] = RunStatus.MISSING  # its job is gone
    status[status.eq(RunStatus.MISSING) & ~ids.isin(submitted)] = RunStatus.PENDING  # never submitted
    err = ids.map(last["error"]) if "error" in last else pd.Series(None, index=ids.index, dtype=object)
    state["status"] = status.astype(str)
    state["error"] = err.where(err.map(lambda e: isinstance(e, str)), None).astype(object)
    state["wall_time_s"] = ids.map(last["wall_time_s"]) if "wall_time_s" in last else None
    state["job_state"] = job.astype(object).where(job.notna(), None)
    return state


def to_submit(state: pd.DataFrame, retry_failed: bool = False) -> pd.Series:
    """Which runs a controller submits: no result and no live job (missing, or pending with no
    job), and failed ones when retrying."""
    no_job = state.job_state.isna()
    want = state.status.eq(RunStatus.MISSING) | (state.status.eq(RunStatus.PENDING) & no_job)
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


def eta_seconds(state: pd.DataFrame, parallel: int) -> float | None:
    """Remaining runs x mean wall time of finished ones / runs at a time: the runs running now
    when any are (a cluster may run fewer than ``array_parallelism`` allows), else ``parallel``."""
    running = int(state.status.eq(RunStatus.RUNNING).sum())
    parallel = running or parallel
    done = state[state.status.isin(DONE)]
    left = (~state.status.isin(TERMINAL)).sum()
    if done.empty or not done.wall_time_s.notna().any():
        return None
    return float(left * done.wall_time_s.mean() / max(1, parallel))
