"""How many data-loading workers a run gets, and how many a GPU needs (torch-free: the grid's dry
run reads it).

``num_workers: auto`` is the job's CPUs per rank minus one (the training process keeps one) on
CUDA, and 0 on CPU, where the in-memory datasets need no workers (measured:
benchmarks/RESULTS.md, "Data pipeline"). The job's CPUs are ``SLURM_CPUS_PER_TASK`` when set (the
grid's Slurm jobs run one task per rank), else this process's CPU affinity shared by the ranks
on this node (``LOCAL_WORLD_SIZE``, set by torchrun).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

# Images/s one worker process decodes and augments at 224 px (RandomResizedCrop, flip, tensor,
# normalize; ImageNet-like JPEGs ~500x375), measured on this project's 2-core CPU machine by
# benchmarks/pipeline_workers.py (RESULTS.md, "Input pipeline per worker"). Server cores differ:
# the figures set the order of magnitude of a warning, not a schedule.
PER_WORKER_IMG_S = {"none": 200.0, "autoaugment": 180.0}
# A 4GF ViT's training step on one H200, bf16, batch 256 (RESULTS.md, "GPU check"): compiled.
GPU_IMG_S = 9500.0
DECODED = ("cifar10", "cifar100", "imagefolder", "packed")  # datasets decoded per image (data.py)


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


def workers_needed(auto_augment: str = "none", gpu_img_s: float = GPU_IMG_S) -> int:
    """CPU workers one GPU needs to be fed with CPU JPEG decoding (the measured rates above)."""
    return math.ceil(gpu_img_s / PER_WORKER_IMG_S.get(auto_augment, PER_WORKER_IMG_S["none"]))


# The config fields cpu_warning reads.
WORKER_FIELDS = ("dataset", "decode", "device", "auto_augment", "num_workers")


def cpu_warning(executor: Any, configs: Iterable[Any]) -> str | None:
    """A warning when a CUDA job's CPUs per task cannot feed its GPU (``executor``: the spec's
    ``ExecutorSpec``; ``configs``: its planned ``RunConfig``s), else None."""
    gpus = executor.gpus_per_node or executor.gpus_per_task or 0
    if not gpus:
        return None
    cpu = [c for c in configs if c.dataset in DECODED and c.decode == "cpu" and c.device != "cpu"]
    if not cpu:
        return None
    policy = "autoaugment" if any(c.auto_augment != "none" for c in cpu) else "none"
    need = workers_needed(policy)
    have = (executor.cpus_per_task or 1) - 1
    explicit = [c.num_workers for c in cpu if c.num_workers != "auto"]
    if explicit and max(explicit) > have:
        return (f"warning: num_workers {max(explicit)} > cpus_per_task - 1 = {have}: the data workers "
                f"will share CPUs (set num_workers: auto or raise cpus_per_task)")
    if explicit and len(explicit) == len(cpu):  # every run names its workers: those are what feed the GPU
        have = min(explicit)
    if have >= need:
        return None
    return (f"warning: cpus_per_task {executor.cpus_per_task} gives each GPU {have} data workers; "
            f"a 4GF ViT at {GPU_IMG_S:.0f} img/s needs ~{need} with CPU JPEG decoding "
            f"({PER_WORKER_IMG_S[policy]:.0f} img/s per worker, benchmarks/RESULTS.md): the GPU will "
            f"wait for data (raise cpus_per_task, or try decode: gpu)")
