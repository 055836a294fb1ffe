"""A sweep's status and ranges as its files say them, read only: what the dashboard shows.

Nothing here asks a scheduler (no ``squeue``, no process table) or writes under the results
root. Liveness comes from what the sweep's processes write: a run is *running* while a live
process holds its lock (``run_lock.run_owner``); a run the ledger says was submitted, with no
result and no holder, is *pending* while the sweep's controller renews its lease
(``lock.LEASE_TIMEOUT_S``) and *missing* once none does (a queued job whose controller died is
resubmitted by the next ``grid run``). ``stability grid status`` asks the scheduler instead
(``controller.status_report``): the two agree once jobs have started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import store
from ..store import RunStatus as S
from ..trainer.run_lock import run_owner
from .joblogs import job_log_tail
from .ledger import failures, read_ledger
from .lock import controller_lease
from .samplers import sampler_for
from .spec import Range, saved_spec
from .state import counts, done_ids, eta_seconds, run_rows, sweep_state


def sweep_record(results: str | Path, sweep: str) -> dict[str, Any] | None:
    """What the sweep's files say: ``planned``, ``counts`` per status, ``eta_s``, ``controller``
    (the live controller's lease, or None), ``failures`` and ``lost`` (run_id, log tail); None for
    runs that no grid launched (no ``_sweeps/<sweep>/spec.yaml``)."""
    spec = saved_spec(results, sweep)
    if spec is None:
        return None
    plan, _ = sampler_for(spec).recorded_plan()
    runs = run_rows(results, sweep)
    ledger = read_ledger(spec.sweep_dir)
    lease = controller_lease(spec.sweep_dir)
    done = done_ids(runs)
    alive = {}
    for r in plan:
        if r.run_id in done:
            continue
        if run_owner(results, sweep, r.run_id) is not None:
            alive[r.run_id] = "RUNNING"
        elif r.run_id in ledger and lease is not None:
            alive[r.run_id] = "PENDING"
    state = sweep_state(plan, runs, alive, set(ledger), failures(ledger))
    logs = store.logs_dir(results, sweep)

    def tail(rid: str) -> str:
        return job_log_tail(logs, str(ledger[rid]["job_id"])) if rid in ledger else ""

    total = counts(state).iloc[0].to_dict() if len(state) else {}
    return {"planned": len(plan), "counts": {k: int(v) for k, v in total.items()},
            "eta_s": eta_seconds(state, max(1, len(alive))), "controller": lease,
            "failures": [{"run_id": rid, "log": tail(rid)} for rid in state.run_id[state.status.eq(S.FAILED)]],
            "lost": [{"run_id": rid, "job_id": str(ledger[rid]["job_id"]), "log": tail(rid)}
                     for rid in state.run_id[state.status.eq(S.MISSING)] if rid in ledger]}


def sampled_ranges(results: str | Path, sweeps: list[str], knobs: tuple[str, ...] = ("lr", "wd")
                   ) -> dict[str, tuple[float, float]]:
    """The union of the ranges ``knobs`` are sampled from in the sweeps' saved specs; {} for
    sweeps without a record or with listed values. A spec that no longer parses is skipped."""
    from ..errors import ConfigError

    out: dict[str, tuple[float, float]] = {}
    for sweep in sweeps:
        try:
            spec = saved_spec(results, sweep)
        except (ConfigError, OSError, RecursionError):  # nested past the parser's limit: no spec either
            continue
        for knob in knobs if spec is not None else ():
            r = spec.space.get(knob)
            if isinstance(r, Range):
                lo, hi = out.get(knob, (r.lo, r.hi))
                out[knob] = (min(lo, r.lo), max(hi, r.hi))
    return out
