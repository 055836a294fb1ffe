"""How many data-loading workers a run gets (torch-free: the grid's dry run reads it).

``num_workers: auto`` is the job's CPUs per rank minus one (the training process keeps one) on
CUDA, and 0 on CPU, where the in-memory datasets need no workers (measured:
benchmarks/RESULTS.md, "Data pipeline"). The job's CPUs are ``SLURM_CPUS_PER_TASK`` when set (the
grid's Slurm jobs run one task per rank), else this process's CPU affinity shared by the ranks
on this node (``LOCAL_WORLD_SIZE``, set by torchrun). How many a GPU needs is the cost
planner's (``grid/cost.py``, from the measured rates in ``models/throughput.json``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DECODED = ("cifar10", "cifar100", "imagefolder", "packed")  # datasets decoded per image (data.py)
IMAGE_FILES = ("imagefolder", "packed")  # ... of those, the ones read from image files under data_root


def job_cpus(env: Mapping[str, str] | None = None) -> int:
    """CPUs this rank may use: ``SLURM_CPUS_PER_TASK``, else the affinity over the local ranks."""
    env = os.environ if env is None else env
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(env["SLURM_CPUS_PER_TASK"])
    local = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(len(os.sched_getaffinity(0)) // max(local, 1), 1)


def resolve_workers(value: int | str, device_type: str, env: Mapping[str, str] | None = None) -> int:
    """``num_workers`` as a number: ``auto`` is ``job_cpus() - 1`` (at least 0) on CUDA, 0 elsewhere."""
    if value != "auto":
        return int(value)
    return max(job_cpus(env) - 1, 0) if device_type == "cuda" else 0
