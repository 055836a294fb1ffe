"""Issue 23's attacks, each done for real: twin commands, copied and planted checkpoints,
hostile ledger values, flipped bytes, killed writers, bad packs, symlinks out of the root."""

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stability import store
from stability.config import run_config

from .conftest import ROOT, TINY, run_cli, write_spec

FAST = dict(TINY, epochs=1, steps_per_epoch=2, batch_size=16)


def _cfg(tmp_path, sweep="h", **kw):
    return run_config({**FAST, "results": str(tmp_path), "sweep": sweep, **kw})


def _args(cfg) -> list[str]:
    return [f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None and k in {*FAST, "results", "sweep", "lr",
                                                                                        "stem", "model"}]


def _wait_for(pred, timeout=120.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_a_twin_command_that_gets_the_lock_after_the_run_ended_does_not_train_it_again(tmp_path):
    """Case 1: the done-check is taken under the owner lock. The twin is held on the lock while
    the first command's result lands (it passed every check before the lock); it must then find
    the result, not train the run again over it."""
    from stability.trainer.run_lock import RunLock
    from stability.trainer.train import train

    cfg = _cfg(tmp_path)
    train(cfg)
    result = store.table_dir(tmp_path, "runs", "h") / f"{cfg.run_id}.parquet"
    aside = tmp_path / "result.aside"
    before = store.read_table(tmp_path, "runs", sweep="h")
    with RunLock(tmp_path, "h", cfg.run_id):  # the first command, still writing its result
        os.replace(result, aside)
        twin = subprocess.Popen([sys.executable, "-m", "stability", "train", *_args(cfg)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _holds_open(twin.pid, store.owner_path(tmp_path, "h", cfg.run_id)))
        os.replace(aside, result)  # its result lands, then it lets go of the lock
    out, err = twin.communicate(timeout=300)
    assert twin.returncode == 0, err[-2000:]
    assert "already completed" in out, out + err[-2000:]
    after = store.read_table(tmp_path, "runs", sweep="h")
    assert after.finished_at.tolist() == before.finished_at.tolist() and len(after) == 1


def test_a_checkpoint_copied_onto_another_run_is_set_aside_not_resumed(tmp_path, capsys):
    """Case 2: a checkpoint names its run and config hash; another run's (or another stem's)
    is quarantined with a message naming both runs, and the run starts afresh."""
    from stability.trainer.checkpoint import checkpoint_path
    from stability.trainer.stopping import Preempted
    from stability.trainer.train import train

    donor = _cfg(tmp_path, lr=0.005, epochs=2)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Preempted):
        train(donor, stop=stop)
    for other in (_cfg(tmp_path, lr=0.009, epochs=2), _cfg(tmp_path, model="vit_p_tiny", epochs=2)):
        planted = checkpoint_path(other)
        planted.write_bytes(checkpoint_path(donor).read_bytes())
        capsys.readouterr()
        row = train(other)
        err = " ".join(capsys.readouterr().err.split())
        assert row["status"] == "completed"
        assert f"checkpoint {planted} is of run {donor.run_id}, not of run {other.run_id}" in err, err
        assert "resumes" not in err and not planted.exists()
        epochs = store.read_table(tmp_path, "epochs", sweep="h", run_ids=[other.run_id])
        assert set(epochs.run_id) == {other.run_id} and epochs.epoch.tolist() == [0, 1]  # from scratch
    assert len(list((tmp_path / "_sweeps/h/quarantine").rglob("*.pt.*"))) == 2
    row = train(donor)  # its own checkpoint still resumes
    assert row["status"] == "completed"


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_planted_checkpoint_runs_no_code(tmp_path, how):
    """Case 3: a checkpoint is loaded with weights_only=True: a pickle that calls os.system is
    refused and quarantined, and its command never runs."""
    import torch

    from stability.trainer.checkpoint import checkpoint_path

    cfg = _cfg(tmp_path)
    marker = tmp_path / "pwned"
    path = checkpoint_path(cfg)
    path.parent.mkdir(parents=True)
    payload = {"model": _Exploit(marker), "optimizer": {}, "state": {}, "rng": None}
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    out = run_cli("train", *_args(cfg))
    assert out.returncode == 0, out.stderr[-2000:]
    assert not marker.exists(), "the planted checkpoint ran its command"
    assert f"checkpoint {path} is unreadable" in " ".join(out.stderr.split()) and not path.exists()


def test_grid_clean_never_deletes_by_a_ledger_pattern_nor_outside_the_sweep(tmp_path):
    """Case 4: ledger job ids are compared with parsed file names, never globbed; every delete
    resolves under the sweep's folder."""
    from stability.grid.controller import clean_logs
    from stability.grid.ledger import record_jobs
    from stability.grid.spec import load_spec

    res = tmp_path / "res"
    spec = load_spec(write_spec(tmp_path / "g.yaml", "cl", res))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x_0_log.err").write_text("outside")
    logs = store.logs_dir(res, "cl")
    (logs / "777").mkdir(parents=True)
    keep = [logs / "999_0_log.err", logs / "999_0_log.out", victim / "x_0_log.err"]
    for p in keep[:2]:
        p.write_text("a live job's log")
    gone = [logs / "777" / "777_0_log.err", logs / "777" / "777_0_log.out", logs / "777_submitted.pkl"]
    for p in gone:
        p.write_text("a finished job's log")
    (logs / "link").symlink_to(victim, target_is_directory=True)  # a folder out of the sweep
    rows = [{"run_id": r, "status": "completed"} for r in ("r1", "r2", "r3", "r4")]
    for r in rows:
        store.write_run(res, "cl", r["run_id"], {"runs": [r]})
    depth = "../" * len(logs.relative_to(tmp_path).parts)
    record_jobs(spec.sweep_dir, "local", [("r1", "*"), ("r2", f"{depth}victim/x"), ("r3", "777"), ("r4", "x")])
    assert clean_logs(spec) == len(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert not (logs / "777").exists() and (victim / "x_0_log.err").read_text() == "outside"


def test_train_run_takes_nothing_from_a_planted_row_that_its_id_does_not_vouch_for(tmp_path):
    """`train --run ID` reads the runs table, which is not trusted: an altered config (another
    lr under the same id) is refused, a recorded data_root is named but never read, garbage is
    one line, and the id, results and sweep come from the command line and where the row is."""
    from stability.trainer.train import train

    cfg = _cfg(tmp_path)
    row = train(cfg)
    rid, sweep = cfg.run_id, cfg.sweep
    good = json.loads(row["config_json"])

    def plant(config_json):
        store.write_run(tmp_path, sweep, rid, {"runs": [{**row, "config_json": config_json}]})

    plant(json.dumps({**good, "lr": good["lr"] * 10}))  # trains something else under this id
    _one_line_exit_2(run_cli("train", "--run", rid, f"results={tmp_path}", "--rerun"), f"not {rid}", "altered")
    plant(json.dumps({**good, "dataset": "imagefolder", "data_root": "/etc"}))
    out = run_cli("train", "--run", rid, f"results={tmp_path}", "--rerun")
    _one_line_exit_2(out, "data_root /etc", "pass data_root=PATH")
    plant("{not json")
    _one_line_exit_2(run_cli("train", "--run", rid, f"results={tmp_path}"), "no readable config_json")
    plant(json.dumps({**good, "results": "/tmp/elsewhere", "sweep": "../../x"}))  # where it lives: not taken
    out = run_cli("train", "--run", rid, f"results={tmp_path}")
    assert out.returncode == 0 and "already completed" in out.stdout, out.stderr
    assert f"in {tmp_path}/runs/sweep={sweep}; nothing to do" in out.stdout
    for bad in ("../../etc", "61D9686972B4", "*"):
        _one_line_exit_2(run_cli("train", "--run", bad, f"results={tmp_path}"), "not a run id")
    _one_line_exit_2(run_cli("train", "--run", rid, f"results={tmp_path}", "sweep=other"),
                     f"no run {rid} under {tmp_path} in sweep other (it is in: {sweep})")
    _one_line_exit_2(run_cli("train", "--run", rid, f"results={tmp_path / 'nope'}"), "no results root")
    _one_line_exit_2(run_cli("train", "--run", rid, f"results={tmp_path}", "lr=0.1"), "lr cannot be set with --run")
    assert not Path("/tmp/elsewhere").exists() and store.read_table(tmp_path, "runs").run_id.tolist() == [rid]


def _one_line_exit_2(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stdout[-1000:], out.stderr[-2000:])
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    for n in needles:
        assert n in line, (n, line)
    return line


def _tiny_sweep(tmp_path, name, lrs=(1e-3,), **kw):
    path = write_spec(tmp_path / f"{name}.yaml", name, tmp_path / "res",
                      base={"model": "vit_c_tiny", "epochs": 1, "steps_per_epoch": 2, "batch_size": 16},
                      space={"lr": list(lrs)}, sampler={"name": "random", "n": 1, "seed": 0}, **kw)
    out = run_cli("grid", "run", str(path), "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    return path


def test_a_flipped_byte_in_a_result_file_is_named_corrupt_not_lost(tmp_path):
    """Case 5: result files carry page checksums, verified on read: bytes flipped in the middle of
    a finished run's file (footer intact) are named as corruption by status and report."""
    import pyarrow.parquet as pq

    path = _tiny_sweep(tmp_path, "flip", lrs=(1e-3, 2e-3))
    f, _ = sorted((tmp_path / "res/runs/sweep=flip").glob("*.parquet"))
    col = pq.read_metadata(f).row_group(0).column(pq.read_schema(f).names.index("config_json"))
    raw = bytearray(f.read_bytes())
    # the config's text in its page (the dictionary page comes first; the footer's copy is later)
    at = raw.index(b"vit_c_tiny", col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset)
    raw[at:at + 4] = bytes(b ^ 0x5A for b in raw[at:at + 4])  # unchecked, this reads as another config
    f.write_bytes(raw)
    status = run_cli("grid", "status", str(path), "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    named = [u for u in json.loads(status.stdout)["unreadable"] if u.startswith(f"{f}: ")]
    assert len(named) == 1 and "checksum" in named[0].lower(), named
    report = run_cli("report", "flip", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"unreadable, left out: {f}" in report.stderr and "checksum" in report.stderr, report.stderr[-2000:]
    assert str(f) in (tmp_path / "r.html").read_text()  # named at the top of the report too


@pytest.mark.parametrize("bad", ["other_schema", "folder"])
def test_a_plan_of_another_schema_or_a_folder_is_named_in_one_line(tmp_path, bad):
    """Case 6: a plan.parquet that is parquet of another schema, or a folder."""
    import pandas as pd

    spec = write_spec(tmp_path / "g.yaml", "ps", tmp_path / "res")
    plan = tmp_path / "res/_sweeps/ps/plan.parquet"
    plan.parent.mkdir(parents=True)
    if bad == "folder":
        plan.mkdir()
    else:
        pd.DataFrame({"x": [1, 2]}).to_parquet(plan)
    status = run_cli("grid", "status", str(spec))
    assert status.returncode == 0 and "planned from the spec" in " ".join(status.stdout.split()), status.stdout
    tpe = write_spec(tmp_path / "t.yaml", "ps", tmp_path / "res", sampler={"name": "tpe", "n": 4, "wave": 2, "seed": 0})
    _one_line_exit_2(run_cli("grid", "status", str(tpe)), str(plan), "unreadable")


def test_optuna_storage_on_a_full_disk_is_one_line(tmp_path):
    """Case 7: sqlite's "database or disk is full" under Optuna is a one-line error, exit 2."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode == 0
    try:
        spec = write_spec(tmp_path / "t.yaml", "full", mnt / "res", sampler={"name": "tpe", "n": 4, "wave": 2, "seed": 0})
        (mnt / "res/_sweeps/full").mkdir(parents=True)
        st = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 96 * 1024))  # room for small files only
        out = run_cli("grid", "run", str(spec), "--quiet", "--no-wait")
        line = _one_line_exit_2(out, str(spec))
        assert "full" in line or "No space" in line, line
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_killed_writers_fresh_temp_files_are_removed_by_the_runs_next_owner(tmp_path):
    """Case 8: temp files a SIGKILL left (a checkpoint's, a result's) go when the run is next
    trained, whatever their age: the new owner holds the run's lock."""
    from stability.trainer.checkpoint import checkpoint_path
    from stability.trainer.train import train

    cfg = _cfg(tmp_path, epochs=2)
    ckpt = checkpoint_path(cfg)
    ckpt.parent.mkdir(parents=True)
    left = [ckpt.with_name(f".{ckpt.name}.0badc0de.tmp"),
            store.table_dir(tmp_path, "steps", "h") / f".{cfg.run_id}.parquet.0badc0de.tmp"]
    left[1].parent.mkdir(parents=True)
    other = store.table_dir(tmp_path, "steps", "h") / ".another-run.parquet.0badc0de.tmp"
    for p in (*left, other):
        p.write_bytes(b"half a file")
    assert train(cfg)["status"] == "completed"
    assert not any(p.exists() for p in left) and other.exists()  # not this run's: not ours to remove


def _image_folder(root: Path, n=3):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (24, 20), (40 * i, 90, 160)).save(root / split / c / f"{i}.jpg")


def test_pack_decodes_every_image_and_names_the_bad_ones(tmp_path):
    """Case 9: a truncated JPEG, a text file named .jpg and a binary named .png are refused by
    default, named (with or without --short-side), and nothing is left that reads as a pack;
    --bad skip leaves them out and counts them."""
    from stability.data.packed import PackedDataset

    root = tmp_path / "imgs"
    _image_folder(root)
    good = (root / "train/cat/0.jpg").read_bytes()
    bad = [root / "train/cat/cut.jpg", root / "train/dog/text.jpg", root / "val/dog/bin.png"]
    bad[0].write_bytes(good[: len(good) // 2])
    bad[1].write_text("this is not an image")
    bad[2].write_bytes(os.urandom(300))
    for extra in ([], ["--short-side", "16"]):
        out = tmp_path / f"p{len(extra)}"
        line = _one_line_exit_2(run_cli("pack", str(root), str(out), "--workers", "2", *extra), "3 file(s)")
        assert sum(str(p) in line for p in bad) >= 3, line
        assert not (out / "meta.json").exists() and not any(out.glob("*")), list(out.glob("*"))
    skip = run_cli("pack", str(root), str(tmp_path / "s"), "--bad", "skip")
    assert skip.returncode == 0 and "3 bad file(s) left out" in skip.stdout, skip.stderr[-2000:]
    assert len(PackedDataset(tmp_path / "s", "train")) == 6 and len(PackedDataset(tmp_path / "s", "val")) == 6
    meta = json.loads((tmp_path / "s/meta.json").read_text())
    assert sorted(meta["skipped"]) == sorted(map(str, bad))


def test_pack_refuses_a_symlink_loop(tmp_path):
    """Case 10: ``train/cat/loop -> ..`` would pack the tree again and again."""
    root = tmp_path / "imgs"
    _image_folder(root)
    (root / "train/cat/loop").symlink_to("..", target_is_directory=True)
    line = _one_line_exit_2(run_cli("pack", str(root), str(tmp_path / "p")), "loop")
    assert "train/cat/loop" in line, line
    assert not (tmp_path / "p/meta.json").exists()


def test_the_dashboard_offers_no_symlink_out_of_its_root(tmp_path, dash_results):
    """Case 11: a folder inside the root that links to a sweep outside is not a root to pick."""
    import shutil

    from streamlit.testing.v1 import AppTest

    base = tmp_path / "base"
    shutil.copytree(dash_results, base / "a")
    (base / "outlink").symlink_to(dash_results, target_is_directory=True)
    (base / "b").mkdir()
    (base / "b/runs").symlink_to(dash_results / "runs", target_is_directory=True)
    at = AppTest.from_file(str(ROOT / "dashboard/app.py"), default_timeout=120)
    at.query_params["root"] = "outlink"
    old = os.environ.get("STABILITY_RESULTS")
    os.environ["STABILITY_RESULTS"] = str(base)
    try:
        at.run()
    finally:
        os.environ.pop("STABILITY_RESULTS") if old is None else os.environ.update(STABILITY_RESULTS=old)
    assert not at.exception, [e.value for e in at.exception]
    assert set(at.selectbox(key="root").options) == {str(base.resolve()), "a"}
    assert at.selectbox(key="root").value == str(base.resolve())


def test_a_killed_local_launcher_is_started_again_and_nothing_runs_twice(tmp_path):
    """Case 12: SIGKILL the local launcher while the controller still has runs to submit."""
    import signal

    path = write_spec(tmp_path / "g.yaml", "kl", tmp_path / "res",
                      base={"model": "vit_c_tiny", "epochs": 1, "steps_per_epoch": 4, "batch_size": 16},
                      space={"lr": [1e-3, 2e-3, 3e-3]}, sampler={"name": "random", "n": 1, "seed": 0},
                      executor={"kind": "local", "max_parallel": 1, "timeout_min": 20})
    ctl = subprocess.Popen([sys.executable, "-m", "stability", "grid", "run", str(path), "--quiet"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def launcher():
        kids = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(ctl.pid)], capture_output=True, text=True)
        return next((int(line.split()[0]) for line in kids.stdout.splitlines() if "stability.grid.local" in line), None)

    ledger = tmp_path / "res/_sweeps/kl/jobs.jsonl"
    _wait_for(lambda: ledger.exists() and ledger.read_text().count("\n") >= 1 and launcher())
    os.kill(launcher(), signal.SIGKILL)
    out, err = ctl.communicate(timeout=600)
    assert ctl.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "starting it again" in err, err[-2000:]
    runs = store.read_table(tmp_path / "res", "runs", sweep="kl")
    assert sorted(runs.status) == ["completed"] * 3 and runs.run_id.is_unique


def test_reproduce_checks_every_studys_data_before_training(tmp_path):
    """Case 13: ``--set dataset=cifar10`` without data_root fails at once, as ``train`` does."""
    out = run_cli("reproduce", "--quick", "--results", str(tmp_path / "r"), "--set", "dataset=cifar10",
                  "--set", "test_split=0", timeout=120)
    _one_line_exit_2(out, "data_root", "cifar10")
    assert not (tmp_path / "r/runs").exists()
    missing = run_cli("reproduce", "--quick", "--results", str(tmp_path / "r"), "--set", "dataset=imagefolder",
                      "--set", f"data_root={tmp_path / 'nowhere'}", "--set", "test_split=0", timeout=120)
    _one_line_exit_2(missing, "data_root", str(tmp_path / "nowhere"))


def test_a_lease_heartbeat_dated_in_the_future_does_not_lock_the_sweep_forever(tmp_path):
    """Case 14: a heartbeat far in the future is a corrupt lease (taken over, and said so);
    one a few seconds ahead is another host's clock skew (still refused)."""
    from stability.grid.lock import SweepLock

    sweep = tmp_path / "_sweeps/s"
    sweep.mkdir(parents=True)
    lease = sweep / "lease.json"
    lease.write_text(json.dumps({"host": "node-7", "pid": 4242, "since": "x", "heartbeat": time.time() + 5}))
    with pytest.raises(Exception, match="pid 4242 on node-7"):
        SweepLock(sweep, "s").acquire()
    lease.write_text(json.dumps({"host": "node-7", "pid": 4242, "since": "x", "heartbeat": time.time() + 999999}))
    with SweepLock(sweep, "s"):
        assert json.loads(lease.read_text())["took_over"]["heartbeat"] > time.time()


def test_a_planted_tpe_plan_gives_its_runs_nothing_but_their_points(tmp_path):
    """A tpe plan is read back, not recomputed: a row's config must not carry another results
    root, dataset or data_root (cifar's loader unpickles its files) into the jobs it submits."""
    from stability.errors import ConfigError
    from stability.grid.plan import plan_frame
    from stability.grid.samplers import sampler_for
    from stability.grid.spec import load_spec
    from stability.grid.state import save_plan
    from stability.grid.studies import open_storage

    spec = load_spec(write_spec(tmp_path / "g.yaml", "tp", tmp_path / "res", executor={"kind": "debug"},
                                sampler={"name": "tpe", "mode": "waves", "wave": 2, "n": 2, "seed": 0}))
    plan = sampler_for(spec).plan_of_record(open_storage(spec))
    assert len(plan) == 4  # 2 points x 2 stems, the first wave

    def plant(config_json=None, **changes):
        df = plan_frame(plan)
        df.loc[1, "config_json"] = config_json or json.dumps({**json.loads(df.config_json[1]), **changes})
        save_plan(spec.sweep_dir, df)
        return sampler_for(spec).plan_of_record(open_storage(spec))

    evil = str(tmp_path / "elsewhere")
    again = plant(results=evil, sweep="other", dataset="cifar10", data_root=evil, download=True, epochs=500)
    assert [r.config_json for r in again] == [r.config_json for r in plan]  # rebuilt from the spec
    assert {r.config.results for r in again} == {str(tmp_path / "res")} and {r.config.data_root for r in again} == {None}
    for bad in ({"lr": 1.0}, {"lr": "0.001"}, {"lr": True}, {"lr": float("nan")}, {"lr": None}):
        with pytest.raises(ConfigError, match="point is not one of the spec's ranges"):
            plant(**bad)
    for text in ("{", "[1]", "null", "[" * 100_000):
        with pytest.raises(ConfigError, match="point is not one of the spec's ranges"):
            plant(config_json=text)
    df = plan_frame(plan)
    df.loc[1, "run_id"] = "../../../x"
    save_plan(spec.sweep_dir, df)
    with pytest.raises(ConfigError, match=r"run_id '\.\./\.\./\.\./x' is not a plain name\).*cannot be rebuilt"):
        sampler_for(spec).plan_of_record(open_storage(spec))  # refused as the plan is read: no path built from it


def test_files_written_in_place_never_follow_a_planted_symlink(tmp_path):
    """A lock, the job ledger and the launcher's log are written in place (not renamed into
    place): a symlink planted at their name is refused in one line, its target untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("x" * 2000)
    cfg = _cfg(tmp_path / "res")
    owner = store.owner_path(cfg.results, cfg.sweep, cfg.run_id)
    owner.parent.mkdir(parents=True)
    owner.symlink_to(victim)
    _one_line_exit_2(run_cli("train", *_args(cfg)), str(owner), "symbolic link")
    assert victim.read_text() == "x" * 2000 and not list((tmp_path / "res").glob("runs/*/*.parquet"))

    path = write_spec(tmp_path / "g.yaml", "ln", tmp_path / "res", base=dict(FAST), space={"lr": [1e-3]},
                      sampler={"name": "random", "n": 1, "seed": 0})
    sweep = store.sweep_dir(tmp_path / "res", "ln")
    for planted in (sweep / "lock", sweep / "jobs.jsonl", sweep / "logs" / "launcher.err"):
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.unlink(missing_ok=True)  # the launcher's log: written by the try before
        planted.symlink_to(victim)
        _one_line_exit_2(run_cli("grid", "run", str(path), "--quiet"), str(planted), "symbolic link")
        assert victim.read_text() == "x" * 2000, planted
        planted.unlink()
    assert run_cli("grid", "run", str(path), "--quiet").returncode == 0  # the links gone, it runs
    assert victim.read_text() == "x" * 2000
    # a folder on the way linked out of the root (the sweep's own): refused before anything is written
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = write_spec(tmp_path / "o.yaml", "ln2", tmp_path / "res", base=dict(FAST), space={"lr": [1e-3]},
                       sampler={"name": "random", "n": 1, "seed": 0})
    store.sweep_dir(tmp_path / "res", "ln2").symlink_to(elsewhere, target_is_directory=True)
    _one_line_exit_2(run_cli("grid", "run", str(other), "--quiet"), "leads out of the results root")
    assert not list(elsewhere.iterdir())


def test_grid_collect_never_writes_or_deletes_through_a_folder_linked_out_of_the_root(tmp_path):
    path = _tiny_sweep(tmp_path, "lk")
    victim = tmp_path / "victimdir"
    victim.mkdir()
    (victim / "important.parquet").write_bytes(b"keep me")
    epochs = store.table_dir(tmp_path / "res", "epochs", "lk")
    moved = tmp_path / "epochs-moved"
    epochs.rename(moved)
    epochs.symlink_to(victim)
    _one_line_exit_2(run_cli("grid", "collect", str(path)), str(epochs), "leads out of the results root")
    assert sorted(p.name for p in victim.iterdir()) == ["important.parquet"]
    assert (victim / "important.parquet").read_bytes() == b"keep me"
    # a quarantine folder linked out of the root: nothing is moved there (a move out is a delete)
    epochs.unlink()
    moved.rename(epochs)
    (run,) = store.table_dir(tmp_path / "res", "runs", "lk").glob("*.parquet")
    qdir = store.sweep_dir(tmp_path / "res", "lk") / "quarantine"
    qdir.symlink_to(victim)
    with pytest.raises(ValueError, match="leads out of the results root"):
        store.quarantine(tmp_path / "res", "lk", run)
    assert run.exists() and sorted(p.name for p in victim.iterdir()) == ["important.parquet"]
    qdir.unlink()
    assert run_cli("grid", "collect", str(path)).returncode == 0


def test_a_job_log_tail_reads_no_planted_link_or_fifo_and_only_the_end(tmp_path):
    from stability.grid.joblogs import job_log_tail

    logs = tmp_path / "logs"
    logs.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    (logs / "41_0_log.err").symlink_to(secret)
    os.mkfifo(logs / "42_0_log.err")  # a reader that opened it blocking would wait for ever
    (logs / "43_0_log.err").write_text("x" * 10_000_000 + "\nsecond last\nlast line\n")
    (logs / "44_0_log.err").write_text("Traceback ...\nValueError: bad\n")
    assert job_log_tail(logs, "41") == "" and job_log_tail(logs, "42") == ""
    assert job_log_tail(logs, "43", lines=2) == "second last\nlast line"
    assert job_log_tail(logs, "44") == "Traceback ...\nValueError: bad"


def test_the_report_writes_values_from_result_files_as_text_never_as_html(tmp_path):
    import pandas as pd

    from stability.report import build_report

    from .test_sensitivity import C, _run, _write

    evil = "</script><img src=x onerror=alert(document.domain)>"
    rows = []
    for opt in ("adamw", evil):
        for i, lr in enumerate([1e-3, 3e-3, 1e-2, 3e-2]):
            rows.append(_run(f"c{i}{len(opt)}", "conv", lr, 0, C, 0.5, 2.3, err=10.0 + i, optimizer=opt))
            rows.append(_run(f"p{i}{len(opt)}", "patchify", lr, 0, C, 2.3, 2.3, err=80.0 + i, optimizer=opt))
    page = build_report(_write(tmp_path / "results", pd.DataFrame(rows)), "s")
    assert "<img src=x" not in page and "</script><img" not in page
    assert "&lt;img src=x onerror=alert(document.domain)&gt;" in page  # shown, as text


def test_grid_status_prints_ledger_values_as_plain_text(tmp_path):
    """A job id from the ledger, with a terminal escape and rich markup in it, reaches the
    terminal as text: no escape sequence, no link, no lost brackets."""
    from stability.grid.ledger import record_failure, record_jobs
    from stability.grid.samplers import make_plan
    from stability.grid.spec import load_spec

    path = write_spec(tmp_path / "g.yaml", "st", tmp_path / "res", base=dict(FAST), space={"lr": [1e-3, 2e-3]},
                      sampler={"name": "random", "n": 1, "seed": 0}, executor={"kind": "debug"})
    spec = load_spec(path)
    a, b = (r.run_id for r in make_plan(spec))
    evil = "9\x1b]0;pwned\x07[link=https://evil.example]x[/link][bold]"
    record_jobs(spec.sweep_dir, "debug", [(a, evil), (b, evil)])
    record_failure(spec.sweep_dir, b, evil, "disk full \x1b[41m[red]boom[/red]")
    out = run_cli("grid", "status", str(path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "[link=https://evil.example]x[/link][bold]" in out.stdout, out.stdout  # as text, brackets kept
    assert "[red]boom[/red]" in out.stdout


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "x\0y"])
def test_no_path_is_built_from_a_name_that_leads_elsewhere(tmp_path, name):
    for build in (store.checkpoint_path, store.owner_path, store.progress_path):
        with pytest.raises(ValueError, match="not a plain name"):
            build(tmp_path, "s", name)
        with pytest.raises(ValueError, match="not a plain name"):
            build(tmp_path, name, "r")
    assert store.read_progress(tmp_path, "s", name) is None


@pytest.mark.parametrize("note", ['[1]', '{"epoch": "1"}', '{"a":' * 100_000,
                                  '{"epoch": 1, "epochs": 2, "step": "x", "total_steps": 2, "val_top1_err": 1.0, '
                                  '"updated_at": "t"}'])
def test_a_progress_note_of_another_shape_reads_as_none(tmp_path, note):
    store.progress_path(tmp_path, "s", "r").parent.mkdir(parents=True)
    store.progress_path(tmp_path, "s", "r").write_text(note)
    assert store.read_progress(tmp_path, "s", "r") is None
    store.write_progress(tmp_path, "s", "r", {"epoch": 1, "epochs": 2, "step": 1, "total_steps": 2,
                                              "val_top1_err": 12, "train_loss": float("nan"), "updated_at": "t"})
    assert store.read_progress(tmp_path, "s", "r")["val_top1_err"] == 12


def test_a_planted_sweep_folder_named_dot_dot_is_no_sweep(tmp_path):
    """``runs/sweep=..`` (or ``sweep=.``, ``sweep=``) is not a sweep: every all-sweeps read goes on
    without it (store.plain_name refuses to build a path from its name)."""
    cfg = _cfg(tmp_path)
    assert run_cli("train", *_args(cfg)).returncode == 0
    for name in ("sweep=..", "sweep=.", "sweep="):
        (tmp_path / "runs" / name).mkdir()
    assert store.sweeps(tmp_path) == ["h"]
    assert store.load(tmp_path).runs.run_id.tolist() == [cfg.run_id]
