"""The grid runner end to end with in-process (debug) and local-process executors."""

import json
import os
import re
import shutil
import time

import optuna

from stability import store
from stability.grid.ledger import read_ledger
from stability.grid.local import pid_alive
from stability.grid.spec import load_spec

from .conftest import run_cli, unreadable_cifar, write_spec
from .test_data import _write_cifar


def test_debug_grid_records_divergence_and_optuna_study(tmp_path):
    spec_path = write_spec(tmp_path / "g.yaml", "dbg", tmp_path / "res",
                           base={"optimizer": "sgd", "epochs": 1, "steps_per_epoch": 4},
                           space={"stem": ["patchify", "conv"], "lr": [0.01, 1000.0]},
                           executor={"kind": "debug"})
    out = run_cli("grid", "run", str(spec_path))  # piped: a line per run as it ends, not only the final table
    assert out.returncode == 0, out.stderr
    ended = [line for line in out.stderr.splitlines() if " run " in line and " ended]" in line]
    assert len(ended) == 4 and sum("(conv): diverged" in line for line in ended) == 1, out.stderr
    assert ended[-1].endswith("[4 of 4 ended]") and "top-1 error" in " ".join(ended), ended
    runs = store.load(tmp_path / "res").runs.set_index("lr")
    assert sorted(runs.index) == [0.01, 0.01, 1000.0, 1000.0]
    assert set(runs.loc[1000.0].status) == {"diverged"} and set(runs.loc[1000.0].top1_err) == {100.0}
    assert set(runs.loc[0.01].status) == {"completed"}
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'res/_sweeps/dbg/optuna.db'}")
    summaries = optuna.get_all_study_summaries(storage)
    assert sorted(s.study_name for s in summaries) == ["dbg/lr=0.01/stem=conv", "dbg/lr=0.01/stem=patchify",
                                                       "dbg/lr=1000.0/stem=conv", "dbg/lr=1000.0/stem=patchify"]
    states = {}
    for s in summaries:
        (t,) = optuna.load_study(study_name=s.study_name, storage=storage).trials
        states[s.study_name] = t
    pruned = states["dbg/lr=1000.0/stem=conv"]
    assert pruned.state == optuna.trial.TrialState.PRUNED and "diverged_at_step" in pruned.user_attrs
    assert pruned.intermediate_values == {pruned.user_attrs["diverged_at_step"]: 100.0}
    done = states["dbg/lr=0.01/stem=conv"]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == runs.loc[0.01].set_index("stem").top1_err["conv"]
    # idempotent: a second run submits nothing and tells nothing twice
    again = run_cli("grid", "run", str(spec_path))  # with its progress table, to a pipe
    assert again.returncode == 0 and "submitted 0" in again.stdout
    assert "4 of 4 runs had ended before this start" in again.stderr and " run " not in again.stderr
    assert sum(len(optuna.load_study(study_name=s.study_name, storage=storage).trials) for s in summaries) == 4
    # piped, the table keeps whole words (rich cuts at 80 columns off a terminal: "complet…")
    assert "│ patchify │         1 │        1 │" in again.stderr and "…" not in again.stderr, again.stderr
    assert again.stderr.endswith("┘\n")
    # the sweep's answer, not only its counts: 4 steps at lr 0.01 learn nothing and lr 1000 diverges,
    # so neither stem left chance, and the end-of-run summary, status and --json all say so
    for stem in ("patchify", "conv"):
        line = f"  {stem}: 0 of 2 runs left chance (1 completed: 1 at chance, "
        assert line in out.stdout and line in again.stdout, out.stdout
        assert f"warning: {stem} never left chance" in out.stdout
    stems = {o["stem"]: o for o in json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)["stems"]}
    for o in stems.values():
        assert (o["runs"], o["completed"], o["at_chance"], o["diverged"], o["learned"]) == (2, 1, 1, 1, 0)
        assert o["never_left_chance"] is True and o["median_err"] == 100 - (100 - o["at_chance_err"][0]) / 2
    status = run_cli("grid", "status", str(spec_path))  # stdout is a pipe here, not a terminal
    assert status.returncode == 0 and "warning: patchify never left chance" in status.stdout
    assert "…" not in status.stdout and "preempted" in status.stdout and "completed" in status.stdout


def test_grid_summary_counts_a_stem_that_left_chance():
    """``state.stem_outcomes`` on a hand-made state: the flag is per stem, ``at_chance`` is
    ``findings.at_chance`` (error >= 0.9 x the error at init), diverged runs never count as learned."""
    import pandas as pd

    from stability.grid.state import stem_outcomes

    state = pd.DataFrame({"run_id": list("abcdefg"), "stem": ["conv"] * 3 + ["patchify"] * 4,
                          "optimizer": "adamw", "epochs": 2, "cell": None,
                          "status": ["completed", "completed", "diverged", "completed", "completed", "diverged",
                                     "failed"]})
    runs = pd.DataFrame({"run_id": list("abcdef"), "status": state.status[:6],
                         "top1_err": [5.0, 80.0, 100.0, 61.0, 91.0, 100.0],
                         "init_top1_err": [90.0, 90.0, 90.0, 67.0, 92.0, 90.0]})
    conv, patchify = stem_outcomes(state, runs)
    assert (conv["learned"], conv["at_chance"], conv["never_left_chance"]) == (2, 0, False)
    assert (patchify["runs"], patchify["at_chance"], patchify["left_out"]) == (3, 2, 1)
    assert patchify["never_left_chance"] and patchify["at_chance_err"] == [61.0, 91.0]
    assert patchify["line"].startswith("patchify: 0 of 3 runs left chance (2 completed: 2 at chance, 61–91 % error; "
                                       "1 diverged)") and patchify["line"].endswith("<- never left chance")
    assert conv["line"] == "conv: 2 of 3 runs left chance (2 completed: 0 at chance; 1 diverged); median error 80.0 %"


def test_grid_summary_splits_by_data_and_names_a_missing_stem():
    """Where the sweep's runs finished on other data, each stem's line is per data; runs with no row
    yet make no line of their own; a run without a stem (RegNet) is "no stem", with its error range."""
    import pandas as pd

    from stability.analysis.grouping import DATA_COLUMNS, with_design
    from stability.grid.state import stem_outcomes, sweep_data

    state = pd.DataFrame({"run_id": list("abcdefgh"), "stem": ["conv"] * 3 + [None] * 5, "optimizer": "adamw",
                          "epochs": 2, "cell": None, "status": ["completed"] * 6 + ["pending", "failed"]})
    runs = pd.DataFrame({"run_id": list("abcdefh"), "sweep": "s", "dataset": "cifar10",
                         "status": ["completed"] * 6 + ["failed"], "top1_err": [5.0, 80.0, 7.0, 89.0, 88.0, 86.0, None],
                         "init_top1_err": 90.0})
    shapes = [(10, 40, 10)] * 2 + [(10, 60, 10)] + [(10, 40, 10)] * 3 + [(20, 9, 9)]  # h: failed, never trained
    runs = runs.assign(**dict(zip(DATA_COLUMNS, zip(*shapes, strict=True), strict=True)))
    data = with_design(runs)
    lines = [o["line"] for o in stem_outcomes(state, runs, data=data)]
    assert lines == ["conv (data 10 classes, 40 train / 10 val): 2 of 2 runs left chance (2 completed: 0 at chance; "
                     "0 diverged); median error 42.5 %",
                     "no stem (data 10 classes, 40 train / 10 val): 0 of 3 runs left chance (3 completed: 3 at chance, "
                     "86–89 % error; 0 diverged); median error 88.0 %  <- never left chance",
                     "conv (data 10 classes, 60 train / 10 val): 1 of 1 runs left chance (1 completed: 0 at chance; "
                     "0 diverged); median error 7.0 %"], lines
    # the warning's data: finished runs only (h recorded data it never trained on)
    shape = ("data_classes", "train_images", "val_images")
    assert sweep_data(data) == [{"sweep": "s", "dataset": "cifar10", "data": "10 classes, 40 train / 10 val",
                                 **dict(zip(shape, (10, 40, 10), strict=True)), "runs": 5, "run_ids": ["a", "b", "d", "e", "f"]},
                                {"sweep": "s", "dataset": "cifar10", "data": "10 classes, 60 train / 10 val",
                                 **dict(zip(shape, (10, 60, 10), strict=True)), "runs": 1, "run_ids": ["c"]}]


def test_local_grid_status_collect_clean(tmp_path):
    spec_path = write_spec(tmp_path / "g.yaml", "loc", tmp_path / "res")
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 0, out.stderr
    spec = load_spec(spec_path)
    ledger = read_ledger(spec.sweep_dir)
    assert len(ledger) == 4 and {r["kind"] for r in ledger.values()} == {"local"}
    status = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)
    assert status["counts"]["completed"] == 4 and status["planned"] == 4
    assert {(c["stem"], c["completed"]) for c in status["cells"]} == {("patchify", 2), ("conv", 2)}
    before = store.load(tmp_path / "res")
    # each local run gets the CPUs over max_parallel torch threads, recorded (bit-identity needs the same)
    assert (before.runs.threads == max(1, (os.cpu_count() or 1) // 2)).all(), before.runs.threads
    assert run_cli("grid", "collect", str(spec_path)).returncode == 0
    after = store.load(tmp_path / "res")
    assert len(after.steps) == len(before.steps) and sorted(after.runs.run_id) == sorted(before.runs.run_id)
    assert len(list((tmp_path / "res/runs/sweep=loc").glob("*.parquet"))) == 1
    assert json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)["counts"]["completed"] == 4
    logs = list((spec.sweep_dir / "logs").iterdir())
    assert logs
    clean = run_cli("grid", "clean", str(spec_path))
    assert clean.returncode == 0 and "removed" in clean.stdout
    assert not [p for p in (spec.sweep_dir / "logs").rglob("*_log.*")]


def test_local_no_wait_runs_outlive_the_controller(tmp_path):
    """Local runs are forked by a warm launcher, not by the controller: ``--no-wait`` returns
    at once and its runs finish on their own; a rerun submits only the rest."""
    spec_path = write_spec(tmp_path / "g.yaml", "nw", tmp_path / "res",
                           space={"stem": ["patchify", "conv"], "lr": [1e-3, 3e-3]})
    out = run_cli("grid", "run", str(spec_path), "--quiet", "--no-wait")
    assert out.returncode == 0 and "submitted 2;" in out.stdout, out.stdout + out.stderr
    spec = load_spec(spec_path)
    pids = [rec["job_id"] for rec in read_ledger(spec.sweep_dir).values()]
    assert len(pids) == 2
    deadline = time.monotonic() + 240
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    counts = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)["counts"]
    assert counts["completed"] == 2 and counts["pending"] == 2 and counts["missing"] == 0  # 2 never submitted
    for p in pids:  # each run logs to <pid>_<task>_log.{out,err}, as submitit names them
        assert (spec.sweep_dir / "logs" / f"{p}_0_log.err").exists()
    again = run_cli("grid", "run", str(spec_path), "--quiet")
    assert again.returncode == 0 and "4 completed; submitted 2;" in again.stdout, again.stdout


def test_local_two_task_job_is_one_ddp_run_and_failures_keep_their_log(tmp_path):
    data = unreadable_cifar(tmp_path / "empty")  # passes the plan-time check; no batches in it
    spec_path = write_spec(tmp_path / "g.yaml", "ddp", tmp_path / "res",
                           executor={"kind": "local", "max_parallel": 1, "tasks_per_node": 2, "timeout_min": 20},
                           base={"model": "vit_p_tiny", "batch_size": 32, "data_root": str(data)},
                           space={"dataset": ["digits", "cifar10"]})
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 1, out.stdout + out.stderr  # the cifar10 run fails: no data
    assert re.search(r"^  failed [0-9a-f]{12} \(patchify\): DataError: ", out.stdout, flags=re.M), out.stdout  # and why
    res = store.load(tmp_path / "res")
    done = res.runs[res.runs.status.eq("completed")]
    assert len(done) == 1 and done.world_size.tolist() == [2]  # one set of rows from rank 0
    assert res.steps[res.steps.run_id.isin(done.run_id)].step.is_unique
    status = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)
    (failure,) = status["failures"]
    assert "DataError" in failure["error"] and "DataError" in failure["log"]
    spec = load_spec(spec_path)
    pid = read_ledger(spec.sweep_dir)[done.run_id.iloc[0]]["job_id"]
    assert {p.name for p in (spec.sweep_dir / "logs").glob(f"{pid}_*_log.err")} == {f"{pid}_0_log.err", f"{pid}_1_log.err"}


def test_tpe_with_model_fixed_stems_finishes_with_n_runs_per_model_and_tells_each_wave(tmp_path):
    """A peak-like spec (the stem comes from the model name): each model's study gets exactly n
    distinct points, and its second wave is asked only after the first was told."""
    def peak_spec(epochs):
        return write_spec(tmp_path / "g.yaml", "peak", tmp_path / "res",
                          base={"optimizer": "adamw", "epochs": epochs, "steps_per_epoch": 2},
                          space={"model": ["vit_p_tiny", "vit_c_tiny"], "lr": {"loguniform": [1e-4, 1e-2]},
                                 "wd": {"loguniform": [1e-3, 0.5]}},
                          sampler={"name": "tpe", "n": 4, "wave": 2, "seed": 0}, executor={"kind": "debug"})

    spec_path = peak_spec(1)
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 0, out.stderr
    runs = store.load(tmp_path / "res").runs
    assert runs.groupby("model").run_id.nunique().to_dict() == {"vit_c_tiny": 4, "vit_p_tiny": 4}
    assert runs.groupby("model")[["lr", "wd"]].apply(lambda g: len(g.drop_duplicates())).tolist() == [4, 4]
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'res/_sweeps/peak/optuna.db'}")
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["peak/model=vit_c_tiny/stem=conv", "peak/model=vit_p_tiny/stem=patchify"]
    for name in names:
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
        first, second = trials[:2], trials[2:]
        assert min(t.datetime_start for t in second) >= max(t.datetime_complete for t in first)
    # rerunning finds the sweep complete: nothing asked, nothing submitted
    again = run_cli("grid", "run", str(spec_path), "--quiet")
    assert again.returncode == 0 and "submitted 0" in again.stdout
    assert len(optuna.load_study(study_name=names[0], storage=storage).trials) == 4
    # the spec edited after the fact (2 epochs): its saved plan no longer matches; never reused
    out = run_cli("grid", "run", str(peak_spec(2)), "--quiet")
    assert out.returncode == 2 and "planned from a different spec" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert len(store.load(tmp_path / "res").runs) == 8


def test_a_new_backend_is_one_small_class(tmp_path):
    """A throw-away backend (runs in threads of this process) plugs into the controller unchanged:
    every run lands, the ledger names the backend, capacity is respected, a rerun submits nothing."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from stability.grid.backends import Submitted
    from stability.grid.controller import Controller, RunOptions
    from stability.grid.job import RunJob

    class Threads:
        name = "threads"

        def __init__(self):
            self.pool, self.jobs, self.most = ThreadPoolExecutor(2), {}, 0

        def start(self): ...
        def capacity(self): return 2
        def parallelism(self): return 2
        def log_tail(self, job_id, lines=5): return ""
        def close(self): self.pool.shutdown()
        def wait(self, timeout): wait(self.jobs.values(), timeout, FIRST_COMPLETED)

        def alive(self, job_ids):
            return {j: "RUNNING" for j in job_ids if j in self.jobs and not self.jobs[j].done()}

        def submit(self, items):
            out = []
            for run_id, config in items:
                fut = self.pool.submit(RunJob(), config)  # no threads cap: torch is shared here
                fut.job_id = f"t{len(self.jobs)}"
                self.jobs[fut.job_id] = fut
                out.append(Submitted(run_id, fut))
            self.most = max(self.most, sum(not f.done() for f in self.jobs.values()))
            return out

    spec = load_spec(write_spec(tmp_path / "g.yaml", "thr", tmp_path / "res",
                                base={"epochs": 1, "steps_per_epoch": 2},
                                sampler={"name": "random", "n": 3, "seed": 0}))
    backend = Threads()
    try:
        outcome = Controller(spec, RunOptions(show_progress=False, poll_s=0.2), backend=backend).run()
    finally:
        backend.close()
    assert len(backend.jobs) == 6 and 1 <= backend.most <= 2
    assert outcome.state.status.eq("completed").all() and len(outcome.state) == 6
    assert {r["kind"] for r in read_ledger(spec.sweep_dir).values()} == {"threads"}
    assert sorted(store.load(tmp_path / "res").runs.run_id) == sorted(outcome.state.run_id)
    again = Threads()
    assert Controller(spec, RunOptions(show_progress=False), backend=again).run().submitted == [] and not again.jobs


def test_a_new_sampler_is_one_small_class(tmp_path, monkeypatch, capsys):
    """A throw-away strategy (each range's two ends, crossed) registered under a new name: the spec
    accepts the name (and names it among the allowed ones when misspelt), the dry run, the grid
    run and `grid status` all plan its points, and nothing else in the project changed for it."""
    import itertools

    import pytest

    from stability.cli import main
    from stability.errors import ConfigError
    from stability.grid.controller import Controller, RunOptions, dry_run, status_report
    from stability.grid.samplers import SAMPLERS, Sampler

    class Corners(Sampler):
        name = "corners"

        @classmethod
        def points_per_cell(cls, n, ranges):
            return 2 ** ranges

        def points(self, n, seed):
            ends = {k: (r.lo, r.hi) for k, r in self.spec.ranges.items()}
            return [dict(zip(ends, v, strict=True)) for v in itertools.product(*ends.values())]

    path = write_spec(tmp_path / "g.yaml", "corners", tmp_path / "res", base={"epochs": 1, "steps_per_epoch": 2},
                      sampler={"name": "corners", "n": 1, "seed": 0}, executor={"kind": "debug"})
    with pytest.raises(ConfigError, match="unknown sampler 'corners'"):
        load_spec(path)
    monkeypatch.setitem(SAMPLERS, "corners", Corners)
    spec = load_spec(path)
    before = dry_run(spec)
    assert sorted(r.config.lr for r in before.plan) == [1e-4, 1e-4, 1e-2, 1e-2]
    assert before.done == 0 and before.cost.runs == 4
    assert main(["grid", "status", str(path)]) == 0  # nothing run yet: said, and nothing written
    assert "not started: no `grid run` of corners" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "res").exists()
    outcome = Controller(spec, RunOptions(show_progress=False)).run()
    assert len(outcome.state) == 4 and outcome.state.status.isin(["completed", "diverged"]).all()
    assert status_report(spec)["planned"] == 4
    after = dry_run(spec)  # every planned run has its result: counted, nothing left to cost
    assert after.done == 4 and after.cost.runs == 0 and after.cost.gpu_hours == 0
    assert main(["grid", "run", str(path), "--dry-run"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "4 runs: patchify: 2, conv: 2; 4 already have results, the other 0 are costed" in text, text


def test_a_sweep_extended_on_other_data_says_so_and_keeps_the_two_apart(tmp_path):
    """data_root is not in the run id, so a sweep extended after its data_root was pointed at
    another dataset mixes two datasets under one name: the rows record what each run's data held,
    `grid run` and `grid status` warn naming both, and the analyses keep them apart."""
    from stability import analysis

    _write_cifar(tmp_path / "a", n_train=40, n_test=10)
    _write_cifar(tmp_path / "b", n_train=60, n_test=10)

    def spec(data, seeds):
        return write_spec(tmp_path / "g.yaml", "mixed", tmp_path / "res", seeds=seeds, space={"stem": ["patchify", "conv"]},
                          base={"dataset": "cifar10", "data_root": str(data), "epochs": 1, "steps_per_epoch": 1,
                                "batch_size": 16, "trace_every": 1}, executor={"kind": "debug"})

    first = run_cli("grid", "run", str(spec(tmp_path / "a", [0])), "--quiet")
    assert first.returncode == 0 and "different data" not in first.stdout, first.stdout + first.stderr
    out = run_cli("grid", "run", str(spec(tmp_path / "b", [0, 1])), "--quiet")  # seed 1 added, on b
    assert out.returncode == 0 and "4 completed; submitted 2" in out.stdout, out.stdout + out.stderr
    warning = ("warning: sweep mixed: runs trained on different data: 10 classes, 40 train / 10 val (2 runs); "
               "10 classes, 60 train / 10 val (2 runs)")
    assert warning in out.stdout, out.stdout
    runs = store.load(tmp_path / "res").runs
    on_a = sorted(runs.run_id[runs.train_images.eq(40)])
    assert f"  10 classes, 40 train / 10 val: {', '.join(on_a)}\n" in out.stdout  # which runs, by id
    on_b = sorted(runs.run_id[runs.train_images.eq(60)])  # and which data this grid run trained on
    assert f"  10 classes, 60 train / 10 val: {', '.join(on_b)}  <- what this grid run trained on" in out.stdout
    assert (f"stability train --run RUN_ID results={tmp_path / 'res'} sweep=mixed data_root=PATH --rerun --no-resume"
            in out.stdout), out.stdout
    # the per-stem lines split by data too (never a median over two datasets)
    assert "conv (data 10 classes, 40 train / 10 val): " in out.stdout, out.stdout
    status = run_cli("grid", "status", str(tmp_path / "g.yaml"))
    assert warning in " ".join(status.stdout.split()), status.stdout
    report = json.loads(run_cli("grid", "status", str(tmp_path / "g.yaml"), "--json").stdout)
    assert sorted((d["data_classes"], d["train_images"], d["val_images"]) for d in report["data"]) == [
        (10, 40, 10), (10, 60, 10)]  # as numbers too, for scripts
    assert sorted(d["runs"] for d in report["data"]) == [2, 2] and sorted(report["data"][0]["run_ids"] +
                                                                           report["data"][1]["run_ids"]) == sorted(runs.run_id)
    assert len(report["stems"]) == 4
    # the count table too: per stem / optimizer / epochs / data
    assert sorted((c["stem"], c["data"], c["completed"]) for c in report["cells"]) == [
        (stem, f"10 classes, {n} train / 10 val", 1) for stem in ("conv", "patchify") for n in (40, 60)]
    assert "per stem / optimizer / epochs / data" in status.stdout, status.stdout
    assert analysis.strata(runs) == ["data"] and len(analysis.summary(runs)) == 4  # 2 stems x 2 data
    # the report and the dashboard's Overview say it too
    rep = run_cli("report", "mixed", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "r.html"))
    assert rep.returncode == 0, rep.stderr
    html = (tmp_path / "r.html").read_text()
    assert "Warning: some runs trained on different data: 10 classes, 40 train / 10 val" in html
    assert f"<li>10 classes, 40 train / 10 val: {', '.join(on_a)}</li>" in html
    # ... and on the terminal, with the runs and the command, not only in the file
    assert warning in rep.stderr and f"  10 classes, 40 train / 10 val: {', '.join(on_a)}" in rep.stderr, rep.stderr
    assert "sweep=mixed data_root=PATH --rerun --no-resume" in rep.stderr
    said = rep.stdout.strip().splitlines()  # a verdict line per data (never pooled), then the path
    assert said[-1].startswith("report: ") and sorted(line.split(":")[0] for line in said[:-1]) == [
        "data 10 classes, 40 train / 10 val", "data 10 classes, 60 train / 10 val"], rep.stdout
    from .test_dashboard import _app, _shown

    at = _app(tmp_path / "res")
    assert any("runs trained on different data: 10 classes, 40 train / 10 val" in _shown(w.value) for w in at.warning), \
        [w.value for w in at.warning]
    (data,) = [m for m in at.multiselect if m.label == "data"]  # a sidebar filter, as the other strata
    assert sorted(data.options) == ["10 classes, 40 train / 10 val", "10 classes, 60 train / 10 val"]


def test_a_failed_regnet_run_is_named_in_grid_run_and_grid_status(tmp_path):
    """A RegNet has no stem: the plan records its runs under "regnet" (``plan.stem_label``), and
    its failure line says so in both commands, with the error (never None or nan)."""
    nowhere = unreadable_cifar(tmp_path / "nowhere")  # passes the plan-time check, holds no batches
    spec_path = write_spec(tmp_path / "g.yaml", "rg", tmp_path / "res", space={"lr": [1e-3]},
                           base={"model": "regnety_tiny", "dataset": "cifar10", "epochs": 1, "steps_per_epoch": 1,
                                 "batch_size": 8, "data_root": str(nowhere)}, executor={"kind": "debug"})
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 1, out.stdout + out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("  failed ")]
    assert " (regnet): DataError: data_root: the cifar10 files under" in line, line
    status = run_cli("grid", "status", str(spec_path))
    assert any(x.startswith("failed ") and "(regnet): DataError" in x for x in status.stdout.splitlines()), status.stdout
    # the data mended, --retry failed (piped): the failed run is said as submitted again, and its new end
    shutil.rmtree(nowhere)
    _write_cifar(nowhere)
    again = run_cli("grid", "run", str(spec_path), "--retry", "failed")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 of 1 runs had ended before this start (1 failed: --retry failed submits it again)" in again.stderr
    assert re.search(r"run [0-9a-f]{12} \(regnet\): completed, top-1 error [0-9.]+ % \[1 of 1 ended\]", again.stderr), \
        again.stderr


def test_a_job_the_scheduler_forgot_before_it_started_ends_the_wait(tmp_path, monkeypatch):
    """A queued array task cancelled before it started: squeue no longer lists it and sacct never
    calls it done. After the grace for a just-submitted job the controller counts it as ended
    (lost, named) instead of waiting for ever; the other run completes."""
    from concurrent.futures import ThreadPoolExecutor

    from stability.grid import controller as ctl
    from stability.grid.backends import Submitted
    from stability.grid.controller import Controller, RunOptions
    from stability.grid.job import RunJob

    class Vanished:
        job_id = "forgotten"

        def done(self):
            return False  # as submitit says of a job sacct does not know

    class Forgetful:
        name = "forgetful"

        def __init__(self):
            self.pool, self.jobs, self.looks = ThreadPoolExecutor(1), {}, 0

        def start(self): ...
        def capacity(self): return None
        def parallelism(self): return 2
        def log_tail(self, job_id, lines=5): return ""
        def close(self): self.pool.shutdown()

        def wait(self, timeout):
            self.looks += 1  # bounded, so a controller that waits for ever fails the test instead
            assert self.looks < 3000, "the controller never stopped waiting for the forgotten job"
            time.sleep(0.05)

        def alive(self, job_ids):
            return {j: "RUNNING" for j in job_ids if j in self.jobs and not self.jobs[j].done()}

        def submit(self, items):
            (first, cfg), *rest = items
            fut = self.pool.submit(RunJob(), cfg)
            fut.job_id = "kept"
            self.jobs["kept"] = fut
            return [Submitted(first, fut)] + [Submitted(rid, Vanished()) for rid, _ in rest]

    monkeypatch.setattr(ctl, "UNSEEN_GRACE_S", 1.0)
    spec = load_spec(write_spec(tmp_path / "g.yaml", "fg", tmp_path / "res", base={"epochs": 1, "steps_per_epoch": 2},
                                space={"lr": [1e-3, 2e-3]}, sampler={"name": "random", "n": 1, "seed": 0}))
    backend = Forgetful()
    try:
        outcome = Controller(spec, RunOptions(show_progress=False, poll_s=0.05), backend=backend).run()
    finally:
        backend.close()
    assert sorted(outcome.state.status) == ["completed", "missing"]
    (lost,) = outcome.lost
    assert lost == outcome.state.run_id[outcome.state.status.eq("missing")].item()


def test_jobs_taken_before_a_refused_array_are_recorded(tmp_path):
    """sbatch takes the first array and refuses the second: the first array's jobs run, so they
    are in the ledger (the next grid run watches them instead of submitting them again)."""
    import pytest

    from stability.errors import ConfigError
    from stability.grid.backends import FinishedJob, SubmitRefused, Submitted
    from stability.grid.controller import Controller, RunOptions
    from stability.grid.ledger import read_ledger

    class HalfTaken:
        name = "half"

        def start(self): ...
        def capacity(self): return None
        def parallelism(self): return 2
        def log_tail(self, job_id, lines=5): return ""
        def close(self): ...
        def wait(self, timeout): ...
        def alive(self, job_ids): return dict.fromkeys(job_ids, "RUNNING")

        def submit(self, items):
            e = SubmitRefused("executor: sbatch refused the jobs: invalid partition", "g.yaml")
            e.submitted = [Submitted(items[0][0], FinishedJob("7_0"))]
            raise e

    spec = load_spec(write_spec(tmp_path / "g.yaml", "half", tmp_path / "res", space={"lr": [1e-3, 2e-3]},
                                sampler={"name": "random", "n": 1, "seed": 0}))
    with pytest.raises(ConfigError, match="sbatch refused"):
        Controller(spec, RunOptions(show_progress=False), backend=HalfTaken()).run()
    ledger = read_ledger(spec.sweep_dir)
    assert len(ledger) == 1 and [r["job_id"] for r in ledger.values()] == ["7_0"]
