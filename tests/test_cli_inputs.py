"""Bad command-line input found in a new user's trial: each is one line naming the flag (or
file) at fault, exit code 2, and nothing written."""

from __future__ import annotations

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
