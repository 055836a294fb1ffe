"""Launch runs: ``slurm`` (submitit job arrays), ``local`` (forked from a warm launcher,
``stability.grid.local``), ``debug`` (submitit, in-process).

Each job calls :class:`RunJob`, a ``submitit.helpers.Checkpointable``: on Slurm's USR2 (time limit
or preemption) the trainer finishes its step, saves a checkpoint, and submitit requeues the job,
which resumes from it. ``scontrol requeue`` (SIGTERM) also checkpoints; Slurm restarts the job.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from .spec import ExecutorSpec


class RunJob(submitit.helpers.Checkpointable):
    """The function every job runs: one training run from a config dict."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        import torch

        from ..config import run_config
        from ..train import Preempted, train

        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
        if threads:
            torch.set_num_threads(threads)
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # one run over several tasks: DDP
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = run_config(config)
        try:
            row = train(cfg, signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2))
        except Preempted as p:
            if p.signum == signal.SIGUSR2 and callable(p.previous_handler):
                # submitit's handler: dumps our checkpoint() submission and requeues the job.
                p.previous_handler(p.signum, None)
            raise
        return {k: row.get(k) for k in ("run_id", "status", "top1_err", "diverged_at_step")}


def max_array_size(default: int = 1000) -> int:
    """Slurm's MaxArraySize (``scontrol show config``); array indices must stay below it."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return default
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else default


@dataclass
class Submitted:
    run_id: str
    job: Any  # submitit.Job

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)


def make_executor(ex: ExecutorSpec, kind: str, folder: Path, sweep: str):
    """An executor for ``kind`` with the spec's resources: submitit's, or a local pool."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":
        from .local import LocalPool

        return LocalPool.for_executor(ex, folder)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=ex.max_num_timeout)
    params: dict[str, Any] = {
        "job_name": f"stability-{sweep}", "time": ex.timeout_min, "nodes": ex.nodes,
        "ntasks_per_node": ex.tasks_per_node, "array_parallelism": ex.array_parallelism,
        "signal_delay_s": ex.signal_delay_s,
    }
    optional = {"partition": ex.partition, "account": ex.account, "qos": ex.qos,
                "constraint": ex.constraint, "gpus_per_node": ex.gpus_per_node,
                "gpus_per_task": ex.gpus_per_task, "cpus_per_task": ex.cpus_per_task,
                "mem": f"{int(ex.mem_gb * 1024)}M" if ex.mem_gb else None}
    params |= {k: v for k, v in optional.items() if v is not None}
    if ex.extra:
        params["additional_parameters"] = dict(ex.extra)
    executor.update_parameters(**params)
    return executor


def submit(executor, kind: str, items: list[tuple[str, dict[str, Any]]],
           threads: int | None = None, array_size: int | None = None) -> list[Submitted]:
    """Submit ``(run_id, config)`` items; Slurm arrays are chunked below MaxArraySize."""
    if not items:
        return []
    if kind == "local":
        return [Submitted(rid, executor.submit(cfg, threads)) for rid, cfg in items]
    fn = RunJob(threads)
    if kind != "slurm":
        return [Submitted(rid, executor.submit(fn, cfg)) for rid, cfg in items]
    chunk = max(1, array_size or max_array_size())
    out: list[Submitted] = []
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        jobs = executor.map_array(fn, [cfg for _, cfg in part])
        out += [Submitted(rid, job) for (rid, _), job in zip(part, jobs, strict=True)]
    return out


# Slurm states in which a job may still produce its result.
ALIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
                "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def slurm_alive(job_ids: list[str]) -> dict[str, str]:
    """``{job_id: state}`` of the given jobs that squeue still lists as alive."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    alive = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in ALIVE_STATES:
            alive[parts[0]] = parts[1]
    wanted = set(job_ids)
    return {j: s for j, s in alive.items() if j in wanted}


def job_log_tail(folder: Path, job_id: str, lines: int = 5) -> str:
    """Last lines of a job's stderr log (``<job_id>_<task>_log.err``, as submitit names them):
    the first task's that says anything (a failed rank 0, not a rank its failure stopped)."""
    for p in sorted(folder.glob(f"**/{job_id}_*_log.err")):
        text = p.read_text(errors="replace").strip().splitlines()
        if text:
            return "\n".join(text[-lines:])
    return ""
