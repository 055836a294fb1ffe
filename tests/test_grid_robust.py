"""A grid run or status over a results root someone else writes to: a run another process trains
is never quarantined under it, and names, plans, values and specs read from the root are data
(escaped, checked, shown), never a crash or a terminal command."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from stability import store
from stability.grid.controller import quarantine_unreadable
from stability.grid.plan import plan_frame
from stability.grid.record import sampled_ranges
from stability.grid.samplers import make_plan
from stability.grid.spec import load_spec, save_spec_copy
from stability.grid.state import save_plan

from .conftest import ROOT, run_cli, write_spec

HOLD = ("import sys\nfrom stability.trainer.run_lock import RunLock\n"
        "with RunLock(*sys.argv[1:]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


def _streamed(root, sweep, run_id):
    """A run part-way through training: two chunks per streamed table and a checkpoint."""
    for first, to in ((0, 4), (4, 8)):
        store.append_rows(root, sweep, run_id, to, {
            "steps": [{"run_id": run_id, "step": s, "epoch": s // 4, "loss": 1.0} for s in range(first, to)],
            "epochs": [{"run_id": run_id, "epoch": first // 4, "val_top1_err": 50.0}]})
    ckpt = store.checkpoint_path(root, sweep, run_id)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"a checkpoint")
    return store.run_files(root, sweep, run_id)


def test_a_run_a_live_process_trains_is_left_whole_and_quarantined_once_it_ends(tmp_path):
    spec = load_spec(write_spec(tmp_path / "g.yaml", "lq", tmp_path / "res"))
    res = tmp_path / "res"
    live, dead = _streamed(res, "lq", "live"), _streamed(res, "lq", "dead")
    for files in (live, dead):  # one torn chunk each
        files[0].write_bytes(files[0].read_bytes()[:50])
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(res), "lq", "live"], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        lines, rerun = quarantine_unreadable(spec)
        assert all(p.exists() for p in live), [p for p in live if not p.exists()]  # the trainer's, untouched
        assert not any(p.exists() for p in dead)  # no owner: quarantined whole
        said = [ln for ln in lines if ln.startswith("left in place")]
        assert len(said) == 1 and "run live" in said[0] and f"pid {holder.pid}" in said[0], lines
    finally:
        holder.stdin.close()
        holder.wait(10)
    lines, _ = quarantine_unreadable(spec)  # its owner ended: the next grid run quarantines it
    assert not any(p.exists() for p in live) and len(lines) == len(live), lines


RERUN = ("import sys, time\nfrom pathlib import Path\nfrom stability import store\n"
         "from stability.trainer.run_lock import RunLock\nroot, sweep, rid, part = sys.argv[1:]\n"
         "with RunLock(root, sweep, rid):\n    print('held', flush=True)\n    end = time.time() + 20\n"
         "    while Path(part).exists() and time.time() < end:\n        time.sleep(0.01)\n"
         "    time.sleep(0.5)  # the controller has read which runs lost rows by now\n"
         "    store.write_run(root, sweep, rid, {'steps': [{'run_id': rid, 'step': 0, 'loss': 1.0}]})\n")


def test_a_run_that_lost_its_rows_is_marked_failed_only_under_its_lock(tmp_path):
    spec = load_spec(write_spec(tmp_path / "g.yaml", "lm", tmp_path / "res"))
    res = tmp_path / "res"
    for rid in ("a", "b"):
        store.write_run(res, "lm", rid, {"runs": [{"run_id": rid, "status": "completed"}],
                                         "steps": [{"run_id": rid, "step": 0, "loss": 1.0}]})
    store.compact(res, "lm")
    (part,) = store.table_dir(res, "steps", "lm").glob("part-*.parquet")
    part.write_bytes(b"junk")
    rerun = subprocess.Popen([sys.executable, "-c", RERUN, str(res), "lm", "a", str(part)], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE)  # a rerun of a writes its rows meanwhile
    try:
        assert rerun.stdout.readline() == "held\n"
        lines, marked = quarantine_unreadable(spec)
    finally:
        rerun.wait(30)
    status = store.read_table(res, "runs", sweep="lm").set_index("run_id").status
    assert marked == {"b"} and status.to_dict() == {"a": "completed", "b": "failed"}, (lines, status)


def _done_sweep(tmp_path, name, errs):
    """A sweep whose planned runs all completed with errors ``errs``: a grid run trains nothing."""
    spec = load_spec(write_spec(tmp_path / "g.yaml", name, tmp_path / "res"))
    plan = make_plan(spec)
    save_spec_copy(spec)
    save_plan(spec.sweep_dir, plan_frame(plan))
    for r, err in zip(plan, errs, strict=True):
        store.write_run(spec.results, name, r.run_id, {"runs": [{
            "run_id": r.run_id, "status": "completed", "stem": r.stem, "optimizer": r.optimizer, "epochs": r.epochs,
            "top1_err": err, "init_top1_err": 90.0, "wall_time_s": 1.0, "config_json": r.config_json}]})
    return spec, plan


def test_grid_run_prints_names_from_the_results_root_escaped(tmp_path):
    spec, _ = _done_sweep(tmp_path, "esc", [40.0, 95.0, 50.0, 60.0])
    evil = store.table_dir(spec.results, "runs", "esc") / "evil\x1b]0;TITLE\x07\x1b[2J.parquet"
    evil.write_bytes(b"garbage")
    out = run_cli("grid", "run", str(spec.path), "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "quarantined" in out.stderr and "evil?]0;TITLE??[2J" in out.stderr, out.stderr
    assert "\x1b" not in out.stdout + out.stderr and "\x07" not in out.stdout + out.stderr


def test_an_infinite_error_is_shown_not_a_crash(tmp_path):
    spec, _ = _done_sweep(tmp_path, "inf", [math.inf, 95.0, 50.0, 60.0])
    status = run_cli("grid", "status", str(spec.path))
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-2000:]
    assert "inf % error" in status.stdout, status.stdout
    out = run_cli("grid", "status", str(spec.path), "--json")  # strict JSON: no Infinity for jq to refuse
    assert out.returncode == 0 and "Infinity" not in out.stdout and "NaN" not in out.stdout, out.stdout[-2000:]
    json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    from stability.grid.state import outcome_line  # every non-finite value the line shows

    for rng in ([math.inf, math.inf], [95.0, math.inf], [math.nan, math.inf]):
        o = {"name": "s", "runs": 2, "learned": 0, "completed": 2, "at_chance": 2, "diverged": 0,
             "median_err": math.inf, "never_left_chance": True, "at_chance_err": rng}
        assert "inf" in outcome_line(o)
    assert "median error ? %" in outcome_line(o | {"median_err": None, "at_chance_err": None})  # unknown


def test_a_plan_naming_a_run_outside_its_sweep_is_named_not_a_traceback(tmp_path):
    spec, plan = _done_sweep(tmp_path, "pr", [40.0, 50.0, 60.0, 70.0])
    frame = plan_frame(plan)
    frame.loc[0, "run_id"] = "../../../tmp/x"
    save_plan(spec.sweep_dir, frame)
    path = spec.sweep_dir / "plan.parquet"
    status = run_cli("grid", "status", str(spec.path))
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-2000:]
    shown = " ".join(status.stdout.split())
    assert f"unreadable: {path}" in shown and "not a plain name" in shown and "planned from the spec" in shown
    assert "4 planned" in shown
    tpe = write_spec(tmp_path / "t.yaml", "pr", tmp_path / "res", sampler={"name": "tpe", "n": 4, "wave": 2, "seed": 0})
    out = run_cli("grid", "status", str(tpe), "--json")  # a tpe plan cannot be rebuilt: one line, exit 2
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and str(path) in out.stderr, out.stderr
    assert "../../../tmp/x" in set(pd.read_parquet(path).run_id)  # named, never overwritten


def test_a_spec_copy_nested_past_the_recursion_limit_is_skipped(tmp_path):
    spec = load_spec(write_spec(tmp_path / "g.yaml", "deep", tmp_path / "res"))
    save_spec_copy(spec)
    other = load_spec(write_spec(tmp_path / "h.yaml", "ok", tmp_path / "res",
                                 space={"stem": ["conv"], "lr": {"loguniform": [1e-3, 1e-1]}}))
    save_spec_copy(other)
    (spec.sweep_dir / "spec.yaml").write_text("[" * 100_000)
    assert sampled_ranges(spec.results, ["deep", "ok"]) == {"lr": (1e-3, 1e-1)}
