"""The executor kinds a spec may name, and what ``auto`` means on this machine. Kept apart
from the backends so that reading a spec never imports a launcher."""

from __future__ import annotations

import shutil

# Each has a class in ``backends.BACKENDS`` (a test keeps the two in step).
EXECUTOR_KINDS = ("slurm", "local", "debug")
EXECUTORS = ("auto", *EXECUTOR_KINDS)


def resolve_kind(kind: str) -> str:
    """``auto`` -> slurm when ``sbatch`` exists, else local."""
    if kind == "auto":
        return "slurm" if shutil.which("sbatch") is not None else "local"
    return kind
