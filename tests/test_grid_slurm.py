"""Integration tests against the real one-node Slurm cluster of slurm/local-cluster.sh."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from stability import store
from stability.grid.ledger import read_ledger
from stability.grid.spec import load_spec
from stability.trainer.checkpoint import checkpoint_path

from .conftest import ROOT, assert_same_rows, run_cli, write_spec
from .test_data import _write_cifar

pytestmark = pytest.mark.slurm

SLURM = {"kind": "slurm", "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 20}


@pytest.fixture(scope="session", autouse=True)
def cluster():
    if shutil.which("sbatch") is None:
        pytest.fail("no Slurm here: run `bash slurm/local-cluster.sh up` (CI does) or deselect -m 'not slurm'")
    up = subprocess.run(["bash", str(ROOT / "slurm/local-cluster.sh"), "up"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    return True


def _controller(spec_path, *extra):
    return subprocess.Popen([sys.executable, "-m", "stability", "grid", "run", str(spec_path), "--quiet", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(pred, timeout=180, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("local")
    spec = write_spec(d / "g.yaml", "pair", d / "res")
    out = run_cli("grid", "run", str(spec), "--quiet")
    assert out.returncode == 0, out.stderr
    return store.load(d / "res")


def test_slurm_array_lands_all_rows_and_matches_local(tmp_path, local_reference):
    spec_path = write_spec(tmp_path / "g.yaml", "pair", tmp_path / "res", executor=SLURM)
    out = run_cli("grid", "run", str(spec_path), "--quiet", "--array-size", "3")
    assert out.returncode == 0, out.stderr
    ledger = read_ledger(load_spec(spec_path).sweep_dir)
    arrays = {r["job_id"].split("_")[0] for r in ledger.values()}
    assert len(ledger) == 4 and len(arrays) == 2  # 4 runs in arrays of at most 3
    got = store.load(tmp_path / "res")
    assert (got.runs.status == "completed").all() and len(got.runs) == 4
    assert got.runs.slurm_job_id.str.fullmatch(r"\d+(_\d+)?").all()
    for table, keys in [("runs", ["run_id"]), ("epochs", ["run_id", "epoch"]),
                        ("steps", ["run_id", "step"]), ("grad_norms", ["run_id", "step", "depth"])]:
        assert_same_rows(getattr(got, table), getattr(local_reference, table), keys)


def test_killed_controller_and_cancelled_jobs_rerun_completes(tmp_path):
    spec_path = write_spec(tmp_path / "g.yaml", "kill", tmp_path / "res", executor=SLURM,
                           sampler={"name": "sobol", "n": 3, "seed": 0})
    spec = load_spec(spec_path)
    proc = _controller(spec_path)
    _wait(lambda: len(read_ledger(spec.sweep_dir)) == 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    ledger = read_ledger(spec.sweep_dir)
    pending = subprocess.run(["squeue", "-h", "-r", "-t", "PENDING", "-o", "%i"], capture_output=True,
                             text=True).stdout.split()
    cancelled = [rid for rid, rec in ledger.items() if rec["job_id"] in pending][:2]
    assert cancelled, "expected queued array tasks (2 CPUs, 6 one-CPU tasks)"
    subprocess.run(["scancel", *[ledger[r]["job_id"] for r in cancelled]], check=True)
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 0, out.stderr
    assert f"submitted {len(cancelled)}" in out.stdout
    runs = store.load(tmp_path / "res").runs
    assert len(runs) == 6 and runs.run_id.is_unique and (runs.status == "completed").all()
    resubmitted = {r for r, rec in read_ledger(spec.sweep_dir).items() if rec["job_id"] != ledger[r]["job_id"]}
    assert resubmitted == set(cancelled)


def test_scontrol_requeue_resumes_from_checkpoint(tmp_path):
    base = {"epochs": 3, "steps_per_epoch": 15, "batch_size": 48, "trace_every": 5}
    space = {"stem": ["conv"], "lr": [2e-3]}
    ref_spec = write_spec(tmp_path / "ref.yaml", "rq", tmp_path / "ref", base=base, space=space)
    assert run_cli("grid", "run", str(ref_spec), "--quiet").returncode == 0
    spec_path = write_spec(tmp_path / "g.yaml", "rq", tmp_path / "res", base=base, space=space, executor=SLURM)
    spec = load_spec(spec_path)
    proc = _controller(spec_path)
    _wait(lambda: len(read_ledger(spec.sweep_dir)) == 1)
    (rid, rec), = read_ledger(spec.sweep_dir).items()
    from stability.grid.plan import plan_from_frame
    from stability.grid.state import load_plan
    cfg = plan_from_frame(load_plan(spec.sweep_dir))[0].config
    _wait(lambda: checkpoint_path(cfg).exists(), timeout=240, every=0.05)
    subprocess.run(["scontrol", "requeue", rec["job_id"]], check=True)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    log = "".join(p.read_text() for p in (spec.sweep_dir / "logs").glob(f"{rec['job_id']}_*_log.err"))
    assert re.search(rf"run {rid} resumes from .* \(epoch [12], step \d+\)", log), log[-2000:]
    # the stopped attempt ends with one line, not submitit's traceback of a crash
    assert re.search(rf"stability: run {rid} preempted \(stopped at step \d+, by SIGTERM\): checkpoint saved", log), \
        log[-2000:]
    assert "Traceback" not in log and "triggered an exception" not in log, log[-3000:]
    got, ref = store.load(tmp_path / "res"), store.load(tmp_path / "ref")
    assert got.runs.status.tolist() == ["completed"]
    assert got.runs.top1_err.tolist() == ref.runs.top1_err.tolist()
    assert got.steps.sort_values("step").loss.tolist() == pytest.approx(
        ref.steps.sort_values("step").loss.tolist(), rel=1e-6)


def test_failed_job_is_reported_and_retry_reruns_only_it(tmp_path):
    data = tmp_path / "cifar"
    data.mkdir()
    spec_path = write_spec(tmp_path / "g.yaml", "fail", tmp_path / "res", executor=SLURM,
                           base={"batch_size": 8, "data_root": str(data)},
                           space={"stem": ["conv"], "dataset": ["digits", "cifar10"]})
    spec = load_spec(spec_path)
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 1  # a failed run
    status = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)
    assert status["counts"]["completed"] == 1 and status["counts"]["failed"] == 1
    (failure,) = status["failures"]
    assert "cifar10" in failure["error"] and "DataError" in failure["error"]
    text = run_cli("grid", "status", str(spec_path)).stdout
    assert "failed" in text and failure["run_id"] in text
    first = read_ledger(spec.sweep_dir)
    assert run_cli("grid", "run", str(spec_path), "--quiet").stdout.count("submitted 0") == 1  # no retry by default
    _write_cifar(data)
    out = run_cli("grid", "run", str(spec_path), "--quiet", "--retry", "failed")
    assert out.returncode == 0, out.stderr
    second = read_ledger(spec.sweep_dir)
    changed = {r for r in second if second[r]["job_id"] != first[r]["job_id"]}
    assert changed == {failure["run_id"]}
    runs = store.load(tmp_path / "res").runs
    assert sorted(runs.status) == ["completed", "completed"] and runs.run_id.is_unique


def test_two_task_slurm_run_lands_one_set_of_rows(tmp_path):
    spec_path = write_spec(tmp_path / "g.yaml", "ddp", tmp_path / "res",
                           executor={**SLURM, "tasks_per_node": 2},
                           base={"model": "vit_p_tiny", "batch_size": 32},
                           space={"lr": [2e-3]})
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 0, out.stderr
    res = store.load(tmp_path / "res")
    assert len(res.runs) == 1 and res.runs.world_size.tolist() == [2]
    assert res.runs.status.tolist() == ["completed"]
    assert res.steps.step.is_unique and len(res.steps) == 6
    assert not res.grad_norms.duplicated(["step", "layer"]).any()


def test_a_duplicate_slurm_job_of_a_running_run_writes_nothing(tmp_path):
    """A second Slurm job given a live run (a lost ledger, a requeue racing its old self) ends at
    once naming the owner; the status of a run whose ledger line is gone comes from its owner."""
    import submitit

    from stability.grid.job import RunJob
    from stability.grid.state import load_plan

    spec_path = write_spec(tmp_path / "g.yaml", "dupe", tmp_path / "res", executor=SLURM,
                           base={"model": "vit_p_tiny", "epochs": 50, "steps_per_epoch": 10, "batch_size": 16},
                           space={"lr": [1e-3]}, sampler={"name": "random", "n": 1, "seed": 0})
    out = run_cli("grid", "run", str(spec_path), "--quiet", "--no-wait")
    assert out.returncode == 0, out.stderr
    spec = load_spec(spec_path)
    (job,) = [rec["job_id"] for rec in read_ledger(spec.sweep_dir).values()]
    _wait(lambda: store.read_table(spec.results, "runs").status.tolist() == ["running"], timeout=240)  # load() refuses an empty root
    try:
        (spec.sweep_dir / "jobs.jsonl").write_text("")
        status = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)
        assert status["counts"]["running"] == 1, status["counts"]
        ex = submitit.AutoExecutor(folder=tmp_path / "dup", cluster="slurm")
        ex.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=2)
        config = json.loads(load_plan(spec.sweep_dir).config_json.iloc[0])
        dup = ex.submit(RunJob(1), config)
        with pytest.raises(Exception, match=f"is being trained by job {job}"):
            dup.result()
        assert store.load(spec.results).runs.job_id.tolist() == [job]
    finally:
        subprocess.run(["scancel", job], check=True)  # SIGTERM: the run checkpoints, preempted
    _wait(lambda: job not in subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True,
                                            text=True).stdout.split(), timeout=120)
    runs = store.load(spec.results).runs
    assert runs.job_id.tolist() == [job] and runs.status.tolist() == ["preempted"], runs[["status", "job_id"]]


def test_slurm_grid_prunes_the_doomed_lr(tmp_path):
    """The pruner under real sbatch: the doomed lr's job ends with its run recorded ``pruned``
    (checkpoint kept), the other completes, and a second ``grid run`` submits nothing."""
    from stability.config import config_from_json

    from .test_pruner import GRID_BASE

    spec_path = write_spec(tmp_path / "g.yaml", "prune", tmp_path / "res", executor=SLURM, base=GRID_BASE,
                           space={"lr": [1e-3, 0.3]}, sampler={"name": "grid", "n": 1, "seed": 0})
    out = run_cli("grid", "run", str(spec_path), "--quiet")
    assert out.returncode == 0, out.stderr
    runs = store.load(tmp_path / "res").runs.set_index("lr")
    assert runs.status.to_dict() == {1e-3: "completed", 0.3: "pruned"}, runs.status
    assert (runs.pruned_at_step[0.3], runs.prune_rule[0.3]) == (1, "above")
    assert json.loads(runs.prune_signals[0.3])["loss_window"] >= 1.5 * json.loads(runs.prune_signals[0.3])["ln_c"]
    assert runs.slurm_job_id.str.fullmatch(r"\d+(_\d+)?").all()
    assert checkpoint_path(config_from_json(runs.config_json[0.3])).exists()
    spec = load_spec(spec_path)
    ledger = read_ledger(spec.sweep_dir)
    assert len(ledger) == 2
    again = run_cli("grid", "run", str(spec_path), "--quiet")
    assert again.returncode == 0 and "submitted 0" in again.stdout, again.stdout + again.stderr
    assert read_ledger(spec.sweep_dir) == ledger
    status = json.loads(run_cli("grid", "status", str(spec_path), "--json").stdout)
    assert (status["counts"]["pruned"], status["counts"]["completed"]) == (1, 1), status["counts"]


def test_an_sbatch_that_refuses_is_one_line_and_leaves_no_files(tmp_path):
    """A partition the cluster does not have: sbatch's own words in one line (exit 2), no
    traceback, none of submitit's files left behind; the plan stays, a mended spec runs."""
    bad = write_spec(tmp_path / "g.yaml", "refused", tmp_path / "res", executor={**SLURM, "partition": "gpuz"},
                     base={"epochs": 1, "steps_per_epoch": 1}, space={"lr": [1e-3]},
                     sampler={"name": "random", "n": 1, "seed": 0})
    out = run_cli("grid", "run", str(bad), "--quiet")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "sbatch refused the jobs" in line and "partition" in line, line
    logs = store.logs_dir(tmp_path / "res", "refused")
    assert not [p.name for p in logs.iterdir() if p.suffix in (".pkl", ".sh")], list(logs.iterdir())
    assert (store.sweep_dir(tmp_path / "res", "refused") / "plan.parquet").exists()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_stopped_slurm_job_ends_with_one_line_its_result_file_and_128_plus_the_signal(rank, tmp_path, monkeypatch,
                                                                                         capsys):
    """``SlurmRunJob`` in the environment submitit gives a Slurm task, its run stopped by SIGTERM
    after the checkpoint: exit 143, the one preempted line on rank 0 only, and the task's result
    file written (the controller reads the job as ended from it), with no traceback."""
    from stability.config import run_config
    from stability.grid.job import RunJob, SlurmRunJob
    from stability.trainer.stopping import Preempted

    env = {"_TEST_CLUSTER_": "slurm", "SUBMITIT_FOLDER": str(tmp_path), "SLURM_JOB_ID": "42", "SLURM_PROCID": rank,
           "SLURM_NTASKS": "2", "SLURM_LOCALID": rank, "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "RANK": rank,
           "WORLD_SIZE": "2"}  # as TorchDistributedEnvironment exports them for a two-task job
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def stopped(self, config):
        raise Preempted("stopped at step 3", signal.SIGTERM)

    monkeypatch.setattr(RunJob, "__call__", stopped)
    config = {"results": str(tmp_path / "res"), "sweep": "s", "stem": "conv"}
    with pytest.raises(SystemExit) as ended:
        SlurmRunJob()(config)
    assert ended.value.code == 128 + signal.SIGTERM
    line = (f"stability: run {run_config(config).run_id} preempted (stopped at step 3, by SIGTERM): "
            "checkpoint saved at ")
    err = capsys.readouterr().err
    assert (line in err) == (rank == "0") and "Traceback" not in err, err
    result = tmp_path / f"42_{rank}_result.pkl"  # submitit's name for the task's result file
    assert line.encode() in result.read_bytes()  # read as bytes: a results root's pickles are never loaded
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".save_tmp" in p.name]
