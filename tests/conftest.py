"""Shared fixtures: small real runs, built once per session where several tests read them."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# Nothing of Hypothesis in the work tree (its example database, its caches): a test run leaves no
# files behind; failing examples are printed, with the seed that reproduces them. Its home is a
# temporary folder, removed when the run ends (each run left one in /tmp).
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
# No deadline: a per-example time limit is a wall-clock assertion, and fails on a busy machine
# for no fault of the code.
settings.register_profile("stability", database=None, deadline=None)
settings.load_profile("stability")

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run the real ``stability`` console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "stability", *args], cwd=cwd or ROOT, capture_output=True,
        text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


TINY = dict(model="vit_c_tiny", dataset="digits", epochs=2, steps_per_epoch=6, batch_size=32,
            lr=2e-3, wd=0.05, warmup_epochs=0.5, trace_every=2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One completed tiny run on digits: (config, runs row)."""
    from stability.config import run_config
    from stability.trainer.train import train

    root = tmp_path_factory.mktemp("tiny_results")
    cfg = run_config({**TINY, "results": str(root), "sweep": "unit"})
    return cfg, train(cfg)


def write_spec(path: Path, name: str, results: Path, *, base: dict | None = None,
               space: dict | None = None, sampler: dict | None = None, executor: dict | None = None,
               seeds: list | None = None) -> Path:
    """Write a grid spec YAML for a test."""
    import yaml

    space = space or {"stem": ["patchify", "conv"], "lr": {"loguniform": [1e-4, 1e-2]}}
    defaults = {"dataset": "digits", "model": "vit_tiny", "epochs": 2, "steps_per_epoch": 3,
                "batch_size": 32, "trace_every": 2}
    spec = {
        "name": name,
        "base": {k: v for k, v in {**defaults, **(base or {})}.items() if k not in space},
        "space": space,
        "sampler": sampler or {"name": "random", "n": 2, "seed": 0},
        "seeds": seeds or [0],
        "executor": executor or {"kind": "local", "max_parallel": 2, "timeout_min": 20},
        "results": str(results),
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# Columns that legitimately differ between two executions of the same run.
TIMING = {"wall_time_s", "started_at", "finished_at", "time_s", "host", "slurm_job_id", "job_id",
          "device", "sweep"}


def comparable(df, keys):
    """``df`` without timing/placement columns, sorted, with the results path out of config_json."""
    import json

    cols = [c for c in df.columns if c not in TIMING]
    out = df[cols].sort_values(keys).reset_index(drop=True)
    if "config_json" in out:
        out["config_json"] = [json.dumps({k: v for k, v in json.loads(c).items() if k != "results"},
                                         sort_keys=True) for c in out.config_json]
    return out


def assert_same_rows(a, b, keys):
    import pandas as pd

    pd.testing.assert_frame_equal(comparable(a, keys), comparable(b, keys), check_dtype=False)


@pytest.fixture(scope="session")
def dash_results(tmp_path_factory):
    """A real tiny grid for the dashboard, notebook and report tests: 2 stems x 6 lrs on digits,
    one lr far too large (diverges), run in-process by the debug executor."""
    from stability.grid.controller import Controller, RunOptions
    from stability.grid.spec import load_spec

    d = tmp_path_factory.mktemp("dash")
    spec = write_spec(d / "g.yaml", "dash", d / "results",
                      base={"epochs": 2, "steps_per_epoch": 12, "trace_every": 1, "optimizer": "sgd",
                            "batch_size": 24},
                      space={"stem": ["patchify", "conv"], "lr": [0.01, 0.03, 0.1, 0.3, 1.0, 1000.0],
                             "wd": {"loguniform": [1e-5, 1e-3]}},
                      sampler={"name": "random", "n": 1, "seed": 0}, executor={"kind": "debug"})
    outcome = Controller(load_spec(spec), RunOptions(show_progress=False)).run()
    assert set(outcome.state.status) <= {"completed", "diverged"}
    return d / "results"


def unreadable_cifar(root: Path) -> Path:
    """A cifar10 ``data_root`` whose files have the release's names (the plan-time check passes)
    but are empty (every run that loads it fails at once, with a DataError)."""
    from stability.data.datasets import CIFAR_FILES

    base, files = CIFAR_FILES["cifar10"]
    (root / base).mkdir(parents=True)
    for f in files:
        (root / base / f).write_bytes(b"")
    return root
