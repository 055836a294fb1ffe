"""Shared fixtures: small real runs, built once per session where several tests read them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    from stability.train import train

    root = tmp_path_factory.mktemp("tiny_results")
    cfg = run_config({**TINY, "results": str(root), "sweep": "unit"})
    return cfg, train(cfg)
