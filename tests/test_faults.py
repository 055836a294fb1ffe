"""Faults an operator or an attacker causes, done for real: bombs and duplicates in YAML, torn
ledgers, two controllers on one sweep, results roots the OS refuses, killed writers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stability.grid.ledger import read_ledger, record_jobs
from stability.grid.lock import SweepLock

from .conftest import ROOT, run_cli, write_spec


def _one_line_exit_2(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    for n in needles:
        assert n in line, (n, line)
    return line


def test_yaml_alias_bomb_duplicate_keys_and_size_are_refused_fast(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", "y", tmp_path / "res")
    text = spec.read_text()
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + text)
    assert bomb.stat().st_size < 1000
    line = _one_line_exit_2(run_cli("grid", "run", str(bomb), "--dry-run"), str(bomb), "aliases", "line 2")
    assert len(line) < 300
    dup = tmp_path / "dup.yaml"
    dup.write_text(text.replace("base:\n", "base:\n  epochs: 1\n  epochs: 5\n", 1))
    _one_line_exit_2(run_cli("grid", "run", str(dup), "--dry-run"), "'epochs' given twice", "first at line")
    big = tmp_path / "big.yaml"
    big.write_text(text + "#" + "x" * (1 << 20) + "\n")
    _one_line_exit_2(run_cli("grid", "run", str(big), "--dry-run"), str(big), "byte limit")
    huge = tmp_path / "huge.yaml"
    huge.write_text(text.replace("seeds:\n- 0\n", "seeds: [" + ", ".join(["0"] * 20000) + "]\n"))
    _one_line_exit_2(run_cli("grid", "run", str(huge), "--dry-run"), "seeds")
    assert len(run_cli("grid", "run", str(huge), "--dry-run").stderr) < 400  # the value is cut short
    assert not (tmp_path / "res").exists()


def test_train_sweep_name_is_checked_like_the_grid(tmp_path):
    for bad in ("..", "a/b", "=y", "-x"):
        _one_line_exit_2(run_cli("train", "model=vit_tiny", "epochs=1", f"sweep={bad}", f"results={tmp_path}"),
                         "sweep")
    assert not any(tmp_path.iterdir())


def test_a_torn_ledger_line_is_ended_and_reported_never_merged(tmp_path):
    record_jobs(tmp_path, "local", [("r1", "11"), ("r2", "12")])
    with open(tmp_path / "jobs.jsonl", "a") as f:  # a controller killed mid-append
        f.write('{"run_id": "r3", "job_id": "1')
    record_jobs(tmp_path, "local", [("r3", "13")])
    with open(tmp_path / "jobs.jsonl", "a") as f:  # valid JSON, not records
        f.write('{"job_id": "1"}\n[1, 2]\n')
    problems: list[str] = []
    ledger = read_ledger(tmp_path, problems)
    assert {r: rec["job_id"] for r, rec in ledger.items()} == {"r1": "11", "r2": "12", "r3": "13"}
    assert [p.split(" line ")[1].split(":")[0] for p in problems] == ["3", "5", "6"]
    assert all("jobs.jsonl" in p for p in problems)


def test_second_controller_on_a_sweep_exits_2_naming_the_first(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", "lk", tmp_path / "res", base={"epochs": 2, "steps_per_epoch": 15},
                      sampler={"name": "random", "n": 1, "seed": 0})
    first = subprocess.Popen([sys.executable, "-m", "stability", "grid", "run", str(spec), "--quiet"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lease = tmp_path / "res/_sweeps/lk/lease.json"
        deadline = time.monotonic() + 120
        while not lease.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert lease.exists() and first.poll() is None, "the first controller should hold the lock"
        second = run_cli("grid", "run", str(spec), "--quiet")
        line = _one_line_exit_2(second, "'lk' is being run by pid", str(first.pid))
        assert "heartbeat" in line
        assert run_cli("grid", "status", str(spec)).returncode == 0  # status works while locked
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(lease.read_text())["released"] > 0
    again = run_cli("grid", "run", str(spec), "--quiet")  # released: the next controller gets it
    assert again.returncode == 0 and "submitted 0" in again.stdout


def test_a_lease_from_another_live_host_refuses_a_dead_one_is_taken_over(tmp_path):
    sweep = tmp_path / "_sweeps/s"
    sweep.mkdir(parents=True)
    lease = sweep / "lease.json"
    lease.write_text(json.dumps({"host": "node-7", "pid": 4242, "since": "2026-01-01T00:00:00+00:00",
                                 "heartbeat": time.time() - 5}))
    with pytest.raises(Exception, match="pid 4242 on node-7"):
        SweepLock(sweep, "s").acquire()
    lease.write_text(json.dumps({"host": "node-7", "pid": 4242, "since": "x", "heartbeat": time.time() - 3600}))
    with SweepLock(sweep, "s"):
        rec = json.loads(lease.read_text())
        assert rec["pid"] == os.getpid() and rec["took_over"]["host"] == "node-7"


def test_os_failures_are_one_line_errors_naming_the_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    spec = write_spec(tmp_path / "g.yaml", "os", afile, sampler={"name": "random", "n": 1, "seed": 0})
    _one_line_exit_2(run_cli("grid", "run", str(spec), "--quiet"), str(afile))
    assert afile.read_text() == "not a folder"


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    from stability import store

    target = tmp_path / "x.json"
    stale = tmp_path / ".x.json.deadbeef.tmp"
    fresh = tmp_path / ".x.json.cafef00d.tmp"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    old = time.time() - 2 * store.STALE_TMP_S
    os.utime(stale, (old, old))
    store.write_text_atomic(target, "{}")
    assert target.read_text() == "{}" and not stale.exists() and fresh.exists()  # a live writer's is kept


def test_collect_with_a_corrupt_file_exits_2_and_compacts_nothing(tmp_path):
    from stability import store

    spec = write_spec(tmp_path / "g.yaml", "cc", tmp_path / "res")
    store.write_run(tmp_path / "res", "cc", "good", {"runs": [{"run_id": "good", "status": "completed"}],
                                                     "steps": [{"run_id": "good", "step": 0, "loss": 1.0}]})
    bad = tmp_path / "res/steps/sweep=cc/bad.parquet"
    bad.write_bytes(b"garbage")
    before = sorted(p.name for p in (tmp_path / "res").rglob("*.parquet"))
    _one_line_exit_2(run_cli("grid", "collect", str(spec)), "nothing compacted", str(bad))
    assert sorted(p.name for p in (tmp_path / "res").rglob("*.parquet")) == before


def test_corrupt_results_are_named_then_quarantined_and_their_runs_rerun(tmp_path):
    from stability import store

    spec = write_spec(tmp_path / "g.yaml", "cr", tmp_path / "res", base={"epochs": 1, "steps_per_epoch": 2},
                      sampler={"name": "random", "n": 1, "seed": 0}, executor={"kind": "debug"})
    assert run_cli("grid", "run", str(spec), "--quiet").returncode == 0
    res = tmp_path / "res"
    first, second = sorted(store.load(res).runs.run_id)
    runs_file = res / f"runs/sweep=cr/{first}.parquet"
    runs_file.write_bytes(runs_file.read_bytes()[:40])  # truncated
    epochs_file = res / f"epochs/sweep=cr/{second}.parquet"
    epochs_file.write_bytes(b"garbage")  # a completed run's curves
    status = run_cli("grid", "status", str(spec))
    shown = " ".join(status.stdout.split())
    assert status.returncode == 0 and f"unreadable: {runs_file}" in shown and str(epochs_file) in shown, shown
    report = run_cli("report", "cr", "--results", str(res), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0 and str(epochs_file) in report.stderr and str(runs_file) in report.stderr
    again = run_cli("grid", "run", str(spec), "--quiet")
    assert again.returncode == 0 and "submitted 2" in again.stdout, again.stdout + again.stderr
    assert f"quarantined {runs_file}" in again.stderr and f"quarantined {epochs_file}" in again.stderr
    after = store.load(res)
    assert not after.errors and sorted(after.runs.run_id) == [first, second]
    assert set(after.runs.status) == {"completed"} and set(after.epochs.run_id) == {first, second}
    assert len(list((res / "_sweeps/cr/quarantine").rglob("*.parquet.*"))) >= 2
    assert "unreadable" not in run_cli("grid", "status", str(spec)).stdout


def test_a_corrupt_compacted_curve_file_is_named_and_its_runs_rerun_not_lost(tmp_path):
    from stability import store

    spec = write_spec(tmp_path / "g.yaml", "cc", tmp_path / "res", base={"epochs": 1, "steps_per_epoch": 2},
                      sampler={"name": "random", "n": 1, "seed": 0}, executor={"kind": "debug"})
    assert run_cli("grid", "run", str(spec), "--quiet").returncode == 0
    assert run_cli("grid", "collect", str(spec)).returncode == 0
    res = tmp_path / "res"
    (part,) = (res / "steps/sweep=cc").glob("part-*.parquet")
    part.write_bytes(b"junk")
    status = json.loads(run_cli("grid", "status", str(spec), "--json").stdout)
    assert any(str(part) in u and "reruns those runs" in u for u in status["unreadable"]), status["unreadable"]
    again = run_cli("grid", "run", str(spec), "--quiet")
    assert again.returncode == 0 and "submitted 2" in again.stdout, again.stdout + again.stderr
    assert f"quarantined {part}" in again.stderr and "lost its steps rows" in again.stderr
    after = store.load(res)
    assert not after.errors and set(after.runs.status) == {"completed"} and after.steps.run_id.nunique() == 2


def test_a_corrupt_plan_is_replanned_or_named(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", "cp", tmp_path / "res")
    plan = tmp_path / "res/_sweeps/cp/plan.parquet"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"PAR1 garbage")
    status = run_cli("grid", "status", str(spec))
    assert status.returncode == 0 and "planned from the spec" in status.stdout and "4 planned" in status.stdout
    tpe = write_spec(tmp_path / "t.yaml", "cp", tmp_path / "res", sampler={"name": "tpe", "n": 4, "wave": 2, "seed": 0})
    for cmd in ("status", "run"):
        _one_line_exit_2(run_cli("grid", cmd, str(tpe), "--quiet" if cmd == "run" else "--json"),
                         str(plan), "unreadable")
    assert plan.read_bytes() == b"PAR1 garbage"  # named, never overwritten


def test_a_garbage_checkpoint_is_quarantined_and_the_run_starts_afresh(tmp_path):
    from stability.config import run_config
    from stability.trainer.checkpoint import checkpoint_path

    args = ["model=vit_p_tiny", "dataset=digits", "epochs=1", "steps_per_epoch=2", "batch_size=16",
            f"results={tmp_path}", "sweep=gc"]
    ckpt = checkpoint_path(run_config(dict(a.split("=", 1) for a in args) | {"epochs": 1, "steps_per_epoch": 2,
                                                                              "batch_size": 16}))
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x80\x04garbage")
    strict = run_cli("train", *args, "bad_checkpoint=fail")  # the option: fail naming it, leave it be
    _one_line_exit_2(strict, str(ckpt), "bad_checkpoint=fail")
    assert ckpt.read_bytes() == b"\x80\x04garbage"
    first = run_cli("train", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"checkpoint {ckpt} is unreadable" in " ".join(first.stderr.split()) and not ckpt.exists()
    assert run_cli("train", *args).returncode == 0  # an ordinary rerun: nothing left to trip on
    moved = list((tmp_path / "_sweeps/gc/quarantine").rglob("*.pt.*"))
    assert len(moved) == 1 and moved[0].read_bytes() == b"\x80\x04garbage"


def test_a_huge_plan_is_refused_by_counting_before_anything_is_built(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", "big", tmp_path / "res", sampler={"name": "random", "n": 10_000_000, "seed": 0})
    _one_line_exit_2(run_cli("grid", "run", str(spec), "--dry-run"), "20000000 runs", "cap of 100000",
                     "set max_runs: 20000000")
    ok = write_spec(tmp_path / "ok.yaml", "big", tmp_path / "res", sampler={"name": "grid", "n": 3, "seed": 0})
    ok.write_text(ok.read_text() + "max_runs: 6\n")
    assert run_cli("grid", "run", str(ok), "--dry-run").returncode == 0  # 3 points x 2 stems: under its own cap
    assert not (tmp_path / "res").exists()


def test_eta_divides_by_the_runs_running_now_not_the_array_limit():
    import pandas as pd

    from stability.grid.state import eta_seconds

    state = pd.DataFrame({"status": ["completed"] * 4 + ["running"] * 2 + ["pending"] * 4,
                          "wall_time_s": [10.0] * 4 + [None] * 6,
                          "job_state": [None] * 4 + ["RUNNING"] * 2 + ["PENDING"] * 4})
    assert eta_seconds(state, parallel=64) == 6 * 10.0 / 2
    queued = state.assign(status=["completed"] * 4 + ["pending"] * 6, job_state=[None] * 4 + ["PENDING"] * 6)
    assert eta_seconds(queued, parallel=3) == 6 * 10.0 / 3
    assert eta_seconds(state.assign(job_state=None), parallel=3) is None  # nothing alive: no ETA


def test_an_unwritable_results_root_fails_train_at_once(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_exit_2(run_cli("train", "model=vit_tiny", "epochs=1", f"results={afile / 'r'}"), str(afile))
    if os.geteuid() != 0:  # root writes anywhere; the read-only case needs another user
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        _one_line_exit_2(run_cli("train", "model=vit_tiny", "epochs=1", f"results={ro}"), str(ro))


def _when_torch_loads(p: subprocess.Popen) -> None:
    """Wait until the process maps libtorch: it is inside ``stability train``, importing torch."""
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        try:
            if "libtorch" in open(f"/proc/{p.pid}/maps").read():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"stability train never loaded torch (exit {p.poll()})")


@pytest.mark.parametrize("after", [0.0, 1.0])
def test_ctrl_c_during_set_up_stops_the_first_step_never_lost(tmp_path, after):
    """Ctrl-C while torch imports (and the data and model are set up): a KeyboardInterrupt there
    was dropped by importlib (the run trained to the end, exit 0) or turned into a RuntimeError
    traceback; now the run stops at its first step with a checkpoint, exit 130, no traceback."""
    from stability import store

    args = ["train", "model=vit_p_tiny", "dataset=digits", "epochs=2", "steps_per_epoch=20", "batch_size=16",
            f"results={tmp_path}", "sweep=su"]
    p = subprocess.Popen([sys.executable, "-m", "stability", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _when_torch_loads(p)
    time.sleep(after)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "stopping at the run's first step" in err and "preempted (stopped by SIGINT)" in err, err[-3000:]
    runs = store.load(tmp_path).runs
    assert runs.status.tolist() == ["preempted"]
    assert store.read_table(tmp_path, "steps").step.max() < 5  # stopped at once, not trained on


def test_second_ctrl_c_during_set_up_stops_at_once_with_nothing_recorded(tmp_path):
    args = ["train", "model=vit_p_tiny", "dataset=digits", "epochs=2", "steps_per_epoch=20", "batch_size=16",
            f"results={tmp_path}", "sweep=su"]
    p = subprocess.Popen([sys.executable, "-m", "stability", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _when_torch_loads(p)
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "stopping at the run's first step" in err and "preempted" not in err, err[-3000:]
    assert "stopped during the set-up: nothing recorded" in err, err[-3000:]
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_checkpoints_a_run_as_preempted_and_the_same_command_resumes_it(tmp_path):
    from stability import store

    args = ["train", "model=vit_p_tiny", "dataset=digits", "epochs=3", "steps_per_epoch=20", "batch_size=16",
            f"results={tmp_path}", "sweep=cc"]
    p = subprocess.Popen([sys.executable, "-m", "stability", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "_sweeps/cc/progress"
    deadline = time.monotonic() + 300
    while not any(progress.glob("*.json")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "rerun the same command to resume" in err, err[-2000:]  # 128 + SIGINT, as a shell
    assert "preempted (stopped by SIGINT)" in err and "Traceback" not in err, err[-2000:]
    assert store.load(tmp_path).runs.status.tolist() == ["preempted"]
    again = run_cli(*args)
    assert again.returncode == 0 and "resumes from" in again.stderr, again.stderr[-2000:]
    runs = store.load(tmp_path).runs
    assert runs.status.tolist() == ["completed"] and runs.wall_time_s.iloc[0] > 0
    (row,) = (tmp_path / "runs/sweep=cc").glob("*.parquet")
    stamp = row.stat().st_mtime_ns
    third = run_cli(*args)  # the same command once more: the result is the record, nothing retrained
    assert third.returncode == 0 and "already completed" in third.stdout and row.stat().st_mtime_ns == stamp


def test_a_spec_edited_under_the_same_name_is_refused_not_mixed(tmp_path):
    from stability.grid.plan import plan_frame
    from stability.grid.samplers import make_plan
    from stability.grid.spec import load_spec
    from stability.grid.state import save_plan

    path = write_spec(tmp_path / "g.yaml", "ed", tmp_path / "res", executor={"kind": "debug"})
    spec = load_spec(path)
    save_plan(spec.sweep_dir, plan_frame(make_plan(spec)))  # as a first grid run leaves it
    path.write_text(path.read_text().replace("0.0001", "1.0e-05"))
    _one_line_exit_2(run_cli("grid", "run", str(path), "--quiet"), "planned from a different spec",
                     "4 of its 4 planned runs", "new name")
    more = write_spec(tmp_path / "m.yaml", "ed", tmp_path / "res", executor={"kind": "debug"},
                      seeds=[0, 1], base={"epochs": 1, "steps_per_epoch": 1})
    assert "planned from a different spec" in run_cli("grid", "run", str(more), "--quiet").stderr  # base changed
    assert not list((tmp_path / "res").glob("runs/*/*.parquet"))  # nothing trained


def test_more_gpus_per_run_than_the_machine_has_is_an_error_not_a_hang(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", "gp", tmp_path / "res",
                      executor={"kind": "local", "max_parallel": 2, "gpus_per_node": 1})
    _one_line_exit_2(run_cli("grid", "run", str(spec), "--quiet", env={"CUDA_VISIBLE_DEVICES": ""}),
                     "executor.gpus_per_node", "needs 1 GPU(s), this machine has 0")


def test_out_of_range_numbers_and_an_oversized_batch_are_one_line_errors(tmp_path):
    _one_line_exit_2(run_cli("train", "model=vit_tiny", "epochs=100000000000000000000000", f"results={tmp_path}"),
                     "epochs", "out of range")
    _one_line_exit_2(run_cli("train", "model=vit_tiny", "seed=1e23", f"results={tmp_path}"), "seed", "out of range")
    _one_line_exit_2(run_cli("train", "model=vit_tiny", "dataset=digits", "batch_size=100000", "epochs=1",
                             f"results={tmp_path}"), "larger than the training set")


def test_a_takeover_stays_recorded_in_the_lease_through_heartbeats(tmp_path, monkeypatch):
    import stability.grid.lock as lock

    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "lease.json").write_text(json.dumps({"host": "node-9", "pid": 1, "since": "x", "heartbeat": "garbage"}))
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.0)
    with SweepLock(sweep, "s") as held:
        held.beat()
        assert json.loads((sweep / "lease.json").read_text())["took_over"]["host"] == "node-9"
    assert json.loads((sweep / "lease.json").read_text())["took_over"]["host"] == "node-9"


def _wait_for(pred, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _start_one_long_run(tmp_path, name, results, steps_per_epoch):
    """A one-run local grid (50 epochs: it runs until the test stops it) started with --no-wait;
    returns the spec's path, the spec and the run's job id from the ledger."""
    from stability.grid.spec import load_spec

    path = write_spec(tmp_path / "g.yaml", name, results,
                      base={"model": "vit_p_tiny", "epochs": 50, "steps_per_epoch": steps_per_epoch, "batch_size": 16},
                      space={"lr": [1e-3]}, sampler={"name": "random", "n": 1, "seed": 0})
    out = run_cli("grid", "run", str(path), "--quiet", "--no-wait")
    assert out.returncode == 0, out.stderr[-2000:]
    spec = load_spec(path)
    (job,) = [rec["job_id"] for rec in read_ledger(spec.sweep_dir).values()]
    return path, spec, job


def test_a_live_run_is_never_trained_twice_even_when_the_ledger_loses_it(tmp_path):
    """The torn-ledger case end to end: the ledger forgets a live job; status still says running,
    a rerun submits nothing, and a duplicate job of the run ends before writing anything."""
    from stability import store
    from stability.grid.local import pid_alive
    from stability.grid.state import load_plan

    path, spec, job = _start_one_long_run(tmp_path, "dup", tmp_path / "res", steps_per_epoch=20)
    _wait_for(lambda: store.read_table(spec.results, "runs").status.tolist() == ["running"])  # load() refuses an empty root
    try:
        (spec.sweep_dir / "jobs.jsonl").write_text("")  # the ledger lost it
        status = json.loads(run_cli("grid", "status", str(path), "--json").stdout)
        assert status["counts"]["running"] == 1 and status["counts"]["missing"] == 0, status["counts"]
        again = run_cli("grid", "run", str(path), "--quiet", "--no-wait")
        assert again.returncode == 0 and "submitted 0" in again.stdout, (again.stdout, again.stderr[-2000:])
        config = json.loads(load_plan(spec.sweep_dir).config_json.iloc[0])
        dup = subprocess.run([sys.executable, "-c", "import json, sys; from stability.grid.job import RunJob; "
                              "RunJob(1)(json.loads(sys.argv[1]))", json.dumps(config)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "STABILITY_JOB_ID": "intruder"})
        assert dup.returncode != 0 and f"is being trained by job {job}" in dup.stderr, dup.stderr[-2000:]
    finally:
        os.kill(int(job.split(".")[0]), signal.SIGTERM)  # checkpoints, records preempted
        _wait_for(lambda: not pid_alive(job))
    runs = store.load(spec.results).runs
    assert runs.status.tolist() == ["preempted"] and runs.job_id.tolist() == [job]


def test_a_reused_pid_is_not_taken_for_a_live_local_job():
    from stability.grid.local import job_token, pid_alive

    me = job_token(os.getpid())
    pid, started = me.split(".")
    assert pid_alive(me) and pid_alive(pid)  # a bare pid (older ledgers) is judged by the pid only
    assert not pid_alive(f"{pid}.{int(started) + 1}")  # same pid, another process


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_run_on_a_full_disk_ends_failed_in_the_ledger_not_running(tmp_path, tiny_disk):
    from stability.grid.local import pid_alive

    path, spec, job = _start_one_long_run(tmp_path, "full", tiny_disk / "res", steps_per_epoch=10)
    _wait_for(lambda: any((spec.sweep_dir / "checkpoints").glob("*.pt")))
    with open(tiny_disk / "filler", "wb") as f:  # fill the disk while the run trains
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    _wait_for(lambda: not pid_alive(job))
    status = json.loads(run_cli("grid", "status", str(path), "--json").stdout)
    assert status["counts"]["failed"] == 1 and status["counts"]["running"] == 0, status["counts"]
    (failure,) = status["failures"]
    assert "No space left on device" in failure["error"] and "could not be written" in failure["error"], failure
    assert not list(tiny_disk.rglob("*.tmp")), list(tiny_disk.rglob("*.tmp"))  # nothing left to fill the disk
    (tiny_disk / "filler").unlink()
    retry = run_cli("grid", "run", str(path), "--quiet", "--no-wait", "--retry", "failed")
    assert retry.returncode == 0 and "submitted 1" in retry.stdout, (retry.stdout, retry.stderr[-2000:])
    (job2,) = [rec["job_id"] for rec in read_ledger(spec.sweep_dir).values()]
    os.kill(int(job2.split(".")[0]), signal.SIGTERM)
    _wait_for(lambda: not pid_alive(job2))


def test_an_execution_field_as_an_axis_and_cuda_without_a_gpu_are_one_line_errors(tmp_path):
    import torch

    spec = write_spec(tmp_path / "g.yaml", "ax", tmp_path / "res", space={"num_workers": [0, 1]},
                      sampler={"name": "grid", "n": 1, "seed": 0})
    _one_line_exit_2(run_cli("grid", "run", str(spec), "--dry-run"), "space.num_workers", "execution field")
    if not torch.cuda.is_available():
        _one_line_exit_2(run_cli("train", "model=vit_tiny", "epochs=1", "device=cuda", f"results={tmp_path / 'r'}"),
                         "device", "no")


# Ctrl-C on a local grid run (message, grid status, resume, logs, clean): tests/test_interrupt_local.py
