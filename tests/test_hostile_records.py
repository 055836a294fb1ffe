"""A sweep's small record files and folders planted or damaged by hand: a check record of another
shape, nested JSON, FIFOs, symbolic links (out of the root, into another sweep), result files of
another column type. Hand-made files only (no training): each test is fast."""

import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stability import store
from stability.errors import ConfigError

from .conftest import run_cli, write_spec
from .test_hostile import FAST, _args, _cfg, _one_line_exit_2

DEEP = "[" * 200_000  # json.loads: RecursionError, not ValueError


def _run(run_id):
    return {"runs": [{"run_id": run_id, "status": "completed", "lr": 0.1, "top1_err": 12.5}],
            "epochs": [{"run_id": run_id, "epoch": 0, "val_top1_err": 50.0}],
            "steps": [{"run_id": run_id, "step": 0, "loss": 1.0}],
            "grad_norms": [{"run_id": run_id, "step": 0, "layer": "stem", "depth": 0, "grad_norm": 1.0}]}


def _sweep(root: Path, name="s", runs=("a", "b")) -> Path:
    for rid in runs:
        store.write_run(root, name, rid, _run(rid))
    store.sweep_dir(root, name).mkdir(parents=True, exist_ok=True)
    return store.sweep_dir(root, name)


def _returns(fn, timeout=10.0):
    """``fn()``'s value; fails (rather than hanging the suite) when it blocks, e.g. on a FIFO."""
    out = {}

    def call():
        try:
            out["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
            out["e"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked for {timeout} s"
    if "e" in out:
        raise out["e"]
    return out.get("v")


@pytest.mark.parametrize("record", ["[]", '"x"', "7", '{"runs/sweep=s/a.parquet": "x"}', pytest.param(DEEP, id="deep")])
def test_a_check_record_of_another_shape_is_checked_afresh_and_blames_no_result_file(tmp_path, record):
    root = tmp_path / "res"
    sweep = _sweep(root)
    (sweep / store.READABLE).write_text(record)
    assert store.unreadable(root, "s") == []
    assert isinstance(json.loads((sweep / store.READABLE).read_text()), dict)  # rewritten, whole


def test_a_malformed_check_record_makes_grid_run_quarantine_nothing(tmp_path):
    from stability.grid.controller import quarantine_unreadable
    from stability.grid.spec import load_spec

    root = tmp_path / "res"
    spec = load_spec(write_spec(tmp_path / "g.yaml", "s", root))
    (_sweep(root) / store.READABLE).write_text("[]")
    assert quarantine_unreadable(spec) == ([], set())
    assert len(list(root.glob("*/sweep=s/*.parquet"))) == 8


def test_a_deeply_nested_lease_or_owner_record_reads_as_none(tmp_path):
    from stability.grid.lock import SweepLock, controller_lease, read_lease
    from stability.trainer.run_lock import RunLock, run_owner

    sweep = _sweep(tmp_path / "res")
    (sweep / "lease.json").write_text(DEEP)
    assert read_lease(sweep) is None and controller_lease(sweep) is None
    with SweepLock(sweep, "s"):  # taken, its lease written over the bad one
        assert read_lease(sweep)["pid"] == os.getpid()
    owner = store.owner_path(tmp_path / "res", "s", "a")
    owner.parent.mkdir()
    owner.write_text("[" * 4000)  # what a holder's record read sees: its first 4096 bytes
    with RunLock(tmp_path / "res", "s", "a"):
        owner.write_text("[" * 4000)
        assert run_owner(tmp_path / "res", "s", "a") == {}  # held, by someone it cannot name


def test_cli_reads_a_deeply_nested_check_record_without_a_traceback(tmp_path):
    path = write_spec(tmp_path / "g.yaml", "s", tmp_path / "res")
    (_sweep(tmp_path / "res") / store.READABLE).write_text(DEEP)
    out = run_cli("grid", "status", str(path))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.fixture
def outside(tmp_path):
    out = tmp_path / "outside"
    out.mkdir()
    return out


def _link(folder: Path, to: Path) -> None:
    if folder.is_dir():
        folder.rmdir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(to, target_is_directory=True)


def test_a_run_never_deletes_or_writes_through_a_checkpoints_or_progress_folder_linked_out(tmp_path, outside):
    """The run's owner removes a killed writer's temp files and writes its checkpoint and
    progress note in the sweep's own folder only: a linked folder is refused, in one line."""
    from stability.trainer.run_lock import RunLock, run_owner

    cfg = _cfg(tmp_path / "res")
    sweep = store.sweep_dir(cfg.results, cfg.sweep)
    victims = [outside / f".{cfg.run_id}.pt.victim.tmp", outside / f".{cfg.run_id}.json.victim.tmp"]
    for v in victims:
        v.write_text("victim")
        os.utime(v, (0, 0))  # older than STALE_TMP_S: what atomic_path's clean-up removes
    for sub in ("checkpoints", "progress"):
        _link(sweep / sub, outside)
        with pytest.raises(ConfigError, match=str(sweep / sub)):
            store.remove_run_temps(cfg.results, cfg.sweep, cfg.run_id)
        with pytest.raises(ConfigError, match=str(sweep / sub)), RunLock(cfg.results, cfg.sweep, cfg.run_id):
            pass
        assert run_owner(cfg.results, cfg.sweep, cfg.run_id) is None  # the refused lock was let go
        (sweep / sub).unlink()
    _link(sweep / "progress", outside)
    with pytest.raises(ConfigError, match="progress"):
        store.write_progress(cfg.results, cfg.sweep, cfg.run_id, {"epoch": 1})
    _link(sweep / "checkpoints", outside)
    with pytest.raises(ConfigError, match="checkpoints"), \
            store.atomic_path(store.checkpoint_path(cfg.results, cfg.sweep, cfg.run_id)) as tmp:  # as checkpoint.py
        tmp.write_text("weights")
    assert sorted(p.name for p in outside.iterdir()) == sorted(v.name for v in victims)
    _one_line_exit_2(run_cli("train", *_args(cfg)), str(sweep / "checkpoints"))
    assert sorted(p.name for p in outside.iterdir()) == sorted(v.name for v in victims)
    assert all(v.read_text() == "victim" for v in victims)


def test_a_symlinked_optuna_db_is_refused_and_its_target_untouched(tmp_path, outside):
    from stability.grid.spec import load_spec
    from stability.grid.studies import open_storage

    path = write_spec(tmp_path / "g.yaml", "t", tmp_path / "res", base=dict(FAST),
                      sampler={"name": "tpe", "n": 2, "wave": 1, "seed": 0})
    spec = load_spec(path)
    spec.sweep_dir.mkdir(parents=True)
    (spec.sweep_dir / "optuna.db").symlink_to(outside / "planted.db")
    with pytest.raises(ConfigError, match="optuna.db"):
        open_storage(spec)
    assert not (outside / "planted.db").exists()
    (outside / "victim").write_bytes(b"")
    (spec.sweep_dir / "optuna.db").unlink()
    (spec.sweep_dir / "optuna.db").symlink_to(outside / "victim")
    _one_line_exit_2(run_cli("grid", "run", str(path), "--quiet", "--no-wait"), str(spec.sweep_dir / "optuna.db"))
    assert (outside / "victim").read_bytes() == b"" and sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_quarantine_and_writes_never_reach_another_sweep_through_a_link(tmp_path):
    root = tmp_path / "res"
    _sweep(root, "a")
    _sweep(root, "b")
    other = store.table_dir(root, "epochs", "b")
    bad = other / "a.parquet"
    bad.write_bytes(b"not parquet")
    mine = store.table_dir(root, "epochs", "a")
    for p in mine.iterdir():
        p.unlink()
    mine.rmdir()
    mine.symlink_to(Path("..") / "epochs" / "sweep=b", target_is_directory=True)  # inside the root
    with pytest.raises(ConfigError, match="sweep=a"):
        store.quarantine(root, "a", mine / "a.parquet")
    assert bad.read_bytes() == b"not parquet" and not (store.sweep_dir(root, "a") / "quarantine").exists()
    with pytest.raises(ConfigError, match="sweep=a"):
        store.write_run(root, "a", "c", _run("c"))
    assert sorted(p.name for p in other.iterdir()) == ["a.parquet", "b.parquet"]


def _plant_wrong_type(root: Path, sweep="s", run_id="a") -> Path:
    """The run's runs file rewritten by a foreign tool: ``top1_err`` as text, no digest."""
    f = store.table_dir(root, "runs", sweep) / f"{run_id}.parquet"
    df = store.read_table(root, "runs", sweep=sweep, run_ids=[run_id]).drop(columns="sweep")
    df["top1_err"] = df["top1_err"].map(lambda v: f"{v:.4f} %")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), f)
    return f


def test_a_result_file_that_a_typed_read_cannot_parse_is_named_and_quarantined(tmp_path):
    from stability.grid.controller import quarantine_unreadable
    from stability.grid.spec import load_spec

    root = tmp_path / "res"
    spec = load_spec(write_spec(tmp_path / "g.yaml", "s", root))
    _sweep(root)
    f = _plant_wrong_type(root)
    ((p, why),) = store.unreadable(root, "s")
    assert p == f and "12.5000 %" in why, why  # the value a typed read cannot parse
    moved, _ = quarantine_unreadable(spec)
    assert not any(root.glob("*/sweep=s/a.parquet")) and len(moved) == 4, moved
    assert sorted(store.read_table(root, "runs", sweep="s").run_id) == ["b"]
    assert [p.name.split(".")[0] for p in (store.sweep_dir(root, "s") / "quarantine").rglob("*.parquet.*")] == ["a"] * 4


def test_a_chunk_that_a_typed_read_cannot_parse_is_quarantined_on_resume(tmp_path):
    root = tmp_path / "res"
    store.append_rows(root, "s", "r", 2, {"steps": [{"run_id": "r", "step": s, "loss": 1.0} for s in range(2)]})
    (chunk,) = store.run_chunks(root, "steps", "s", "r")
    pq.write_table(pa.table({"run_id": ["r"], "step": ["one"], "loss": [1.0]}), chunk)
    dropped, moved = store.truncate_rows(root, "s", "r", 0, 0)
    assert len(moved) == 1 and not chunk.exists()


RECORDS = {"owner": lambda r: store.owner_path(r, "s", "a"), "ledger": lambda r: store.sweep_dir(r, "s") / "jobs.jsonl",
           "check": lambda r: store.sweep_dir(r, "s") / store.READABLE,
           "lease": lambda r: store.sweep_dir(r, "s") / "lease.json", "progress": lambda r: store.progress_path(r, "s", "a")}


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_a_fifo_at_a_record_file_blocks_no_reader(tmp_path, kind):
    from stability.grid.ledger import read_ledger
    from stability.grid.lock import read_lease
    from stability.trainer.run_lock import run_owner

    root = tmp_path / "res"
    sweep = _sweep(root)
    fifo = RECORDS[kind](root)
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    assert _returns(lambda: run_owner(root, "s", "a")) is None
    problems = []
    assert _returns(lambda: read_ledger(sweep, problems)) == {}
    assert _returns(lambda: store.unreadable(root, "s")) == []
    assert _returns(lambda: read_lease(sweep)) is None
    assert _returns(lambda: store.read_progress(root, "s", "a")) is None


def test_a_fifo_at_a_record_file_written_in_place_is_refused(tmp_path):
    from stability.grid.ledger import record_jobs
    from stability.trainer.run_lock import RunLock

    sweep = _sweep(tmp_path / "res")
    os.mkfifo(sweep / "jobs.jsonl")
    with pytest.raises(ConfigError, match="jobs.jsonl"):
        _returns(lambda: record_jobs(sweep, "local", [("a", "1")]))
    owner = store.owner_path(tmp_path / "res", "s", "a")
    owner.parent.mkdir()
    os.mkfifo(owner)
    with pytest.raises(ConfigError, match="a.lock"):
        _returns(lambda: RunLock(tmp_path / "res", "s", "a").__enter__())


def test_a_symlinked_ledger_is_not_followed_on_read(tmp_path):
    from stability.grid.ledger import read_ledger

    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n" + json.dumps({"run_id": "a", "job_id": "1", "kind": "local"}) + "\n")
    sweep = _sweep(tmp_path / "res")
    (sweep / "jobs.jsonl").symlink_to(secret)
    problems = []
    assert read_ledger(sweep, problems) == {}
    assert problems and not any("hunter2" in p for p in problems) and str(sweep / "jobs.jsonl") in problems[0]


def test_an_owners_folder_linked_into_another_sweep_takes_no_lock_there(tmp_path):
    """Sweeps share run ids (the sweep is not in the id): a lock taken through a linked owners/
    would block the other sweep's run of that id. It is refused, and read as no owner."""
    from stability.trainer.run_lock import RunLock, run_owner

    root = tmp_path / "res"
    other = store.sweep_dir(root, "b") / "owners"
    other.mkdir(parents=True)
    store.sweep_dir(root, "a").mkdir(parents=True)
    (store.sweep_dir(root, "a") / "owners").symlink_to(other)
    with pytest.raises(ConfigError, match="outside .*the run's owner lock is not taken"):
        with RunLock(root, "a", "r", "jobA"):
            pass
    assert list(other.iterdir()) == []
    with RunLock(root, "b", "r", "jobB"):  # b's own lock, held: a reads no owner through its link
        assert run_owner(root, "a", "r") is None and run_owner(root, "b", "r")["job_id"] == "jobB"
