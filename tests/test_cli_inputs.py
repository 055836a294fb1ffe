"""Bad command-line input found in a new user's trial: each is one line naming the flag (or
file) at fault, exit code 2, and nothing written."""

from __future__ import annotations

import os

from .conftest import run_cli, write_spec


def _one_line_error(out) -> str:
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: "), out.stderr
    return line


def test_a_bad_flag_value_names_the_flag_a_bad_profile_value_the_profile(tmp_path):
    spec = write_spec(tmp_path / "g.yaml", "g", tmp_path / "results")
    prof = tmp_path / "prof.yaml"
    prof.write_text("kind: local\n")
    for flags, needle in ((["--executor", "loc"], "--executor: executor.kind: unknown executor 'loc' (allowed: "),
                          (["--max-parallel", "0"], "--max-parallel: executor.max_parallel: must be >= 1, got 0"),
                          (["--array-size", "0", "--profile", str(prof)], "--array-size: executor.array_size: must be >= 1")):
        line = _one_line_error(run_cli("grid", "run", str(spec), "--dry-run", *flags))
        assert line.startswith(f"error: {needle}") and str(spec) not in line, line
    prof.write_text("max_parallel: 0\n")  # a good flag beside it does not hide the profile's own error
    line = _one_line_error(run_cli("grid", "run", str(spec), "--dry-run", "--profile", str(prof), "--max-parallel", "3"))
    assert line.startswith(f"error: {prof}: executor.max_parallel: must be >= 1"), line
    assert not (tmp_path / "results").exists()


def test_a_missing_results_root_is_an_error_for_report_and_replay_a_note_for_the_dashboard(tmp_path):
    gone = tmp_path / "nowhere"
    for args in (["report"], ["report", "smoke"], ["replay", "smoke"]):
        line = _one_line_error(run_cli(*args, "--results", str(gone), cwd=tmp_path))
        assert line.startswith(f"error: --results: no results root {gone} (no such folder"), line
    # A stand-in Streamlit that says it ran: the check must come before the server starts.
    fake = tmp_path / "fake" / "streamlit"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("print('streamlit started')\n")
    path = os.pathsep.join(p for p in (str(tmp_path / "fake"), os.environ.get("PYTHONPATH")) if p)
    # the dashboard opened before the first run lands: it starts, saying the root is not there yet
    out = run_cli("dashboard", "--results", str(gone), "--port", "8599", env={"PYTHONPATH": path}, timeout=60)
    assert out.returncode == 0 and "streamlit started" in out.stdout, out.stderr
    assert f"no results root {gone} yet" in out.stderr and not gone.exists()
    (tmp_path / "afile").write_text("x")
    for args in (["report"], ["dashboard", "--port", "8599"]):  # a file is no root for either
        out = run_cli(*args, "--results", str(tmp_path / "afile"), env={"PYTHONPATH": path}, timeout=60)
        line = _one_line_error(out)
        assert "--results" in line and "a file, not a folder" in line and "streamlit started" not in out.stdout, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "fake"]


def test_replay_refuses_a_within_out_of_range(tmp_path):
    for value in ("-1", "101", "nan"):
        line = _one_line_error(run_cli("replay", "smoke", "--within", value, "--results", str(tmp_path)))
        assert line.startswith(f"error: replay: --within {value} is not allowed") and "0 to 100" in line, line


def test_report_and_replay_out_must_be_a_file_in_an_existing_folder(tmp_path, tiny_run):
    cfg, _ = tiny_run
    report = ("report", cfg.sweep, "--results", cfg.results)
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    line = _one_line_error(run_cli(*report, "--out", str(folder)))
    assert line.startswith(f"error: --out: {folder} is a folder") and ".tmp" not in line, line
    assert [p.name for p in folder.iterdir()] == ["kept.txt"] and (folder / "kept.txt").read_text() == "kept"
    missing = tmp_path / "no" / "dir" / "r.html"
    line = _one_line_error(run_cli(*report, "--out", str(missing)))
    assert line.startswith(f"error: --out: no folder {missing.parent}"), line
    assert not (tmp_path / "no").exists()
    out = run_cli(*report, "--out", str(folder / "r.html"))
    assert out.returncode == 0 and (folder / "r.html").is_file(), out.stderr
    # replay's tables too, refused before the replay runs (it ended in an OSError after it)
    replay = ("replay", cfg.sweep, "--results", cfg.results, "--out")
    assert _one_line_error(run_cli(*replay, str(folder))).startswith(f"error: --out: {folder} is a folder")
    assert _one_line_error(run_cli(*replay, str(missing))).startswith(f"error: --out: no folder {missing.parent}")
    # reproduce's report stem too, before its studies run (it made the folders after them)
    repro = ("reproduce", "--quick", "--only", "peak", "--results", str(tmp_path / "res"), "--out")
    assert _one_line_error(run_cli(*repro, str(folder))).startswith(f"error: --out: {folder} is a folder")
    assert _one_line_error(run_cli(*repro, str(missing))).startswith(f"error: --out: no folder {missing.parent}")
    assert not (tmp_path / "no").exists() and not (tmp_path / "res").exists()


def test_a_missing_grids_path_suggests_the_shipped_spec(tmp_path):
    for given, name in (("grids/smoke.yaml", "smoke"), ("grids/cpu/quick/lr_wd.yaml", "cpu/quick/lr_wd"),
                        (str(tmp_path / "grids" / "cpu" / "lr_wd.yaml"), "cpu/lr_wd")):
        line = _one_line_error(run_cli("grid", "status", given, cwd=tmp_path))
        assert line == f"error: file not found: {given}; a shipped spec of that name runs as " \
                       f"`stability grid status {name}`", line
    line = _one_line_error(run_cli("grid", "run", "grids/nosuch.yaml", "--dry-run", cwd=tmp_path))
    assert line == "error: file not found: grids/nosuch.yaml", line  # no shipped spec: nothing suggested
    assert not any(tmp_path.iterdir())


def test_bad_image_data_is_one_line_exit_2_before_any_run(tmp_path):
    """The data trial's findings: an image folder with a symlink loop (trained on 36 files
    read ~40 times), a pack whose index is truncated (a pyarrow traceback), a pack whose
    meta.json is not JSON (a grid launched every run to fail), and an image_size that is not a
    multiple of the patch size: each one line, exit 2, no run written."""
    import json

    from PIL import Image

    root = tmp_path / "imf"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(root / split / cls / f"{i}.png")
    (root / "train/cat/loop").symlink_to("..", target_is_directory=True)
    results = tmp_path / "results"
    line = _one_line_error(run_cli("train", "dataset=imagefolder", f"data_root={root}", "image_size=16",
                                   "batch_size=2", f"results={results}"))
    assert "train/cat/loop" in line and "symlink loop" in line and "remove the link" in line, line
    (root / "train/cat/loop").unlink()
    assert run_cli("pack", str(root), str(tmp_path / "p")).returncode == 0
    index = tmp_path / "p" / "index.parquet"
    index.write_bytes(index.read_bytes()[:100])
    line = _one_line_error(run_cli("train", "dataset=packed", f"data_root={tmp_path / 'p'}", "image_size=16",
                                   "batch_size=2", f"results={results}"))
    assert f"{index}: unreadable" in line and "re-pack it with `stability pack`" in line, line
    (tmp_path / "p" / "meta.json").write_text(json.dumps({"format": "stability-packed"})[:-3])
    spec = write_spec(tmp_path / "g.yaml", "g", results, base={"dataset": "packed", "data_root": str(tmp_path / "p"),
                                                               "image_size": 16, "batch_size": 2})
    line = _one_line_error(run_cli("grid", "run", str(spec)))
    assert f"{tmp_path / 'p' / 'meta.json'}: not readable JSON" in line, line
    line = _one_line_error(run_cli("train", "image_size=30", f"results={results}"))
    assert "image_size: 30 is not allowed (vit_tiny has patch size 4" in line and "nearest: 28 or 32" in line, line
    assert not results.exists() or not any(results.rglob("*.parquet"))
