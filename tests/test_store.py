import os

import duckdb
import pandas as pd
import pytest

from stability import store


def _run(run_id, status="completed", n=3):
    return {
        "runs": [{"run_id": run_id, "status": status, "stem": "conv", "lr": 0.1, "top1_err": 12.5}],
        "epochs": [{"run_id": run_id, "epoch": e, "val_top1_err": 50.0 - e} for e in range(n)],
        "steps": [{"run_id": run_id, "step": s, "loss": 1.0 / (s + 1)} for s in range(n)],
        "grad_norms": [{"run_id": run_id, "step": 0, "layer": "stem", "depth": 0, "grad_norm": 1.0}],
    }


def test_roundtrip_pandas_duckdb_and_schema(tmp_path):
    store.write_run(tmp_path, "a", "r1", _run("r1"))
    store.write_run(tmp_path, "b", "r2", _run("r2", "diverged"))
    res = store.load(tmp_path)
    assert sorted(res.runs.run_id) == ["r1", "r2"] and set(res.runs.sweep) == {"a", "b"}
    assert list(res.runs.columns[:2]) == ["run_id", "sweep"]
    assert res.runs.schema_version.eq(store.SCHEMA_VERSION).all()
    assert len(res.epochs) == 6 and len(res.grad_norms) == 2 and not res.errors
    assert res.runs.params.isna().all()  # missing columns are typed nulls, not absent
    assert store.load(tmp_path, sweep="a").runs.run_id.tolist() == ["r1"]
    df = duckdb.sql(f"select sweep, run_id, status from read_parquet('{tmp_path}/runs/*/*.parquet', "
                    "hive_partitioning=true) order by run_id").df()
    assert df.values.tolist() == [["a", "r1", "completed"], ["b", "r2", "diverged"]]
    assert len(pd.read_parquet(tmp_path / "steps")) == 6


def test_rewrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    store.write_run(tmp_path, "a", "r1", _run("r1", "running"))
    store.write_run(tmp_path, "a", "r1", _run("r1", "completed"))
    assert store.load(tmp_path).runs.status.tolist() == ["completed"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_compaction_keeps_every_row_and_per_run_files_win(tmp_path):
    for i in range(5):
        store.write_run(tmp_path, "s", f"r{i}", _run(f"r{i}"))
    before = store.load(tmp_path)
    counts = store.compact(tmp_path, "s")
    assert counts == {"runs": 5, "epochs": 15, "steps": 15, "grad_norms": 5}
    assert len(list((tmp_path / "runs" / "sweep=s").glob("*.parquet"))) == 1
    after = store.load(tmp_path)
    pd.testing.assert_frame_equal(
        before.epochs.sort_values(["run_id", "epoch"]).reset_index(drop=True),
        after.epochs.sort_values(["run_id", "epoch"]).reset_index(drop=True))
    # rewriting one run after compaction replaces it, no duplicate
    store.write_run(tmp_path, "s", "r2", _run("r2", "diverged", n=2))
    res = store.load(tmp_path)
    assert len(res.runs) == 5 and res.runs.set_index("run_id").status["r2"] == "diverged"
    assert len(res.epochs) == 14
    store.compact(tmp_path, "s")
    assert len(store.load(tmp_path).epochs) == 14


def test_corrupt_file_is_reported_not_fatal(tmp_path):
    store.write_run(tmp_path, "s", "good", _run("good"))
    (tmp_path / "runs" / "sweep=s" / "bad.parquet").write_bytes(b"not parquet")
    res = store.load(tmp_path)
    assert res.runs.run_id.tolist() == ["good"] and len(res.errors) == 1 and "bad.parquet" in res.errors[0]
    (tmp_path / "epochs" / "sweep=s" / "worse.parquet").write_bytes(b"")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet"))
    with pytest.raises(store.CorruptFiles, match=r"nothing compacted, 2 unreadable.*worse.parquet.*bad.parquet|"
                                                 r"nothing compacted, 2 unreadable.*bad.parquet.*worse.parquet"):
        store.compact(tmp_path, "s")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet")) == before  # all or nothing
    assert store.load(tmp_path).runs.run_id.tolist() == ["good"]  # nothing lost


def test_load_of_a_path_without_results_is_an_error_naming_it(tmp_path):
    """``load`` on a wrong path says so (a notebook run from the wrong folder must not show empty
    tables); ``read_table``, which the dashboard polls while runs start, stays typed and empty."""
    from stability.errors import ConfigError

    for root in (tmp_path / "missing", tmp_path):  # no folder at all; a folder without runs/
        with pytest.raises(ConfigError, match="no results") as e:
            store.load(root)
        assert str(root) in str(e.value) and f"{root}/runs/sweep=<name>/<run_id>.parquet" in str(e.value)
    (tmp_path / "runs" / "sweep=a").mkdir(parents=True)  # a sweep folder with no file in it yet
    with pytest.raises(ConfigError, match="no results"):
        store.load(tmp_path)
    store.write_run(tmp_path, "b", "r1", _run("r1"))
    assert store.load(tmp_path).runs.run_id.tolist() == ["r1"]
    with pytest.raises(ConfigError, match=r"no results of sweep 'c'.*sweep=c/<run_id>.parquet.*sweeps here: a, b"):
        store.load(tmp_path, sweep="c")
    empty = store.read_table(tmp_path / "missing", "runs")
    assert empty.empty and "top1_err" in empty.columns and "sweep" in store.read_table(tmp_path, "grad_norms", "c")


def test_files_of_an_older_schema_read_with_the_new_columns_as_nulls(tmp_path):
    """A version-1 runs file (before the EMA errors and the collapsed flag) still loads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    new = {"ema_top1_err", "ema_top5_err", "collapsed", "compiled", "compile_mode", "optimizer_impl", "amp_dtype",
           "threads"}
    old = pa.schema([f for f in store.SCHEMAS["runs"] if f.name not in new])
    path = store.table_dir(tmp_path, "runs", "old") / "r0.parquet"
    path.parent.mkdir(parents=True)
    row = {"run_id": "r0", "status": "completed", "top1_err": 10.0, "schema_version": 1}
    pq.write_table(pa.Table.from_pylist([{n: row.get(n) for n in old.names}], schema=old), path)
    store.write_run(tmp_path, "new", "r1", _run("r1"))
    runs = store.load(tmp_path).runs.set_index("run_id")
    assert runs.loc["r0", "top1_err"] == 10.0 and pd.isna(runs.loc["r0", "ema_top1_err"])
    assert pd.isna(runs.loc["r0", "collapsed"]) and runs.loc["r1", "schema_version"] == store.SCHEMA_VERSION
    assert runs.loc["r0", ["compiled", "compile_mode", "optimizer_impl", "amp_dtype"]].isna().all()  # version 7's
    assert pd.isna(runs.loc["r0", "threads"])  # version 9's


def test_a_misspelt_column_is_an_error_not_a_silent_null():
    with pytest.raises(ValueError, match="runs: unknown column.*top1_eror"):
        store.to_arrow("runs", [{"run_id": "a", "status": "completed", "top1_eror": 3.0}])
    t = store.to_arrow("runs", [{"run_id": "a", "status": "completed"}])  # missing columns: null
    assert t.column("top1_err").null_count == 1


def test_the_unreadable_check_rereads_only_files_changed_since_its_last_good_read(tmp_path, monkeypatch):
    root = tmp_path / "res"
    for rid in ("a", "b"):
        store.write_run(root, "s", rid, _run(rid))  # 4 tables: 8 files
    store.sweep_dir(root, "s").mkdir(parents=True)
    reads = []
    real = store.pq.read_table  # the check reads each file whole (page checksums, digest)
    monkeypatch.setattr(store.pq, "read_table", lambda f, **kw: reads.append(f) or real(f, **kw))
    assert store.unreadable(root, "s") == [] and len(reads) == 8
    assert (store.sweep_dir(root, "s") / store.READABLE).exists()
    assert store.unreadable(root, "s") == [] and len(reads) == 8  # nothing changed: nothing read
    # a replacement of the same size and the same mtime is still a new file (its inode)
    good = root / "runs/sweep=s/a.parquet"
    st = good.stat()
    bad = good.with_name("incoming.tmp")
    bad.write_bytes(b"x" * st.st_size)
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(bad, good)
    assert [p for p, _ in store.unreadable(root, "s")] == [good] and len(reads) == 9
    assert [p for p, _ in store.unreadable(root, "s")] == [good] and len(reads) == 10  # a bad file: every time
    # a results folder that cannot take the record: the check still answers
    (store.sweep_dir(root, "s") / store.READABLE).unlink()
    store.sweep_dir(root, "s").rmdir()
    assert [p for p, _ in store.unreadable(root, "s")] == [good]


def _steps(run_id, first, to):
    return {"steps": [{"run_id": run_id, "step": s, "epoch": s // 2, "loss": 1.0 / (s + 1)} for s in range(first, to)],
            "epochs": [{"run_id": run_id, "epoch": e, "val_top1_err": 50.0 - e} for e in range(first // 2, to // 2)]}


def _seen(root, table="steps", run_id="r1"):
    """The rows of ``run_id`` as each reader sees them: store, load, plain duckdb over the folders."""
    col = "epoch" if table == "epochs" else "step"
    via_store = sorted(store.read_table(root, table, run_ids=[run_id])[col])
    assert sorted(store.load(root).__getattribute__(table).query("run_id == @run_id")[col]) == via_store
    return via_store


def _duckdb(root, table="steps"):
    return sorted(r[0] for r in duckdb.sql(f"select step from read_parquet('{root}/{table}/*/*.parquet', "
                                           "hive_partitioning=true) where run_id = 'r1'").fetchall())


def test_a_running_runs_streamed_rows_read_once_through_its_life(tmp_path):
    store.write_run(tmp_path, "s", "r1", {"runs": [{"run_id": "r1", "status": "running"}]})
    store.write_run(tmp_path, "s", "r0", _run("r0"))
    store.append_rows(tmp_path, "s", "r1", 4, _steps("r1", 0, 4))
    store.append_rows(tmp_path, "s", "r1", 8, _steps("r1", 4, 8))
    assert _seen(tmp_path) == list(range(8)) == _duckdb(tmp_path)  # while it runs
    assert _seen(tmp_path, "epochs") == [0, 1, 2, 3]
    assert store.compact(tmp_path, "s")["steps"] == 3  # r0's rows only: r1's chunks are its writer's
    assert _seen(tmp_path) == list(range(8)) == _duckdb(tmp_path)
    # a resume from a checkpoint at step 4 drops what was streamed after it
    assert store.truncate_rows(tmp_path, "s", "r1", 4, 2) == (6, [])
    assert _seen(tmp_path) == list(range(4)) == _duckdb(tmp_path) and _seen(tmp_path, "epochs") == [0, 1]
    store.append_rows(tmp_path, "s", "r1", 8, _steps("r1", 4, 8))
    frames = store.finish_rows(tmp_path, "s", "r1")
    assert frames["steps"].step.tolist() == list(range(8)) and not store.run_chunks(tmp_path, "steps", "s", "r1")
    assert _seen(tmp_path) == list(range(8)) == _duckdb(tmp_path)  # after it ends: its own file


def test_a_crash_between_merging_and_removing_chunks_reads_the_merged_file_only(tmp_path):
    store.write_run(tmp_path, "s", "r1", {"runs": [{"run_id": "r1", "status": "running"}]})
    store.append_rows(tmp_path, "s", "r1", 4, _steps("r1", 0, 4))
    chunk = store.run_chunks(tmp_path, "steps", "s", "r1")[0]
    kept = chunk.read_bytes()
    store.finish_rows(tmp_path, "s", "r1")
    chunk.write_bytes(kept)  # the state a kill between the two leaves
    assert _seen(tmp_path) == list(range(4))
    # a rerun from scratch: the finished file becomes an empty chunk, and nothing of it is read
    store.truncate_rows(tmp_path, "s", "r1", 0, 0)
    assert _seen(tmp_path) == [] and not (store.table_dir(tmp_path, "steps", "s") / "r1.parquet").exists()


def test_a_rerun_of_a_compacted_run_hides_its_old_rows_from_the_first_step(tmp_path):
    store.write_run(tmp_path, "s", "r1", _run("r1"))
    store.compact(tmp_path, "s")
    assert _seen(tmp_path) == [0, 1, 2]
    store.truncate_rows(tmp_path, "s", "r1", 0, 0)
    assert _seen(tmp_path) == []
    store.append_rows(tmp_path, "s", "r1", 2, _steps("r1", 0, 2))
    assert _seen(tmp_path) == [0, 1]


def test_an_unreadable_chunk_is_quarantined_on_resume_and_named_at_the_end(tmp_path):
    store.write_run(tmp_path, "s", "r1", {"runs": [{"run_id": "r1", "status": "running"}]})
    store.append_rows(tmp_path, "s", "r1", 4, _steps("r1", 0, 4))
    store.append_rows(tmp_path, "s", "r1", 8, _steps("r1", 4, 8))
    bad = store.run_chunks(tmp_path, "steps", "s", "r1")[1]
    bad.write_bytes(b"garbage")
    with pytest.raises(store.CorruptFiles, match=bad.name):
        store.finish_rows(tmp_path, "s", "r1")
    dropped, moved = store.truncate_rows(tmp_path, "s", "r1", 8, 4)
    assert len(moved) == 1 and moved[0].parent.name == "sweep=s" and "quarantine" in str(moved[0])
    assert _seen(tmp_path) == [0, 1, 2, 3]


def test_temp_files_of_a_killed_chunk_writer_are_removed(tmp_path):
    store.append_rows(tmp_path, "s", "r1", 4, _steps("r1", 0, 4))
    d = store.table_dir(tmp_path, "steps", "s")
    (d / f".r1{store.CHUNK}0000000008.parquet.abcd1234.tmp").write_bytes(b"x")
    (d / ".r2.parquet.abcd1234.tmp").write_bytes(b"x")  # another run's: not ours
    assert store.remove_run_temps(tmp_path, "s", "r1") == 1
    assert [p.name for p in d.glob(".*")] == [".r2.parquet.abcd1234.tmp"]


def test_a_runs_files_go_together_with_its_checkpoint_only_when_it_streams(tmp_path):
    store.write_run(tmp_path, "s", "r1", {"runs": [{"run_id": "r1", "status": "failed"}]})
    ckpt = store.checkpoint_path(tmp_path, "s", "r1")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert store.run_files(tmp_path, "s", "r1") == [store.table_dir(tmp_path, "runs", "s") / "r1.parquet"]
    store.append_rows(tmp_path, "s", "r1", 4, _steps("r1", 0, 4))
    files = store.run_files(tmp_path, "s", "r1")
    assert ckpt in files and len([f for f in files if store.is_chunk(f)]) == 2  # steps and epochs chunks
