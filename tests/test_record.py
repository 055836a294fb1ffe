"""The dashboard's read-only sweep record: status from the sweep's own files, never the scheduler."""

import fcntl
import json
import os
import subprocess
import time

from stability import store
from stability.grid.ledger import record_jobs
from stability.grid.plan import plan_frame
from stability.grid.record import sampled_ranges, sweep_record
from stability.grid.samplers import make_plan
from stability.grid.spec import load_spec, save_spec_copy
from stability.grid.state import save_plan

from .conftest import write_spec


def _no_scheduler(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"the read-only record started a process: {a[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)


def test_status_comes_from_locks_lease_and_ledger_without_asking_the_scheduler(tmp_path, monkeypatch):
    spec = load_spec(write_spec(tmp_path / "g.yaml", "rec", tmp_path / "res",
                                sampler={"name": "random", "n": 1, "seed": 0}, executor={"kind": "slurm"}))
    assert sweep_record(spec.results, spec.name) is None  # no grid launched it yet
    plan = make_plan(spec)
    save_spec_copy(spec)
    save_plan(spec.sweep_dir, plan_frame(plan))
    a, b = (r.run_id for r in plan)
    record_jobs(spec.sweep_dir, "slurm", [(a, "4242")])  # a slurm job the record must not ask squeue about
    logs = store.logs_dir(spec.results, spec.name)
    logs.mkdir(parents=True)
    (logs / "4242_0_log.err").write_text("starting\nnode lost (test)\n")
    _no_scheduler(monkeypatch)

    def status():
        rep = sweep_record(spec.results, spec.name)
        return rep, {s: n for s, n in rep["counts"].items() if n and s != "total"}

    rep, c = status()  # no controller: a submitted run with no result and no holder is lost
    assert rep["planned"] == 2 and rep["controller"] is None and c == {"missing": 1, "pending": 1}
    assert rep["lost"] == [{"run_id": a, "job_id": "4242", "log": "starting\nnode lost (test)"}]

    lease = spec.sweep_dir / "lease.json"
    lease.write_text(json.dumps({"host": "h", "pid": 1, "since": "t", "heartbeat": time.time()}))
    rep, c = status()  # a live controller watches it: queued
    assert rep["controller"]["host"] == "h" and c == {"pending": 2} and rep["lost"] == []

    owner = store.owner_path(spec.results, spec.name, a)
    owner.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(owner, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a training process holds
        rep, c = status()
        assert c == {"running": 1, "pending": 1}
    finally:
        os.close(fd)

    lease.write_text(json.dumps({"host": "h", "pid": 1, "since": "t", "heartbeat": time.time() - 3600}))
    assert status()[1] == {"missing": 1, "pending": 1}  # a stale lease is a dead controller's
    lease.write_text(json.dumps({"host": "h", "pid": 1, "since": "t", "heartbeat": time.time(), "released": 1.0}))
    assert status()[1] == {"missing": 1, "pending": 1}  # released: no controller
    assert sampled_ranges(spec.results, [spec.name, "nosuch"]) == {"lr": (1e-4, 1e-2)}
