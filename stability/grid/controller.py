"""The grid controller: plan, submit what is missing, watch, tell Optuna, repeat (tpe waves).

Idempotent: everything it needs is on disk (plan, job ledger, results), so rerunning the same
command after a killed controller, a crashed node or a cancelled array submits only the runs that
have neither a finished row nor a live job. Within one invocation a run is submitted at most
once; a job that dies without writing a result leaves its run ``missing`` (rerun to resubmit).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError
from .launch import job_log_tail, make_executor, slurm_alive, submit
from .local import pid_alive
from .plan import PlannedRun, make_plan, plan_frame, plan_from_frame, plan_mismatch
from .spec import GridSpec, resolve_kind
from .state import (
    DONE,
    counts,
    eta_seconds,
    load_plan,
    read_ledger,
    record_jobs,
    run_rows,
    save_plan,
    sweep_state,
)
from .studies import ask_wave, open_storage, tell


@dataclass
class RunOptions:
    retry_failed: bool = False
    wait: bool = True
    poll_s: float = 2.0
    array_size: int | None = None  # Slurm array chunk; None = MaxArraySize from scontrol
    show_progress: bool = True


@dataclass
class Outcome:
    state: pd.DataFrame
    submitted: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)  # run_id -> last log lines
    wall_s: float = 0.0


def initial_plan(spec: GridSpec, storage) -> list[PlannedRun]:
    """The plan of record: computed for random/sobol/grid; for tpe, read back or first wave."""
    if spec.sampler.name != "tpe":
        return make_plan(spec)
    saved = load_plan(spec.sweep_dir)
    if saved is not None and len(saved):
        plan = plan_from_frame(saved)
        if why := plan_mismatch(spec, plan):
            raise ConfigError(f"sweep {spec.name!r} was planned from a different spec ({why}): give the "
                              f"changed study a new name, or remove {spec.sweep_dir} to start it again", spec.path)
        return plan
    return ask_wave(spec, [], {}, storage)


def alive_jobs(sweep_dir: Path, run_ids: list[str]) -> dict[str, str]:
    """``{run_id: job state}`` for runs whose latest job still lives (slurm or local)."""
    ledger = read_ledger(sweep_dir)
    slurm = {ledger[r]["job_id"]: r for r in run_ids if r in ledger and ledger[r]["kind"] == "slurm"}
    out = {slurm[j]: s for j, s in slurm_alive(list(slurm)).items()}
    for r in run_ids:
        rec = ledger.get(r)
        if rec and rec["kind"] == "local" and pid_alive(rec["job_id"]):
            out[r] = "local"
    return out


class Controller:
    def __init__(self, spec: GridSpec, opts: RunOptions | None = None, console=None, executor=None):
        """``executor``: one made already (the CLI starts the local launcher before its own
        imports); by default the controller makes it."""
        from rich.console import Console

        self.executor = executor
        self.spec = spec
        self.opts = opts or RunOptions()
        self.console = console or Console(stderr=True)
        self.kind = resolve_kind(spec.executor.kind)
        self.dir = spec.sweep_dir
        self.log_dir = self.dir / "logs"

    def _threads(self) -> int | None:
        if self.kind in ("local", "debug"):
            cores = os.cpu_count() or 1
            ex = self.spec.executor
            return max(1, cores // (ex.max_parallel * ex.tasks_per_node if self.kind == "local" else 1))
        return None

    def run(self) -> Outcome:
        t0 = time.monotonic()
        spec = self.spec
        if self.executor is not None:  # its maker closes it
            return self._run(self.executor, t0)
        executor = make_executor(spec.executor, self.kind, self.log_dir, spec.name)
        try:
            return self._run(executor, t0)
        finally:
            if self.kind == "local":
                executor.close()

    def _run(self, executor, t0: float) -> Outcome:
        spec = self.spec
        storage = open_storage(spec)
        plan = initial_plan(spec, storage)
        self.dir.mkdir(parents=True, exist_ok=True)
        if spec.path and Path(spec.path).is_file():
            shutil.copyfile(spec.path, self.dir / "spec.yaml")
        save_plan(self.dir, plan_frame(plan))
        submitted: dict[str, Any] = {}  # run_id -> submitit job, this invocation
        outcome = Outcome(state=pd.DataFrame())
        live = None
        if self.opts.show_progress and self.opts.wait:
            from rich.live import Live

            live = Live(console=self.console, refresh_per_second=2, transient=False)
            live.start()
        rows_cache: dict = {}  # parsed result files, kept until they change
        told: dict = {}  # points already in the Optuna record
        try:
            while True:
                runs = run_rows(spec.results, spec.name, rows_cache)
                ids = [r.run_id for r in plan]
                alive = alive_jobs(self.dir, ids)
                for rid, job in submitted.items():  # this invocation's jobs (reaps local ones)
                    if rid not in alive and self.kind != "debug" and not job.done():
                        alive[rid] = "submitted"
                state = sweep_state(plan, runs, alive)
                statuses = dict(zip(state.run_id, state.status, strict=True))
                want = state.status.eq("missing") | (self.opts.retry_failed & state.status.eq("failed"))
                todo = [rid for rid in state.run_id[want] if rid not in submitted]
                if self.kind == "local":
                    running = sum(1 for s in state.status if s in ("running", "pending"))
                    todo = todo[:max(0, executor.capacity(spec.executor.max_parallel) - running)]
                if todo:  # submit before telling Optuna: a free slot should not wait on SQLite
                    self._submit(executor, plan, todo, submitted)
                    outcome.submitted += todo
                    if self.kind == "debug":
                        for rid in todo:
                            self._run_debug(submitted[rid])
                    continue
                tell(spec, plan, runs, storage, told)
                if spec.sampler.name == "tpe":
                    new = ask_wave(spec, plan, statuses, storage)
                    if new:
                        plan += new
                        save_plan(self.dir, plan_frame(plan))
                        continue
                if live:
                    live.update(self._render(state))
                if not self.opts.wait:
                    break
                waiting = state.status.isin(["running", "pending"]).any()
                pending_local = self.kind == "local" and (want & ~state.run_id.isin(submitted)).any()
                if not waiting and not pending_local:
                    break
                if self.kind == "local":
                    executor.wait(self.opts.poll_s)  # wakes as soon as a run ends
                else:
                    time.sleep(self.opts.poll_s)
        finally:
            if live:
                live.stop()
        runs = run_rows(spec.results, spec.name, rows_cache)
        outcome.state = sweep_state(plan, runs, alive_jobs(self.dir, [r.run_id for r in plan]))
        tell(spec, plan, runs, storage, told)
        for rid in outcome.state.run_id[outcome.state.status.eq("missing")]:
            if rid in submitted:
                job = submitted[rid]
                outcome.lost[rid] = job_log_tail(self.log_dir, str(job.job_id)) or "(no log)"
        outcome.wall_s = time.monotonic() - t0
        return outcome

    def _submit(self, executor, plan: list[PlannedRun], todo: list[str], submitted: dict) -> None:
        by_id = {r.run_id: r for r in plan}
        items = [(rid, by_id[rid].config.to_dict()) for rid in todo]
        jobs = submit(executor, self.kind, items, threads=self._threads(), array_size=self.opts.array_size)
        record_jobs(self.dir, self.kind, [(s.run_id, s.job_id) for s in jobs])
        for s in jobs:
            submitted[s.run_id] = s.job

    def _run_debug(self, job) -> None:
        try:
            job.result()
        except Exception:  # the run's own failed row says what happened
            pass

    def _render(self, state: pd.DataFrame):
        from rich.table import Table

        spec = self.spec
        by_stem = counts(state, ["stem"]) if len(state) else None
        total = counts(state) if len(state) else None
        done = int(state.status.isin(DONE).sum())
        eta = eta_seconds(state, spec.executor.max_parallel if self.kind == "local" else spec.executor.array_parallelism)
        title = (f"sweep {spec.name} [{self.kind}]: {done}/{len(state)} done"
                 + (f", ETA {eta / 60:.1f} min" if eta else ""))
        table = Table(title=title)
        cols = ["completed", "diverged", "failed", "running", "pending", "missing", "total"]
        table.add_column("stem")
        for c in cols:
            table.add_column(c, justify="right")
        if by_stem is not None:
            for stem, row in by_stem.iterrows():
                table.add_row(str(stem), *[str(int(row[c])) for c in cols])
            table.add_row("all", *[str(int(total.iloc[0][c])) for c in cols], style="bold")
        return table


def status_report(spec: GridSpec) -> dict[str, Any]:
    """Everything ``stability grid status`` prints, as plain data (``--json``)."""
    sweep_dir = spec.sweep_dir
    saved = load_plan(sweep_dir)
    plan = plan_from_frame(saved) if saved is not None else (
        make_plan(spec) if spec.sampler.name != "tpe" else [])
    runs = run_rows(spec.results, spec.name)
    ids = [r.run_id for r in plan]
    alive = alive_jobs(sweep_dir, ids)
    state = sweep_state(plan, runs, alive)
    ledger = read_ledger(sweep_dir)
    total = counts(state).iloc[0].to_dict() if len(state) else {}
    cells = counts(state, ["stem", "optimizer", "epochs"]).reset_index() if len(state) else pd.DataFrame()
    failures = []
    for r in state[state.status.eq("failed")].itertuples():
        failures.append({"run_id": r.run_id, "stem": r.stem, "error": r.error,
                         "log": job_log_tail(sweep_dir / "logs", ledger[r.run_id]["job_id"])
                         if r.run_id in ledger else ""})
    lost = []
    for r in state[state.status.eq("missing")].itertuples():
        if r.run_id in ledger:
            lost.append({"run_id": r.run_id, "job_id": ledger[r.run_id]["job_id"],
                         "log": job_log_tail(sweep_dir / "logs", ledger[r.run_id]["job_id"])})
    parallel = spec.executor.array_parallelism if resolve_kind(spec.executor.kind) == "slurm" else spec.executor.max_parallel
    return {
        "sweep": spec.name, "results": str(spec.results), "planned": len(plan),
        "counts": {k: int(v) for k, v in total.items()},
        "cells": [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                  for row in cells.to_dict(orient="records")],
        "jobs": {"alive": len(alive), "running": sum(1 for s in alive.values() if s in ("RUNNING", "local")),
                 "pending": sum(1 for s in alive.values() if s not in ("RUNNING", "local"))},
        "failures": failures, "lost": lost, "eta_s": eta_seconds(state, parallel),
    }


def sweep_status(results: str | Path, sweep: str) -> dict[str, Any] | None:
    """``status_report`` of a sweep found under a results root by its saved spec (the dashboard's
    Overview); None for runs that no grid launched (no ``_sweeps/<sweep>/spec.yaml``)."""
    from .spec import saved_spec

    spec = saved_spec(results, sweep)
    return None if spec is None else status_report(spec)


def clean_logs(spec: GridSpec) -> int:
    """Remove the submitit log files of runs that are done; returns files removed."""
    sweep_dir = spec.sweep_dir
    ledger = read_ledger(sweep_dir)
    runs = run_rows(spec.results, spec.name)
    done = set(runs.run_id[runs.status.isin(DONE)])
    removed = 0
    logs = sweep_dir / "logs"
    for rid, rec in ledger.items():
        if rid not in done:
            continue
        for p in logs.glob(f"**/{rec['job_id']}_*"):
            p.unlink(missing_ok=True)
            removed += 1
        d = logs / str(rec["job_id"])
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return removed
