"""Asynchronous TPE (a free slot asks the next trial at once) and max_failures (fail fast)."""

from __future__ import annotations

import json
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import optuna
import pandas as pd
import pytest

from stability import store
from stability.errors import ConfigError
from stability.grid.backends import Submitted
from stability.grid.controller import Controller, RunOptions
from stability.grid.job import RunJob
from stability.grid.ledger import read_ledger
from stability.grid.plan import distributions, plan_frame, plan_from_frame
from stability.grid.samplers import sampler_for
from stability.grid.spec import load_spec, parse_spec
from stability.grid.state import load_plan, save_plan
from stability.grid.studies import ask_free, open_storage, study_name

from .conftest import run_cli, unreadable_cifar, write_spec

SPACE = {"lr": {"loguniform": [1e-4, 1e-2]}, "wd": {"loguniform": [1e-3, 0.5]}}


class Killed(BaseException):
    """A controller killed mid-sweep (not an Exception: nothing in the controller catches it)."""


class Threads:
    """Runs in two threads of this process (real trainings). Records, at every ``wait`` (a poll),
    how many runs the controller knew to be in flight (alive at its last ``alive`` call, or
    submitted since) and how many had been submitted; ``kill_after``: the submit call that would
    take the submissions past this many kills the controller (its points asked, never submitted).
    Counted in points, not calls: two runs that end within one poll are asked and submitted in
    one call, so a call count would kill at a point that depends on timing."""

    name = "threads"

    def __init__(self, tag: str, before: int = 0, kill_after: int | None = None):
        self.tag, self.before, self.kill_after = tag, before, kill_after
        self.pool, self.jobs, self.known, self.polls = ThreadPoolExecutor(2), {}, set(), []

    def start(self): ...
    def capacity(self): return 2
    def parallelism(self): return 2
    def log_tail(self, job_id, lines=5): return ""
    def close(self): self.pool.shutdown()

    def alive(self, job_ids):
        out = {j: "RUNNING" for j in job_ids if j in self.jobs and not self.jobs[j].done()}
        self.known = set(out)
        return out

    def wait(self, timeout):
        self.polls.append((len(self.known), self.before + len(self.jobs)))
        wait([f for f in self.jobs.values() if not f.done()], timeout, FIRST_COMPLETED)

    def submit(self, items):
        if self.kill_after is not None and len(self.jobs) + len(items) > self.kill_after:
            raise Killed
        out = []
        for run_id, config in items:
            fut = self.pool.submit(RunJob(), config)
            fut.job_id = f"{self.tag}{len(self.jobs)}"  # unique across controllers: the ledger keeps them
            self.jobs[fut.job_id] = fut
            self.known.add(fut.job_id)
            out.append(Submitted(run_id, fut))
        return out


def _run(spec, backend):
    try:
        return Controller(spec, RunOptions(show_progress=False, poll_s=5.0), backend=backend).run()
    finally:
        backend.close()  # waits for its runs


def test_async_tpe_keeps_every_slot_busy_never_repeats_a_point_and_survives_a_kill(tmp_path):
    spec = load_spec(write_spec(tmp_path / "g.yaml", "atpe", tmp_path / "res", space=SPACE,
                                base={"epochs": 1, "steps_per_epoch": 2},
                                sampler={"name": "tpe", "n": 5, "seed": 0}))
    assert spec.sampler.mode == "async"  # the default without a wave size
    # The first controller asks 2 (both slots), then one per finished run (two when both ended
    # within one poll); it is killed submitting the 4th point: the points of that call are asked
    # and saved in the plan but never submitted.
    first = Threads("a", kill_after=3)
    with pytest.raises(Killed):
        _run(spec, first)
    plan = plan_from_frame(load_plan(spec.sweep_dir))
    ledger = read_ledger(spec.sweep_dir)
    unsubmitted = [r.run_id for r in plan if r.run_id not in ledger]
    assert len(ledger) in (2, 3) and len(plan) >= 4 and 1 <= len(unsubmitted) <= 2, (len(plan), len(ledger))
    second = Threads("b", before=len(ledger))
    outcome = _run(spec, second)
    # the saved points were submitted first (not lost), and free slots asked the rest at once
    assert sorted(outcome.submitted[:len(unsubmitted)]) == sorted(unsubmitted)
    assert len(outcome.submitted) == 5 - len(ledger)
    assert outcome.state.status.eq("completed").all() and len(outcome.state) == 5
    # no idle slot: at every poll both slots were busy, unless every trial had been submitted
    polls = first.polls + second.polls
    assert polls and all(busy == 2 or submitted == 5 for busy, submitted in polls), polls
    # each point is asked once: 5 distinct configs, 5 trials, each told before a later ask
    plan = plan_from_frame(load_plan(spec.sweep_dir))
    assert len({r.run_id for r in plan}) == 5 == len({json.dumps(r.config.to_dict(), sort_keys=True) for r in plan})
    assert len({(r.config.lr, r.config.wd) for r in plan}) == 5
    storage = optuna.storages.RDBStorage(f"sqlite:///{spec.sweep_dir / 'optuna.db'}")
    trials = optuna.load_study(study_name=study_name(spec, "", "patchify"), storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5
    assert sorted(t.number for t in trials) == sorted(r.point for r in plan)
    for t in trials[2:]:  # trial i was asked after i - 1 results had been told
        assert sum(u.datetime_complete <= t.datetime_start for u in trials) >= t.number - 1, t.number
    assert sorted(store.load(tmp_path / "res").runs.run_id) == sorted(r.run_id for r in plan)
    third = Threads("c", before=5)  # finished: nothing asked, nothing submitted
    assert _run(spec, third).submitted == [] and not third.jobs
    assert len(optuna.load_study(study_name=study_name(spec, "", "patchify"), storage=storage).trials) == 5


class Racing(Threads):
    """Every run ends between the controller's read of the rows and its liveness check: the
    backend answers ``alive`` only once its jobs are done (and their rows written)."""

    def alive(self, job_ids):
        wait([f for j, f in self.jobs.items() if j in job_ids], None)
        return super().alive(job_ids)


def test_a_run_ending_between_the_rows_read_and_the_liveness_check_is_told_not_trained_again(tmp_path):
    """Read first, the rows say running; asked next, the backend says the job is gone: the run
    ended in between. The controller reads its row again (not: missing, submitted a second time,
    a free slot asked before its result was told)."""
    spec = load_spec(write_spec(tmp_path / "g.yaml", "race", tmp_path / "res", space=SPACE,
                                base={"epochs": 1, "steps_per_epoch": 1},
                                sampler={"name": "tpe", "n": 3, "seed": 0}))
    backend = Racing("r")
    outcome = _run(spec, backend)
    assert len(backend.jobs) == 3 and sorted(outcome.submitted) == sorted(outcome.state.run_id)
    assert outcome.state.status.eq("completed").all() and len(outcome.state) == 3
    storage = optuna.storages.RDBStorage(f"sqlite:///{spec.sweep_dir / 'optuna.db'}")
    trials = optuna.load_study(study_name=study_name(spec, "", "patchify"), storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(t.datetime_complete <= trials[2].datetime_start for t in trials[:2])  # both told, then asked


def test_a_trial_asked_but_never_saved_is_adopted_not_lost_or_asked_again(tmp_path):
    """A controller killed between asking Optuna and saving the plan leaves RUNNING trials the
    plan does not have: the next controller plans them (a duplicate of a planned point is told
    FAIL), and asks only what n still allows."""
    spec = load_spec(write_spec(tmp_path / "g.yaml", "adopt", tmp_path / "res", space=SPACE,
                                sampler={"name": "tpe", "n": 3, "seed": 0}))
    spec.sweep_dir.mkdir(parents=True)
    storage = open_storage(spec)
    saved = ask_free(spec, [], {}, storage, 1)
    save_plan(spec.sweep_dir, plan_frame(saved))
    lost = ask_free(spec, saved, {}, storage, 1)  # asked, then the controller died: not in the plan
    study = optuna.load_study(study_name=study_name(spec, "", "patchify"), storage=storage)
    study.enqueue_trial({k: getattr(saved[0].config, k) for k in SPACE})
    dup = study.ask(distributions(spec.ranges))  # an orphan repeating a planned point
    plan = sampler_for(spec).plan_of_record(storage)
    assert [r.run_id for r in plan] == [r.run_id for r in saved + lost]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dup.number] == optuna.trial.TrialState.FAIL
    assert sampler_for(spec).plan_of_record(storage) == plan  # adopting is idempotent
    more = ask_free(spec, plan, {}, storage, 5)
    assert len(more) == 1  # n = 3: one left to ask, whatever the free slots
    ids = [r.run_id for r in plan + more]
    assert len(set(ids)) == 3 and len({r.config.lr for r in plan + more}) == 3


def test_sampler_mode_and_max_failures_are_validated():
    base = {"name": "x", "space": SPACE}
    assert parse_spec({**base, "sampler": {"name": "tpe", "wave": 2}}, "s.yaml").sampler.mode == "waves"
    assert parse_spec({**base, "sampler": {"name": "tpe", "mode": "waves"}}, "s.yaml").sampler.mode == "waves"
    assert parse_spec({**base, "executor": {"max_failures": 3.0}}, "s.yaml").executor.max_failures == 3
    assert parse_spec({**base, "executor": {"max_failures": 0.25}}, "s.yaml").executor.max_failures == 0.25
    for section, value, needles in [
        ("sampler", {"name": "tpe", "mode": "eager"}, ["sampler.mode", "async, waves"]),
        ("sampler", {"name": "sobol", "mode": "async"}, ["sampler.mode", "tpe only"]),
        ("sampler", {"name": "tpe", "mode": "async", "wave": 4}, ["sampler.wave", "mode: waves"]),
        *[("executor", {"max_failures": v}, ["executor.max_failures", "integer >= 1", "0 < f < 1"])
          for v in (0, -1, 1.5, "five", True, float("inf"))],
    ]:
        with pytest.raises(ConfigError) as e:
            parse_spec({**base, section: value}, "s.yaml")
        line = str(e.value)
        assert len(line.splitlines()) == 1 and all(n in line for n in needles), line


def test_max_failures_counts_submitted_failures_not_divergence():
    from types import SimpleNamespace

    spec = parse_spec({"name": "x", "space": {"lr": [1e-3]}, "executor": {"max_failures": 0.5}}, "s.yaml")
    ctl = Controller(spec)
    ctl.opts = RunOptions()
    state = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "status": ["diverged", "failed", "running", "failed"],
                          "error": [None, "DataError: no batches\nmore", None, "boom"],
                          "job_state": [None, None, "RUNNING", None]})
    seen: list[str] = []
    job = SimpleNamespace()
    assert ctl._too_many_failures(state, {"a": job, "b": job, "c": job}, seen) is None  # 1 < 0.5 x 3 submitted
    line = ctl._too_many_failures(state, {"a": job, "b": job, "c": job, "d": job}, seen)  # 2 >= 0.5 x 4
    assert line is not None and len(line.splitlines()) == 1 and seen == ["b", "d"]
    assert "2 runs failed" in line and "0.5 of the 4 submitted" in line and "first error (b): DataError: no batches" in line


def test_max_failures_stops_submitting_and_exits_non_zero(tmp_path):
    """Every cifar10 run fails at once (its data_root has the release's file names, which pass
    the plan-time check, but no batches in them). With max_failures 2 the controller (one run at a
    time) stops after the second failure, leaves the rest unsubmitted, says why on one line and
    exits 1 (that diverged runs do not count is checked above)."""
    nowhere = unreadable_cifar(tmp_path / "nowhere")
    spec_path = write_spec(tmp_path / "g.yaml", "ff", tmp_path / "res", space={"lr": [1e-3, 2e-3, 3e-3, 4e-3]},
                           base={"dataset": "cifar10", "epochs": 1, "steps_per_epoch": 2, "data_root": str(nowhere)},
                           executor={"kind": "local", "max_parallel": 1, "timeout_min": 20, "max_failures": 2})
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 1, out.stdout + out.stderr
    (line,) = [x for x in out.stdout.splitlines() if "stopped submitting" in x]
    assert "2 runs failed (executor.max_failures: 2)" in line and "first error" in line
    assert "DataError" in line and str(nowhere) in line and "2 planned runs left unsubmitted" in line
    assert "submitted 2;" in out.stdout
    counts = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)["counts"]
    assert (counts["failed"], counts["pending"]) == (2, 2)
