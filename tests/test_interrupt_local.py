"""Ctrl-C on a local ``grid run``, done for real: SIGINT to the controller's whole process group
(what a terminal sends), then what the user reads: the final table, the message, ``grid
status``, the runs' logs, the same command resuming them, and what ``grid clean`` leaves after."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stability import store
from stability.grid.ledger import read_ledger
from stability.grid.local import pid_alive
from stability.grid.spec import load_spec

from .conftest import ROOT, run_cli, write_spec


def _wait_for(cond, limit_s: float = 240) -> bool:
    deadline = time.monotonic() + limit_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.2)
    return cond()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Two local runs interrupted by a Ctrl-C once each has finished an epoch (its checkpoint
    handler is in place then); everything the tests read, taken once every job has ended."""
    d = tmp_path_factory.mktemp("interrupt")
    path = write_spec(d / "g.yaml", "ci", d / "res", space={"stem": ["patchify", "conv"], "lr": [1e-3]},
                      base={"epochs": 4, "steps_per_epoch": 20, "batch_size": 16},
                      sampler={"name": "random", "n": 1, "seed": 0})
    spec = load_spec(path)
    # no --quiet: the live table is what is checked; piped, rich prints its last frame once, on stop.
    # SIGINT restored: a process started in the background (as CI may run tests) inherits it ignored
    p = subprocess.Popen([sys.executable, "-m", "stability", "grid", "run", str(path)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = spec.sweep_dir / "progress"
    try:
        assert _wait_for(lambda: len(list(progress.glob("*.json"))) == 2 or p.poll() is not None), "no run started"
        assert p.poll() is None, p.communicate()[1][-2000:]
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: to the whole foreground group
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        jobs = [rec["job_id"] for rec in read_ledger(spec.sweep_dir).values()]
        # the runs may outlive a controller that does not wait for them: read them once they ended
        _wait_for(lambda: not any(pid_alive(j) for j in jobs))
    left = [j for j in jobs if pid_alive(j)]
    for j in left:  # only this test's runs, by pid
        os.kill(int(j.split(".")[0]), signal.SIGKILL)
    assert not left, f"runs still alive long after the Ctrl-C: {left}"
    logs = {j: (store.logs_dir(spec.results, spec.name) / f"{j}_0_log.err").read_text() for j in jobs}
    status = json.loads(run_cli("grid", "status", str(path), "--json").stdout)
    return {"path": path, "spec": spec, "code": p.returncode, "err": err, "logs": logs, "status": status,
            "statuses": sorted(store.load(spec.results).runs.status)}


def _table_row(text: str, stem: str) -> dict[str, int]:
    """A row of the last table ``grid run`` drew (rich's box characters), by column name."""
    lines = [line for line in text.splitlines() if "│" in line or "┃" in line]
    header = [c.strip() for c in next(line for line in lines if "preempted" in line).strip("┃ ").split("┃")]
    row = [c.strip() for c in [line for line in lines if line.strip("│ ").startswith(stem + " ")][-1]
           .strip("│ ").split("│")]
    return {h: int(v) for h, v in zip(header[1:], row[1:], strict=True)}


def test_the_final_table_after_a_ctrl_c_shows_the_runs_preempted(interrupted):
    """The last table is drawn after the runs got the same Ctrl-C, saved their checkpoints and
    recorded ``preempted``: not the look before the signal (``running``), which contradicted the
    line under it."""
    err = interrupted["err"]
    assert interrupted["code"] == 130, err[-2000:]
    assert "interrupted: the runs in progress stop after saving a checkpoint" in err
    assert f"stability grid run {interrupted['path']}" in err  # what to type to resume
    assert interrupted["statuses"] == ["preempted", "preempted"]
    counts = interrupted["status"]["counts"]  # grid status counts them so, none missing
    assert counts["preempted"] == 2 and counts["missing"] == 0, counts
    for stem in ("patchify", "conv"):
        row = _table_row(err, stem)
        assert (row["preempted"], row["running"], row["total"]) == (1, 0, 1), (stem, err[-3000:])
    assert _table_row(err, "all")["preempted"] == 2


def test_a_preempted_runs_log_ends_in_one_line_saying_so_not_a_traceback(interrupted):
    """A stop is not a crash: the log ends in one line with the step, the signal, the checkpoint
    and what resumes it; the record a rerun resumes from is the same (a preempted row, the file)."""
    assert interrupted["statuses"] == ["preempted", "preempted"]
    for job, text in interrupted["logs"].items():
        assert "Traceback" not in text, (job, text[-3000:])
        last = text.strip().splitlines()[-1]
        assert last.startswith("stability: run ") and "preempted (stopped at step " in last, (job, last)
        assert "by SIGINT" in last and "the same `stability grid run` resumes it" in last, (job, last)
        path = last.split("checkpoint saved at ", 1)[1].split(";")[0]
        assert os.path.isfile(path) and path.startswith(str(interrupted["spec"].sweep_dir)), (job, last)


def test_grid_clean_after_the_rerun_removes_the_preempted_attempts_logs_too(interrupted):
    """``grid clean`` removes the logs of finished runs: every job that ran one, the preempted
    attempts a rerun finished included (the ledger's latest job per run is only the rerun's)."""
    path, spec = interrupted["path"], interrupted["spec"]
    again = run_cli("grid", "run", str(path), "--quiet")
    assert again.returncode == 0 and "submitted 2" in again.stdout, (again.stdout, again.stderr[-2000:])
    assert sorted(store.load(spec.results).runs.status) == ["completed", "completed"]  # resumed to the end
    logs = store.logs_dir(spec.results, spec.name)
    first = [logs / f"{job}_0_log.{ext}" for job in interrupted["logs"] for ext in ("out", "err")]
    assert all(p.exists() for p in first)
    clean = run_cli("grid", "clean", str(path))
    assert clean.returncode == 0 and "removed 8 log files" in clean.stdout, (clean.stdout, clean.stderr[-2000:])
    assert not [p.name for p in logs.rglob("*_log.*")]
    assert (logs / "launcher.err").exists()  # the launcher's, of no run
