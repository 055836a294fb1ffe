"""Where a run came from: the identity and provenance columns of its runs row, and timestamps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .. import __version__
from ..config import RunConfig
from ..models import resolve
from ..models.presets import canonical_name
from .rows import run_row


def run_identity(cfg: RunConfig) -> dict[str, Any]:
    """The runs-row columns known before training: the config's axes and the provenance."""
    size, stem = resolve(cfg.model, cfg.stem)
    return run_row(
        run_id=cfg.run_id, model=size if stem is None else canonical_name(size, stem),
        stem=stem or "regnet", optimizer=cfg.optimizer, lr=cfg.lr, wd=cfg.wd,
        epochs=cfg.epochs, batch_size=cfg.batch_size, warmup_epochs=cfg.warmup_epochs,
        seed=cfg.seed, dataset=cfg.dataset, world_size=1, host=socket.gethostname(),
        slurm_job_id=slurm_job_id(), job_id=job_id(), git_sha=git_sha(), stability_version=__version__,
        config_json=json.dumps(cfg.to_dict(), sort_keys=True),
    )


def git_sha() -> str | None:
    """The commit of the code that runs (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"],
                             cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def job_id() -> str | None:
    """The id the grid's ledger knows this process's job by (local launcher or Slurm), if any."""
    return os.environ.get("STABILITY_JOB_ID") or slurm_job_id()


def now() -> str:
    return datetime.now(UTC).isoformat()


def timestamp(iso: str | None) -> pd.Timestamp | None:
    return pd.Timestamp(iso) if iso else None
