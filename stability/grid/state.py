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
from .plan import PlannedRun

DONE = ("completed", "diverged")
ORDER = ("completed", "diverged", "failed", "preempted", "running", "pending", "missing")


def ledger_path(sweep_dir: Path) -> Path:
    return sweep_dir / "jobs.jsonl"


def record_jobs(sweep_dir: Path, kind: str, items: list[tuple[str, str]]) -> None:
    """Append ``(run_id, job_id)`` submissions to the ledger (one JSON object per line)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with open(ledger_path(sweep_dir), "a") as f:
        for run_id, job_id in items:
            f.write(json.dumps({"run_id": run_id, "job_id": job_id, "kind": kind, "t": now}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_ledger(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The latest submission of each run: ``{run_id: {"job_id", "kind", "t"}}``."""
    p = ledger_path(sweep_dir)
    out: dict[str, dict[str, Any]] = {}
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed controller
        out[rec["run_id"]] = rec
    return out


def save_plan(sweep_dir: Path, plan_df: pd.DataFrame) -> None:
    """Write ``plan.parquet`` atomically."""
    with store.atomic_path(sweep_dir / "plan.parquet") as tmp:
        plan_df.to_parquet(tmp, index=False)


def load_plan(sweep_dir: Path) -> pd.DataFrame | None:
    p = sweep_dir / "plan.parquet"
    return pd.read_parquet(p) if p.exists() else None


def run_rows(results: str | Path, sweep: str, cache: dict | None = None) -> pd.DataFrame:
    """The sweep's runs rows, only the columns state needs (``cache``: see ``store.read_table``)."""
    cols = ["run_id", "status", "stem", "optimizer", "epochs", "top1_err", "diverged_at_step",
            "wall_time_s", "error", "finished_at"]
    return store.read_table(results, "runs", sweep=sweep, columns=cols, cache=cache)


STATE_COLUMNS = ["run_id", "stem", "optimizer", "epochs", "cell", "status", "error", "wall_time_s", "job_state"]
RUNNING_JOB_STATES = ("RUNNING", "COMPLETING", "local")


def sweep_state(plan: list[PlannedRun], runs: pd.DataFrame, alive: dict[str, str] | None = None
                ) -> pd.DataFrame:
    """One row per planned run: run_id, stem, optimizer, epochs, cell, status, job state.

    ``alive`` maps run_id -> scheduler state for runs whose job still lives; a run with no row
    (or a stale running/preempted row) and no live job is ``missing``.
    """
    state = pd.DataFrame({c: [getattr(r, c) for r in plan] for c in STATE_COLUMNS[:5]},
                         columns=STATE_COLUMNS[:5])
    last = runs.drop_duplicates("run_id", keep="last").set_index("run_id") if len(runs) else pd.DataFrame()
    ids = state["run_id"]
    status = ids.map(last["status"]) if "status" in last else pd.Series(None, index=ids.index, dtype=object)
    status = status.fillna("missing").astype(object)
    job = ids.map(alive or {})
    live = job.notna() & ~status.isin(DONE)  # a live job supersedes a stale row
    status[live] = job[live].isin(RUNNING_JOB_STATES).map({True: "running", False: "pending"})
    status[~live & status.isin(["running", "preempted"])] = "missing"  # its job is gone
    err = ids.map(last["error"]) if "error" in last else pd.Series(None, index=ids.index, dtype=object)
    state["status"] = status
    state["error"] = err.where(err.map(lambda e: isinstance(e, str)), None).astype(object)
    state["wall_time_s"] = ids.map(last["wall_time_s"]) if "wall_time_s" in last else None
    state["job_state"] = job.astype(object).where(job.notna(), None)
    return state


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
    """Remaining runs x mean wall time of finished ones / parallel slots."""
    done = state[state.status.isin(DONE)]
    left = (~state.status.isin(DONE + ("failed",))).sum()
    if done.empty or not done.wall_time_s.notna().any():
        return None
    return float(left * done.wall_time_s.mean() / max(1, parallel))
